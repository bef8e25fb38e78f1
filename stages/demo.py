"""The CPU demo: tiny model -> CoT -> SFT -> GRPO -> evaluation, with plots and a report.

`make demo` runs it with the recipes of `recipes/tiny-cpu/`, each stage as the same script a user
runs, so that a masking, template, parsing or reward bug shows up as numbers that do not move:
dev F1 before training, after SFT and after GRPO, and the mean composite reward of the SFT model
and of the GRPO policy on the same held-out prompts (the dev generations of the evaluation).

    python stages/demo.py [--quick] [--out outputs/tiny-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from reasoningner.configs import PromptArguments, PromptContract
from reasoningner.formats import CONTENT_PROBLEMS
from reasoningner.predict import NERModel
from reasoningner.readers import read_dataset
from reasoningner.rewards import get_rewards
from reasoningner.tracking import PIPELINE_ENV, pipeline_id

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "tiny-cpu"
REPORT = "demo.md"
# The tiny model: small enough for minutes of CPU training (192 wide, 3 layers, 1.5M parameters), a
# small vocabulary so that unseen entity names are made of subwords the model has seen
# often, and a copy warm-up standing in for pretraining (`tiny_model.warm_up_copying`).
TINY_MODEL = [
    "--vocab-size", "1024", "--hidden-size", "192", "--intermediate-size", "512", "--layers", "3",
    "--heads", "4", "--seed", "0", "--copy-warmup-steps", "2000",
]  # fmt: skip
# --quick: the same pipeline, shortened to a smoke run (the slow test runs it).
QUICK = {
    "tiny-model": ["--copy-warmup-steps", "4"],
    "cot": ["--limit", "64"],
    "sft": ["--max_steps", "4", "--per_device_train_batch_size", "4"],
    "rl": ["--max_steps", "2", "--total", "16", "--max_completion_length", "32"],
    "eval": ["--limit", "8", "--max_new_tokens", "48"],
}


def run(stage: str, *args: str, pipeline: str) -> float:
    """Run `stages/<stage>.py` as a user would, in the demo's pipeline run (one W&B group, even for the
    untrained model's evaluation, which has no upstream manifest); return the seconds it took."""
    started = time.perf_counter()
    env = os.environ | {PIPELINE_ENV: pipeline}
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], cwd=ROOT, env=env, check=True
    )
    return time.perf_counter() - started


def recipe(stage: str) -> dict[str, Any]:
    return yaml.safe_load((RECIPES / f"{stage}.yaml").read_text(encoding="utf-8"))


def held_out_reward(
    generations: Path, names: list[str], weights: list[float], output_format: str
) -> dict[str, list[float]]:
    """Each reward component, and their weighted sum (`total`), of every evaluation output."""
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["variant"] == "normal"]
    columns = {
        "completions": [r["output"] for r in rows],
        "text": [r["text"] for r in rows],
        "entities": [r["gold"] for r in rows],
        "labels": [r["labels"] for r in rows],
        "output_format": [output_format] * len(rows),
    }
    scores = {name: function(**columns) for name, function in zip(names, get_rewards(names), strict=True)}
    scores["total"] = [
        sum(w * scores[n][i] for n, w in zip(names, weights, strict=True)) for i in range(len(rows))
    ]
    return scores


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (over prompts)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0)


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


# Length-grouped batches (`training.configure_batching`): transformers' sampler sorts each group of 50
# batches from the longest sentences to the shortest, so the raw loss saws with a 50-step period.
LENGTH_GROUP_STEPS = 50


def plot(
    out: Path, evals: dict[str, dict[str, Any]], held_out: dict[str, dict[str, list[float]]]
) -> list[str]:
    """SFT loss, GRPO rewards over steps, held-out reward by model, F1 per stage per label (PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    sft_log = json.loads((out / "sft" / "trainer_state.json").read_text())["log_history"]
    steps = [row["step"] for row in sft_log if "loss" in row]
    losses = [row["loss"] for row in sft_log if "loss" in row]
    every = steps[1] - steps[0] if len(steps) > 1 else 1
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="logged")
    window = max(1, LENGTH_GROUP_STEPS // every)
    axis.plot(
        steps, moving_average(losses, window), color="tab:blue", label=f"mean of {window * every} steps"
    )
    axis.set(title="SFT training loss", xlabel="step", ylabel="loss")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "sft_loss.png", dpi=110)
    images.append("sft_loss.png")

    rl_log = [
        row
        for row in json.loads((out / "rl" / "trainer_state.json").read_text())["log_history"]
        if "reward" in row
    ]
    components = sorted(
        {k.split("/")[1] for row in rl_log for k in row if k.startswith("rewards/") and k.endswith("/mean")}
    )
    figure, (total_axis, parts_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [row["step"] for row in rl_log]
    window = max(1, len(rl_log) // 10)
    for axis, keys in ((total_axis, ["reward"]), (parts_axis, [f"rewards/{c}/mean" for c in components])):
        for key in keys:
            means = [row[key] for row in rl_log]
            spread = [
                row[key.replace("/mean", "/std") if key != "reward" else "reward_std"] for row in rl_log
            ]
            smooth = moving_average(means, window)
            line = axis.plot(
                steps, smooth, label="total" if key == "reward" else key.split("/")[1].removesuffix("_reward")
            )[0]
            low = [m - s for m, s in zip(smooth, moving_average(spread, window), strict=True)]
            high = [m + s for m, s in zip(smooth, moving_average(spread, window), strict=True)]
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
    total_axis.set(
        title=f"GRPO reward (moving mean of {window} step(s), ± std in a step)",
        xlabel="step",
        ylabel="reward",
    )
    parts_axis.set(title="reward components", xlabel="step", ylim=(-0.05, 1.05))
    parts_axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(out / "rl_rewards.png", dpi=110)
    images.append("rl_rewards.png")

    components = [name for name in next(iter(held_out.values())) if name != "total"]
    figure, (parts_axis, total_axis) = plt.subplots(1, 2, figsize=(10, 3.5), width_ratios=[3, 1])
    width = 0.8 / len(held_out)
    for i, (model, scores) in enumerate(held_out.items()):
        parts = [mean_and_error(scores[name]) for name in components]
        parts_axis.bar([x + i * width for x in range(len(components))], [m for m, _ in parts], width,
                       yerr=[e for _, e in parts], capsize=3, label=model)  # fmt: skip
        total, error = mean_and_error(scores["total"])
        total_axis.bar([i], [total], 0.6, yerr=[error], capsize=3, label=model)
    parts_axis.set_xticks([x + width * (len(held_out) - 1) / 2 for x in range(len(components))], components)
    parts_axis.set(title="held-out reward components (mean ± s.e. over dev prompts)", ylim=(0, 1.05))
    total_axis.set_xticks(range(len(held_out)), list(held_out))
    total_axis.set(title="weighted total")
    parts_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "held_out_reward.png", dpi=110)
    images.append("held_out_reward.png")

    labels = sorted({label for e in evals.values() for label in e["per_label"]})
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(evals)
    for i, (stage, result) in enumerate(evals.items()):
        values = [100 * result["per_label"].get(label, 0.0) for label in labels]
        axis.bar([x + i * width for x in range(len(labels))], values, width, label=stage)
    axis.set_xticks([x + width * (len(evals) - 1) / 2 for x in range(len(labels))], labels)
    axis.set(title="dev F1 per label (text match)", ylabel="F1", ylim=(0, 100))
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "f1_per_label.png", dpi=110)
    images.append("f1_per_label.png")
    plt.close("all")
    return images


def strict_share(generations: Path) -> float:
    """The share of outputs whose answer parses with no syntax problem: what a program can read as is
    (`formats.CONTENT_PROBLEMS` are about content, not syntax), and what the strict reward pays."""
    rows = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["variant"] == "normal"]
    clean = [not {p["kind"] for p in r["problems"]} - CONTENT_PROBLEMS for r in rows]
    return sum(clean) / len(clean)


CALIBRATION_SENTENCES = 100
CALIBRATION_SAMPLES = 4


def calibration(model_dir: Path, data: Path, limit: int) -> dict[str, Any]:
    """Scores from `CALIBRATION_SAMPLES` sampled answers (`NERModel.predict`, self-consistency) on the
    first `limit` dev sentences: precision (exact spans) of the entities at or above each threshold,
    and of those with each score, for the reliability plot."""
    examples = read_dataset(data).examples[:limit]
    options = {"batch_size": 16, "dtype": "float32"}
    with NERModel.from_pretrained(model_dir, max_new_tokens=192, **options) as model:
        labels = model.labels or list(examples[0].schema.labels)
        predictions = model.predict([e.text for e in examples], labels, num_samples=CALIBRATION_SAMPLES)
    scored = [
        (
            entity.score,
            (entity.start, entity.end, entity.label) in {(s.start, s.end, s.label) for s in e.spans},
        )
        for e, prediction in zip(examples, predictions, strict=True)
        for entity in prediction
    ]
    levels = [k / CALIBRATION_SAMPLES for k in range(1, CALIBRATION_SAMPLES + 1)]

    def precision(kept: list[bool]) -> float | None:
        return sum(kept) / len(kept) if kept else None

    return {
        "sentences": len(examples),
        "samples": CALIBRATION_SAMPLES,
        "at_least": {
            f"{t:.2f}": {
                "entities": sum(s >= t for s, _ in scored),
                "precision": precision([c for s, c in scored if s >= t]),
            }
            for t in levels
        },
        "exactly": {
            f"{t:.2f}": {
                "entities": sum(s == t for s, _ in scored),
                "precision": precision([c for s, c in scored if s == t]),
            }
            for t in levels
        },
    }


def plot_calibration(out: Path, calibrated: dict[str, Any]) -> str:
    """Reliability plot: the precision of the entities with each score against the score itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(float(t), row["precision"], row["entities"]) for t, row in calibrated["exactly"].items()]
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    shown = [(t, p, n) for t, p, n in points if p is not None]
    axis.bar([t for t, _, _ in shown], [p for _, p, _ in shown], width=0.15, alpha=0.7, label="precision")
    for t, p, n in shown:
        axis.annotate(f"n={n}", (t, p), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    axis.set(title=f"score calibration ({calibrated['samples']} samples)", xlabel="entity score",
             ylabel="exact-span precision", xlim=(0, 1.1), ylim=(0, 1.05))  # fmt: skip
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(out / "calibration.png", dpi=110)
    plt.close(figure)
    return "calibration.png"


def scores(results: Path) -> dict[str, Any]:
    text = json.loads(results.read_text())["scores"]["text"]
    (dataset,) = text["datasets"].values()
    return {
        "f1": dataset["micro"]["f1"],
        "per_label": {label: counts["f1"] for label, counts in dataset["per_label"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a shortened smoke run of every stage")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "tiny-cpu")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    extra = QUICK if args.quick else {}
    rl = recipe("rl")
    eval_recipe = str(RECIPES / "eval-demo.yaml")
    timings: dict[str, float] = {}
    lines: list[str] = []

    started = time.perf_counter()
    pipeline = pipeline_id(out, [])  # one per output folder, as a stage without upstream makes
    cot_args = [
        "--config",
        str(RECIPES / "cot.yaml"),
        "--output_dir",
        str(out / "cot"),
        *extra.get("cot", []),
    ]
    timings["cot"] = run("cot", *cot_args, pipeline=pipeline)
    cot = json.loads((out / "cot" / "report.json").read_text())
    lines.append(f"stage 1 (CoT, gold-template): {cot['accepted']}/{cot['sentences']} sentences accepted")

    from reasoningner.cli import main as cli

    model = out / "tiny-model"
    tiny_started = time.perf_counter()
    cli(
        [
            "tiny-model",
            "--out",
            str(model),
            "--data",
            *recipe("cot")["datasets"],
            *TINY_MODEL,
            *extra.get("tiny-model", []),
        ]
    )
    timings["tiny model"] = time.perf_counter() - tiny_started

    def evaluate(name: str, model_dir: Path, *prompt: str) -> dict[str, Any]:
        eval_args = ["--config", eval_recipe, "--model_name_or_path", str(model_dir), *prompt]
        output = ["--output_dir", str(out / f"eval-{name}")]
        timings[f"eval {name}"] = run("eval", *eval_args, *output, *extra.get("eval", []), pipeline=pipeline)
        return scores(out / f"eval-{name}" / "results.json")

    # The untrained model has no prompt contract yet: ask it as SFT will train it.
    sft_prompt = [arg for key in PromptArguments.DEFAULTS if key in recipe("sft")
                  for arg in (f"--{key}", str(recipe("sft")[key]))]  # fmt: skip
    evals = {"before": evaluate("before", model, *sft_prompt)}
    lines.append(f"dev F1 before training: {100 * evals['before']['f1']:.1f}")

    annotations = str(out / "cot" / "annotations.jsonl")
    sft_args = ["--config", str(RECIPES / "sft.yaml"), "--model_name_or_path", str(model),
                "--train_files", annotations, "--output_dir", str(out / "sft")]  # fmt: skip
    timings["sft"] = run("sft", *sft_args, *extra.get("sft", []), pipeline=pipeline)
    evals["sft"] = evaluate("sft", out / "sft")
    lines.append(f"stage 2 (SFT): dev F1 {100 * evals['sft']['f1']:.1f}")

    rl_args = ["--config", str(RECIPES / "rl.yaml"), "--model_name_or_path", str(out / "sft"),
               "--output_dir", str(out / "rl")]  # fmt: skip
    timings["rl"] = run("rl", *rl_args, *extra.get("rl", []), pipeline=pipeline)
    evals["grpo"] = evaluate("grpo", out / "rl")
    lines.append(f"stage 3 (GRPO): dev F1 {100 * evals['grpo']['f1']:.1f}")

    names, weights = rl["reward_funcs"], rl["reward_weights"]
    output_format = PromptContract.load(out / "rl").prompt.output_format  # type: ignore[union-attr]
    held_out = {
        stage: held_out_reward(out / f"eval-{stage}" / "generations.jsonl", names, weights, output_format)
        for stage in ("sft", "grpo")
    }
    rewards = {
        stage: {name: mean_and_error(values)[0] for name, values in scores.items()}
        for stage, scores in held_out.items()
    }
    errors = {
        stage: {name: mean_and_error(values)[1] for name, values in scores.items()}
        for stage, scores in held_out.items()
    }
    lines.append(
        f"held-out mean reward (max {sum(weights):g}): SFT {rewards['sft']['total']:.2f} -> "
        f"GRPO {rewards['grpo']['total']:.2f}"
    )
    strict = {stage: strict_share(out / f"eval-{stage}" / "generations.jsonl") for stage in evals}
    lines.append(
        "outputs that parse strictly: "
        + " -> ".join(f"{stage} {100 * share:.1f}%" for stage, share in strict.items())
    )
    calibration_started = time.perf_counter()
    dev = ROOT / yaml.safe_load(Path(eval_recipe).read_text(encoding="utf-8"))["datasets"][0]["path"]
    calibrated = calibration(out / "rl", dev, 4 if args.quick else CALIBRATION_SENTENCES)
    timings["calibration"] = time.perf_counter() - calibration_started
    images = [*plot(out, evals, held_out), plot_calibration(out, calibrated)]
    total = time.perf_counter() - started
    lines.append(f"total time {total / 60:.1f} min")

    summary = {
        "evals": evals,
        "rewards": rewards,
        "reward_errors": errors,
        "strict_parse": strict,
        "calibration": calibrated,
        "cot": cot,
        "timings": timings,
        "total_seconds": total,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / REPORT).write_text(
        report_markdown(lines, evals, rewards, errors, calibrated, timings, images), encoding="utf-8"
    )
    print("\n".join(["", "reasoningner demo", *(f"  {line}" for line in lines), f"  report: {out / REPORT}"]))
    return 0


def report_markdown(
    lines: list[str],
    evals: dict[str, Any],
    rewards: dict[str, dict[str, float]],
    errors: dict[str, dict[str, float]],
    calibrated: dict[str, Any],
    timings: dict[str, float],
    images: list[str],
) -> str:
    components = list(rewards["sft"])
    parts = [
        "# reasoningner CPU demo",
        "",
        *(f"- {line}" for line in lines),
        "",
        "| stage | dev F1 (text match) |",
        "| --- | ---: |",
        *(f"| {stage} | {100 * result['f1']:.1f} |" for stage, result in evals.items()),
        "",
        "Held-out reward (mean ± standard error over the dev prompts):",
        "",
        "| model | " + " | ".join(components) + " |",
        "| --- |" + " ---: |" * len(components),
        *(
            f"| {m} | " + " | ".join(f"{rewards[m][c]:.3f} ± {errors[m][c]:.3f}" for c in components) + " |"
            for m in rewards
        ),
        "",
        f"The SFT loss is logged every few steps; batches are grouped by length, each group of "
        f"{LENGTH_GROUP_STEPS} batches running from the longest sentences to the shortest, so the logged "
        f"loss saws with that period. The plot's line is its mean over one period.",
        "",
        f"Entity scores of the GRPO model from {calibrated['samples']} sampled answers per sentence (the "
        f"share stating the entity; `NERModel.predict(num_samples=...)`), first {calibrated['sentences']} "
        "dev sentences, exact-span precision:",
        "",
        "| score at least | entities | precision |",
        "| ---: | ---: | ---: |",
        *(
            f"| {t} | {row['entities']} | "
            + ("-" if row["precision"] is None else f"{100 * row['precision']:.1f}")
            + " |"
            for t, row in calibrated["at_least"].items()
        ),
        "",
        "| step | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()),
        "",
        *(f"![{image}]({image})" for image in images),
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

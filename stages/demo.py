"""The CPU demo: tiny model -> CoT -> SFT -> GRPO -> evaluation, with plots and a report.

`make demo` runs it with the recipes of `recipes/tiny-cpu/`, each stage as the same script a user
runs, so that a masking, template, parsing or reward bug shows up as numbers that do not move:
dev F1 before training, after SFT and after GRPO, and the mean composite reward of the SFT model
and of the GRPO policy on the same held-out prompts (the dev generations of the evaluation).

    python stages/demo.py [--quick] [--out outputs/tiny-cpu]
    python stages/demo.py --seeds 0 1 2 [--jobs 2] [--out outputs/tiny-cpu-seeds]   # make demo-seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# Torch's vectorized kernels, MKL and oneDNN each pick a code path by instruction set (AVX-512 where the
# CPU has it), and one rounding apart is another training run: with the same lock, the demo's GRPO came
# out 2.9 F1 lower on an AVX2-only CPU than on the earlier hosts. The demo pins the AVX2 path (MKL's
# conditional numerical reproducibility; ignored off x86-64), set before torch loads, for this process and
# every stage it runs; the environment overrides each. oneMKL takes its AVX2 branch on Intel CPUs only
# (on another vendor's it falls back to its AUTO branch, its developer guide says), so the numbers repeat
# on one vendor's CPUs, not across vendors (README, "The numbers repeat").
os.environ |= {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
} | os.environ

import torch
import yaml

from reasoningner.configs import PromptArguments, PromptContract
from reasoningner.files import complete_lines
from reasoningner.formats import CONTENT_PROBLEMS
from reasoningner.metrics import Counts, f1_difference, match_totals
from reasoningner.predict import NERModel
from reasoningner.readers import read_dataset
from reasoningner.rewards import get_rewards
from reasoningner.spans import Example, Schema, spans_from_dicts
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
    "rl": [
        "--max_steps",
        "2",
        "--total",
        "16",
        "--max_completion_length",
        "32",
        "--eval_total",
        "16",
        "--eval_steps",
        "1",
    ],  # fmt: skip
    "eval": ["--limit", "8", "--max_new_tokens", "48"],
}


# Torch's CPU kernels may split a sum differently with another thread count, and one rounding apart
# is another training run: the demo uses this many threads on any machine (OMP_NUM_THREADS overrides).
THREADS = "2"


def run(stage: str, *args: str, pipeline: str, threads: str = THREADS) -> float:
    """Run `stages/<stage>.py` as a user would, in the demo's pipeline run (one W&B group, even for the
    untrained model's evaluation, which has no upstream manifest); return the seconds it took."""
    started = time.perf_counter()
    env = {"OMP_NUM_THREADS": threads} | os.environ | {PIPELINE_ENV: pipeline}
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], cwd=ROOT, env=env, check=True
    )
    return time.perf_counter() - started


def recipe(stage: str) -> dict[str, Any]:
    return yaml.safe_load((RECIPES / f"{stage}.yaml").read_text(encoding="utf-8"))


def dev_path() -> Path:
    return ROOT / recipe("eval-demo")["datasets"][0]["path"]


@cache
def dev_positions() -> dict[str, int]:
    return {example.id: i for i, example in enumerate(read_dataset(dev_path()).examples)}


def dev_rows(generations: Path) -> list[dict[str, Any]]:
    """The evaluation's records of the dev sentences as given (no relabelled variant), in dev-file order:
    an evaluation writes outputs as they finish (the transformers backend longest prompt first), and two
    evaluations are compared sentence by sentence."""
    rows = [json.loads(line) for _, line in complete_lines(generations)[0]]  # not splitlines: U+2028 is text
    positions = dev_positions()
    return sorted((r for r in rows if r["variant"] == "normal"), key=lambda r: positions[r["id"]])


def held_out_reward(
    generations: Path, names: list[str], weights: list[float], output_format: str
) -> dict[str, list[float]]:
    """Each reward component, and their weighted sum (`total`), of every evaluation output."""
    rows = dev_rows(generations)
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
    held_out_steps = held_out_during_training(out / "rl")
    if held_out_steps:
        total_axis.plot(
            list(held_out_steps), list(held_out_steps.values()), "o-", color="black", label="held-out prompts"
        )
        total_axis.legend(fontsize=8)
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


def sentence_counts(generations: Path) -> list[Counts]:
    """Each dev sentence's text-match counts, the ones the evaluation's micro F1 sums."""
    return [
        match_totals(
            Example(r["text"], spans_from_dicts(r["gold"]), Schema(tuple(r["labels"]))),
            spans_from_dicts(r["predicted"]),
            [(e["text"], e["label"]) for e in r["ungrounded"]],
            mode="text",
        )
        for r in dev_rows(generations)
    ]


def strict_share(generations: Path) -> float:
    """The share of outputs whose answer parses with no syntax problem: what a program can read as is
    (`formats.CONTENT_PROBLEMS` are about content, not syntax), and what the strict reward pays."""
    rows = dev_rows(generations)
    clean = [not {p["kind"] for p in r["problems"]} - CONTENT_PROBLEMS for r in rows]
    return sum(clean) / len(clean)


CALIBRATION_SENTENCES = 100
CALIBRATION_SAMPLES = 4
# The untrained model writes until max_new_tokens on every sentence: its F1 of 0 needs no 1,300 of them.
BEFORE_SENTENCES = 300


def calibration(model_dir: Path, data: Path, limit: int) -> dict[str, Any]:
    """Scores from `CALIBRATION_SAMPLES` sampled answers (`NERModel.predict`, self-consistency) on the
    first `limit` dev sentences: precision (exact spans) of the entities at or above each threshold,
    and of those with each score, for the reliability plot."""
    examples = read_dataset(data).examples[:limit]
    options = {"batch_size": 16, "dtype": "float32", "device": "cpu"}  # the demo's numbers are CPU's
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


# What the demo's numbers depend on besides the seed: the CPU lock (`requirements/cpu.lock`) pins them.
VERSIONED = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "tokenizers", "numpy")


def package_versions() -> dict[str, str]:
    """Python, the packages and torch's kernel path (pinned above) that decide the demo's numbers, for
    demo.json and the report."""
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        **{name: version(name) for name in VERSIONED},
        "torch kernels": torch.backends.cpu.get_cpu_capability(),
    }


@dataclass
class Demo:
    """One demo run: where it writes, its pipeline (one W&B group), the --quick shortening, the torch
    threads of each stage, timings."""

    out: Path
    quick: bool
    pipeline: str
    threads: str = THREADS
    timings: dict[str, float] = field(default_factory=dict)

    def stage(self, label: str, stage: str, *args: str) -> None:
        extra = QUICK[stage] if self.quick else []
        self.timings[label] = run(stage, *args, *extra, pipeline=self.pipeline, threads=self.threads)

    def evaluate(self, label: str, model_dir: Path, output_dir: Path, *prompt: str) -> dict[str, Any]:
        args = ["--config", str(RECIPES / "eval-demo.yaml"), "--model_name_or_path", str(model_dir)]
        self.stage(f"eval {label}", "eval", *args, *prompt, "--output_dir", str(output_dir))
        return scores(output_dir / "results.json")


def prepare(demo: Demo) -> tuple[Path, Path, dict[str, Any]]:
    """Stage 1 and the tiny model every run starts from (it stands in for a pretrained model: the seeds
    vary training, not the starting weights); returns the model, the annotations and the CoT report."""
    cot_args = ["--config", str(RECIPES / "cot.yaml"), "--output_dir", str(demo.out / "cot")]
    demo.stage("cot", "cot", *cot_args)
    from reasoningner.cli import main as cli

    model = demo.out / "tiny-model"
    started = time.perf_counter()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", demo.threads)))
    quick = QUICK["tiny-model"] if demo.quick else []
    status = cli(
        ["tiny-model", "--out", str(model), "--data", *recipe("cot")["datasets"], *TINY_MODEL, *quick]
    )
    if status:
        raise SystemExit(status)  # the command said why
    demo.timings["tiny model"] = time.perf_counter() - started
    cot = json.loads((demo.out / "cot" / "report.json").read_text())
    return model, demo.out / "cot" / "annotations.jsonl", cot


def train(
    demo: Demo, model: Path, annotations: Path, folder: Path, seed: int, reasoning: bool
) -> dict[str, Any]:
    """SFT of `model` on the annotations (with their rationales, or answer-only targets), GRPO from it,
    each evaluated on the dev slice: F1, held-out reward per component, strict-parse share."""
    tag = "" if folder == demo.out else f" ({folder.relative_to(demo.out)})"
    sft_args = ["--config", str(RECIPES / "sft.yaml"), "--model_name_or_path", str(model),
                "--train_files", str(annotations), "--output_dir", str(folder / "sft"), "--seed", str(seed),
                "--reasoning", str(reasoning).lower()]  # fmt: skip
    demo.stage(f"sft{tag}", "sft", *sft_args)
    evals = {"sft": demo.evaluate(f"sft{tag}", folder / "sft", folder / "eval-sft")}
    rl_args = ["--config", str(RECIPES / "rl.yaml"), "--model_name_or_path", str(folder / "sft"),
               "--output_dir", str(folder / "rl"), "--seed", str(seed)]  # fmt: skip
    demo.stage(f"rl{tag}", "rl", *rl_args)
    evals["grpo"] = demo.evaluate(f"grpo{tag}", folder / "rl", folder / "eval-grpo")

    counts = [sentence_counts(folder / f"eval-{stage}" / "generations.jsonl") for stage in evals]
    rl = recipe("rl")
    output_format = PromptContract.load(folder / "rl").prompt.output_format  # type: ignore[union-attr]
    held_out = {
        stage: held_out_reward(
            folder / f"eval-{stage}" / "generations.jsonl",
            rl["reward_funcs"],
            rl["reward_weights"],
            output_format,
        )
        for stage in evals
    }
    return {
        "evals": evals,
        "held_out": held_out,
        "rewards": {stage: {n: mean_and_error(v)[0] for n, v in s.items()} for stage, s in held_out.items()},
        "reward_errors": {
            stage: {n: mean_and_error(v)[1] for n, v in s.items()} for stage, s in held_out.items()
        },
        "strict_parse": {
            stage: strict_share(folder / f"eval-{stage}" / "generations.jsonl") for stage in evals
        },
        "train_reward": train_reward_trend(folder / "rl"),
        "held_out_during_training": held_out_during_training(folder / "rl"),
        "f1_gain": dict(zip(("gain", "low", "high"), f1_difference(*counts), strict=True)),
    }


def held_out_during_training(rl_dir: Path) -> dict[int, float]:
    """GRPO's reward on the recipe's held-out prompts (`eval_files`) at each step it evaluated them:
    the same prompts every time, so their trend is the policy's, not the prompts' difficulty."""
    rows = json.loads((rl_dir / "trainer_state.json").read_text())["log_history"]
    return {row["step"]: row["eval_reward"] for row in rows if "eval_reward" in row}


def train_reward_trend(rl_dir: Path) -> dict[str, float]:
    """GRPO's mean train reward over the first and the last quarter of its steps: the trend of the
    moving average, in numbers."""
    rows = json.loads((rl_dir / "trainer_state.json").read_text())["log_history"]
    rewards = [row["reward"] for row in rows if "reward" in row]
    quarter = max(1, len(rewards) // 4)
    return {
        "first_quarter": statistics.fmean(rewards[:quarter]),
        "last_quarter": statistics.fmean(rewards[-quarter:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a shortened smoke run of every stage")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "tiny-cpu")
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED",
        help="instead of the demo: the seed study (each seed, with rationales and answer-only) -> seeds.md",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="seed study: runs at a time, each stage then on one torch thread (the numbers stay the same)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out.resolve()
    threads = THREADS if args.jobs == 1 else "1"
    demo = Demo(out, args.quick, pipeline_id(out, []), threads)  # one pipeline per output folder
    if args.seeds:
        return seed_study(demo, args.seeds, args.jobs)
    lines: list[str] = []

    started = time.perf_counter()
    model, annotations, cot = prepare(demo)
    lines.append(f"stage 1 (CoT, gold-template): {cot['accepted']}/{cot['sentences']} sentences accepted")
    # The untrained model has no prompt contract yet: ask it as SFT will train it.
    sft_prompt = [arg for key in PromptArguments.DEFAULTS if key in recipe("sft")
                  for arg in (f"--{key}", str(recipe("sft")[key]))]  # fmt: skip
    limit = ["--limit", str(BEFORE_SENTENCES)]
    before = demo.evaluate("before", model, out / "eval-before", *sft_prompt, *limit)
    lines.append(f"dev F1 before training (first {BEFORE_SENTENCES} sentences): {100 * before['f1']:.1f}")
    trained = train(demo, model, annotations, out, seed=0, reasoning=True)
    evals = {"before": before, **trained["evals"]}
    lines.append(f"stage 2 (SFT): dev F1 {100 * evals['sft']['f1']:.1f}")
    lines.append(f"stage 3 (GRPO): dev F1 {100 * evals['grpo']['f1']:.1f}")
    gain = trained["f1_gain"]
    lines.append(
        f"GRPO - SFT: {100 * gain['gain']:+.1f} F1, 95% interval over the dev sentences drawn again: "
        f"{100 * gain['low']:+.1f} to {100 * gain['high']:+.1f}"
    )
    rewards, errors = trained["rewards"], trained["reward_errors"]
    most = sum(recipe("rl")["reward_weights"])
    lines.append(
        f"held-out mean reward (max {most:g}): SFT {rewards['sft']['total']:.2f} -> "
        f"GRPO {rewards['grpo']['total']:.2f}"
    )
    strict = {"before": strict_share(out / "eval-before" / "generations.jsonl"), **trained["strict_parse"]}
    lines.append(
        "outputs that parse strictly: "
        + " -> ".join(f"{stage} {100 * share:.1f}%" for stage, share in strict.items())
    )
    trend = trained["train_reward"]
    lines.append(
        f"GRPO train reward, mean of the first -> last quarter of steps: "
        f"{trend['first_quarter']:.2f} -> {trend['last_quarter']:.2f}"
    )
    during = trained["held_out_during_training"]
    if during:
        lines.append(
            "GRPO reward on the recipe's held-out prompts (eval_files, sampled as in training) at steps "
            + ", ".join(map(str, during))
            + ": "
            + " -> ".join(f"{reward:.2f}" for reward in during.values())
        )
    calibration_started = time.perf_counter()
    calibrated = calibration(out / "rl", dev_path(), 4 if args.quick else CALIBRATION_SENTENCES)
    demo.timings["calibration"] = time.perf_counter() - calibration_started
    images = [*plot(out, evals, trained["held_out"]), plot_calibration(out, calibrated)]
    total = time.perf_counter() - started
    lines.append(f"total time {total / 60:.1f} min")

    summary = {
        "evals": evals,
        "rewards": rewards,
        "reward_errors": errors,
        "strict_parse": strict,
        "train_reward": trend,
        "held_out_during_training": during,
        "f1_gain": gain,
        "calibration": calibrated,
        "cot": cot,
        "versions": package_versions(),
        "timings": demo.timings,
        "total_seconds": total,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / REPORT).write_text(report_markdown(lines, summary, images), encoding="utf-8")
    print("\n".join(["", "reasoningner demo", *(f"  {line}" for line in lines), f"  report: {out / REPORT}"]))
    return 0


def report_markdown(lines: list[str], summary: dict[str, Any], images: list[str]) -> str:
    rewards, errors, calibrated = summary["rewards"], summary["reward_errors"], summary["calibration"]
    components = list(rewards["sft"])
    parts = [
        "# reasoningner CPU demo",
        "",
        *(f"- {line}" for line in lines),
        "",
        "| stage | dev F1 (text match) |",
        "| --- | ---: |",
        *(f"| {stage} | {100 * result['f1']:.1f} |" for stage, result in summary["evals"].items()),
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
        "One seed, one run: `make demo-seeds` repeats SFT and GRPO with seeds 0, 1 and 2, each also with "
        "answer-only SFT targets, and reports mean ± std over seeds (seeds.md).",
        "",
        versions_line(summary["versions"]),
        "",
        "| step | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {seconds:.0f} |" for name, seconds in summary["timings"].items()),
        "",
        *(f"![{image}]({image})" for image in images),
        "",
    ]
    return "\n".join(parts)


def versions_line(versions: dict[str, str]) -> str:
    return "Packages: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."


# The seed study's two SFT targets: the rationale then the answer (the paper's), or the answer alone.
VARIANTS = {"reasoning": True, "answer-only": False}
# What the seed study compares, read from each run (`train`'s result): F1 and shares in percent.
MEASURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "dev F1 SFT": lambda r: 100 * r["evals"]["sft"]["f1"],
    "dev F1 GRPO": lambda r: 100 * r["evals"]["grpo"]["f1"],
    "F1 gain": lambda r: 100 * (r["evals"]["grpo"]["f1"] - r["evals"]["sft"]["f1"]),
    "reward SFT": lambda r: r["rewards"]["sft"]["total"],
    "reward GRPO": lambda r: r["rewards"]["grpo"]["total"],
    "reward gain": lambda r: r["rewards"]["grpo"]["total"] - r["rewards"]["sft"]["total"],
    "strict % SFT": lambda r: 100 * r["strict_parse"]["sft"],
    "strict % GRPO": lambda r: 100 * r["strict_parse"]["grpo"],
    "train reward first quarter": lambda r: r["train_reward"]["first_quarter"],
    "train reward last quarter": lambda r: r["train_reward"]["last_quarter"],
}
GAINS = ("F1 gain", "reward gain")


def seed_study(demo: Demo, seeds: list[int], jobs: int = 1) -> int:
    """The pipeline once per seed and SFT target (same tiny model and annotations): mean ± std over seeds
    of every `MEASURES` entry, whether GRPO's gains hold on every seed and exceed twice their spread,
    and reasoning against answer-only SFT (the paper's claim), `jobs` runs at a time. Writes seeds.json
    and seeds.md."""
    started = time.perf_counter()
    model, annotations, _ = prepare(demo)
    runs = [(seed, variant, reasoning) for seed in seeds for variant, reasoning in VARIANTS.items()]

    def one(seed: int, variant: str, reasoning: bool) -> dict[str, Any]:
        return train(demo, model, annotations, demo.out / f"seed-{seed}" / variant, seed, reasoning)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is subprocesses: threads suffice
        results = list(pool.map(one, *zip(*runs, strict=True)))
    measured: dict[str, dict[int, dict[str, float]]] = {variant: {} for variant in VARIANTS}
    for (seed, variant, _), result in zip(runs, results, strict=True):
        measured[variant][seed] = {name: read(result) for name, read in MEASURES.items()}
    summary = {
        "seeds": seeds,
        "runs": measured,
        "spread": {variant: spread(runs) for variant, runs in measured.items()},
        "versions": package_versions(),
        "timings": demo.timings,
        "total_seconds": time.perf_counter() - started,
    }
    (demo.out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report = seeds_markdown(summary)
    (demo.out / "seeds.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


def spread(runs: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean and sample std over seeds of each measure; for the gains, whether every seed gained and the
    mean gain exceeds twice the std."""
    result: dict[str, dict[str, Any]] = {}
    for name in MEASURES:
        values = [run[name] for run in runs.values()]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        result[name] = {"mean": statistics.fmean(values), "std": std}
        if name in GAINS:
            result[name] |= {
                "every_seed": min(values) > 0,
                "beyond_2_std": statistics.fmean(values) > 2 * std,
            }
    return result


def seeds_markdown(summary: dict[str, Any]) -> str:
    seeds, runs, spreads = summary["seeds"], summary["runs"], summary["spread"]
    lines = [
        "# reasoningner CPU demo: seed study",
        "",
        f"Seeds {', '.join(map(str, seeds))} (SFT and GRPO; the tiny model and the annotations are shared). "
        "Mean ± sample std over seeds; each seed's values below. Rewards compare within a variant: "
        "answer-only outputs can earn 12.5 of 14 (format's rationale half and consistency pay a rationale).",
        "",
        "| measure | " + " | ".join(VARIANTS) + " |",
        "| --- |" + " ---: |" * len(VARIANTS),
        *(
            f"| {name} | "
            + " | ".join(f"{spreads[v][name]['mean']:.2f} ± {spreads[v][name]['std']:.2f}" for v in VARIANTS)
            + " |"
            for name in MEASURES
        ),
        "",
        *(
            f"- {v}, {name}: positive on every seed: {'yes' if spreads[v][name]['every_seed'] else 'no'}; "
            f"mean > 2 × std: {'yes' if spreads[v][name]['beyond_2_std'] else 'no'}"
            for v in VARIANTS
            for name in GAINS
        ),
        "",
        "| variant | seed | " + " | ".join(MEASURES) + " |",
        "| --- | ---: |" + " ---: |" * len(MEASURES),
        *(
            f"| {v} | {seed} | " + " | ".join(f"{value:.2f}" for value in run.values()) + " |"
            for v in VARIANTS
            for seed, run in runs[v].items()
        ),
        "",
        versions_line(summary["versions"]),
        f"Total time {summary['total_seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

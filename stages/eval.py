"""Evaluation: run a model over the evaluation sets of a recipe; scores, error analysis, probes.

python stages/eval.py --config recipes/tiny-cpu/eval.yaml [--limit 20] [--model_name_or_path DIR]
python stages/eval.py --config recipes/eval/crossner-zero-shot.yaml --model_name_or_path outputs/qwen3-8b/rl
"""

import json
import sys
from dataclasses import fields
from itertools import islice
from pathlib import Path
from typing import Any

from rich.console import Console

from reasoningner.cli import run_stage
from reasoningner.configs import EvalArguments, GenerationArguments, PromptArguments, RecipeParser
from reasoningner.evaluate import GENERATIONS, RESULTS_JSON, RESULTS_MD, evaluate
from reasoningner.results import NORMAL, ErrorCounts, Evaluation
from reasoningner.tracking import (
    build_manifest,
    log_results,
    mentions,
    wandb_run,
    wants_wandb,
    write_manifest,
)

GENERATIONS_IN_TABLE = 500  # outputs of generations.jsonl shown in W&B; the file holds them all
ERROR_COLUMNS = [f.name for f in fields(ErrorCounts) if f.name != "problems"]


def log_tables(run: Any, evaluation: Evaluation, generations: Path) -> None:
    """What results.md shows, as W&B tables to sort and filter: scores per dataset and per type in both
    modes, the error analysis, the probe drops (when probes ran) and `GENERATIONS_IN_TABLE` outputs
    beside their gold (`spread_sample`); the average F1s and how many outputs the table holds in the
    summary."""
    import wandb

    results = wandb.Table(columns=["mode", "dataset", "precision", "recall", "f1"])
    per_type = wandb.Table(
        columns=["mode", "dataset", "type", "gold", "predicted", "precision", "recall", "f1"]
    )
    for mode in evaluation.modes:
        report = evaluation.reports[NORMAL][mode]
        for name, scores in report.datasets.items():
            results.add_data(mode, name, scores.micro.precision, scores.micro.recall, scores.micro.f1)
            for label, c in scores.per_label.items():
                per_type.add_data(mode, name, label, c.tp + c.fn, c.tp + c.fp, c.precision, c.recall, c.f1)
        run.summary[f"{mode}/avg_f1"] = report.average.f1
    errors = wandb.Table(columns=["variant", "dataset", *ERROR_COLUMNS, "problems"])
    for variant, by_dataset in evaluation.errors.items():
        for name, counts in by_dataset.items():
            problems = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.problems.items()))
            errors.add_data(variant, name, *(getattr(counts, column) for column in ERROR_COLUMNS), problems)
    tables = {"results": results, "per_type": per_type, "errors": errors}
    if evaluation.label_maps:
        drops = wandb.Table(columns=["dataset", "probe", "mode", "f1", "probe_f1", "drop"])
        for name, by_probe in evaluation.drops().items():
            for probe, by_mode in by_probe.items():
                for mode, drop in by_mode.items():
                    f1 = evaluation.reports[NORMAL][mode].datasets[name].micro.f1
                    drops.add_data(name, probe, mode, f1, f1 - drop, drop)
        tables["probe_drops"] = drops
    shown = wandb.Table(columns=["dataset", "variant", "id", "text", "gold", "output", "parsed", "errors"])
    for record in spread_sample(generations, evaluation.generation["sentences"], GENERATIONS_IN_TABLE):
        shown.add_data(
            record["dataset"],
            record["variant"],
            record["id"],
            record["text"],
            mentions(record["gold"]),
            record["output"],
            parsed_cell(record),
            errors_cell(record),
        )
    tables["generations"] = shown
    run.summary["outputs"] = evaluation.generation["sentences"]
    run.summary["outputs_in_generations_table"] = len(shown.data)
    run.log(tables)


def spread_sample(generations: Path, total: int, limit: int) -> list[dict[str, Any]]:
    """At most `limit` of the `total` records of `generations`, every k-th line: the file is in completion
    order (with local generation, longest prompts first), so its first lines would show only the longest
    sentences."""
    step = max(1, -(-total // limit))
    with generations.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in islice(lines, 0, None, step)]


def parsed_cell(record: dict[str, Any]) -> str:
    """The spans parsed from an output, then the mentions it gave that are not in the sentence."""
    ungrounded = f" | not in the text: {mentions(record['ungrounded'])}" if record["ungrounded"] else ""
    return mentions(record["predicted"]) + ungrounded


def errors_cell(record: dict[str, Any]) -> str:
    """An output's error counts that are not zero, and the kinds of its parse problems."""
    cells = [f"{c} {record['errors'][c]}" for c in ERROR_COLUMNS if c != "outputs" and record["errors"][c]]
    kinds = sorted({problem["kind"] for problem in record["problems"]})
    if kinds:
        cells.append(f"problems: {' '.join(kinds)}")
    return ", ".join(cells)


def make_parser() -> RecipeParser:
    return RecipeParser((EvalArguments, PromptArguments, GenerationArguments))


def main(args: EvalArguments, prompt: PromptArguments, generation: GenerationArguments) -> None:
    evaluation = evaluate(args, prompt, generation)
    model = [generation.model_name_or_path] if generation.model_name_or_path else []
    inputs = [*(d if isinstance(d, str) else d["path"] for d in args.datasets), *model]
    manifest = build_manifest("eval", evaluation.config, inputs)  # the prompt as resolved from the model
    write_manifest(args.output_dir, manifest, evaluation.to_dict()["scores"])
    with wandb_run("eval", args.output_dir, manifest, wants_wandb(args.report_to)) as run:
        if run is not None:
            log_tables(run, evaluation, Path(args.output_dir) / GENERATIONS)
            log_results(run, manifest, args.output_dir, [RESULTS_JSON, RESULTS_MD])
    Console().print(evaluation.table())
    generation = evaluation.generation
    print(
        f"eval: {generation['sentences']} outputs ({generation['reused']} of an earlier run), "
        f"{generation['sentences_per_second']:.2f} sentences/s "
        f"-> {args.output_dir}/{RESULTS_MD}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(make_parser, main)

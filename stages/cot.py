"""Stage 1 — CoT generation: a teacher annotates NER data with rationales, validated and scored.

python stages/cot.py --config recipes/tiny-cpu/cot.yaml [--shard 0/4] [--limit 100]
python stages/cot.py --config recipes/tiny-cpu/cot.yaml --merge true   # the shards' recipe: their inputs
"""

import json
import sys
from pathlib import Path
from typing import Any

from reasoningner.cli import run_stage
from reasoningner.configs import (
    GOLD_TEMPLATE,
    CoTArguments,
    GenerationArguments,
    PromptArguments,
    RecipeParser,
)
from reasoningner.cot import (
    REPORT,
    annotate,
    check_continues,
    fresh_start,
    merge_shards,
    output_path,
    shard_name,
)
from reasoningner.files import exclusive
from reasoningner.tracking import (
    WANDB_RUN_ID,
    build_manifest,
    config_dict,
    continue_wandb_run,
    log_outputs,
    wandb_run,
    wants_wandb,
    write_manifest,
)


def make_parser() -> RecipeParser:
    return RecipeParser((CoTArguments, PromptArguments, GenerationArguments))


def main(args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments) -> None:
    generation = generation.within_budget(None)  # the recipe's, else the default: a teacher has no contract
    index, count = args.shard_index()
    wandb = wants_wandb(args.report_to)
    manifest = _manifest(args, prompt, generation) if args.merge or count == 1 or wandb else {}
    # The manifest describes annotations.jsonl, of an unsharded run or of the merge (written before the
    # W&B artifact, which takes its name): a shard's report is its own (report.shard-i-of-n.json), and
    # shards writing one manifest at once would clash.
    if args.merge:
        path = merge_shards(args, prompt)
        report = json.loads((path.parent / REPORT).read_text(encoding="utf-8"))
        write_manifest(args.output_dir, manifest, report)
        with wandb_run("cot", args.output_dir, manifest, wandb) as run:
            _log_report(run, report, path)
    else:
        path = output_path(args)
        # Each run (a shard) has a W&B run of its own that its relaunches and requeues continue, as a
        # training run's do, opened once the output is this run's (`exclusive`, which annotate takes too):
        # a second launch of a running shard stops there.
        with exclusive(path):
            if wandb:
                fresh = fresh_start(args, prompt, generation)
                if not fresh:
                    check_continues(args, generation)
                id_file = shard_name(WANDB_RUN_ID, index, count)
                continue_wandb_run(args.output_dir, resuming=not fresh, id_file=id_file)
            name = Path(args.output_dir).resolve().name  # a folder name, no file: `qwen3-1.7b` has no suffix
            name += "" if count == 1 else f".shard-{index}-of-{count}"
            with wandb_run("cot", args.output_dir, manifest, wandb, name=name) as run:
                if run is not None:
                    run.define_metric("cot/*", step_metric="cot/sentences_done")
                report = annotate(args, prompt, generation, on_progress=None if run is None else run.log)
                if count == 1:
                    write_manifest(args.output_dir, manifest, report)
                _log_report(run, report, path if count == 1 else None)
    print(json.dumps(report, indent=2))
    print(summary_line(report, path), file=sys.stderr)


def _manifest(args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments) -> dict[str, Any]:
    """What went into the annotations: the recipe, the input files and the teacher (`build_manifest`)."""
    teacher = [] if generation.backend == GOLD_TEMPLATE else [generation.model_name_or_path]
    return build_manifest("cot", config_dict(args, prompt, generation), [*args.datasets, *teacher])


def _log_report(run: Any, report: dict[str, Any], annotations: Path | None) -> None:
    """The report as the W&B run's summary, and the annotations (not a shard's) as its output."""
    if run is None:
        return
    run.summary.update(report)
    if annotations is not None:
        log_outputs(run, [annotations])


def summary_line(report: dict[str, Any], path: Path) -> str:
    """The counts that add up to the sentences, and what to do about failures."""
    retry = " (a rerun tries them again)" if report["failed"] else ""
    return (
        f"cot: {report['accepted']}/{report['sentences']} sentences accepted "
        f"({100 * report['acceptance_rate']:.1f}%), {report['rejected']} rejected, "
        f"{report['failed']} failed{retry}; teacher F1 {100 * report['teacher_f1_mean']:.1f}, "
        f"consistency {report['consistency_mean']:.2f} -> {path}"
    )


if __name__ == "__main__":
    run_stage(make_parser, main)

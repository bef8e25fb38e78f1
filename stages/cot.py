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
from reasoningner.cot import REPORT, annotate, merge_shards, output_path
from reasoningner.tracking import (
    build_manifest,
    config_dict,
    log_outputs,
    wandb_run,
    wants_wandb,
    write_manifest,
)


def make_parser() -> RecipeParser:
    return RecipeParser((CoTArguments, PromptArguments, GenerationArguments))


def main(args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments) -> None:
    if args.merge:
        path = merge_shards(args, prompt)
        report = json.loads((path.parent / REPORT).read_text(encoding="utf-8"))
    else:
        path, report = output_path(args), annotate(args, prompt, generation)
    # The manifest and W&B run describe annotations.jsonl, of an unsharded run or of the merge: a shard's
    # report is its own (report.shard-i-of-n.json), and shards writing one manifest at once would clash.
    if args.merge or args.shard_index()[1] == 1:
        teacher = [] if generation.backend == GOLD_TEMPLATE else [generation.model_name_or_path]
        manifest = build_manifest("cot", config_dict(args, prompt, generation), [*args.datasets, *teacher])
        write_manifest(args.output_dir, manifest, report)
        with wandb_run("cot", args.output_dir, manifest, wants_wandb(args.report_to)) as run:
            if run is not None:
                run.summary.update(report)
                log_outputs(run, [path])
    print(json.dumps(report, indent=2))
    print(summary_line(report, path), file=sys.stderr)


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

"""Stage 1 — CoT generation: a teacher annotates NER data with rationales, validated and scored.

python stages/cot.py --config recipes/tiny-cpu/cot.yaml [--shard 0/4] [--limit 100]
python stages/cot.py --config recipes/tiny-cpu/cot.yaml --merge true
"""

import json
import sys

from reasoningner.configs import (
    GOLD_TEMPLATE,
    CoTArguments,
    GenerationArguments,
    PromptArguments,
    RecipeParser,
)
from reasoningner.cot import annotate, merge_shards, output_path
from reasoningner.tracking import build_manifest, config_dict, wandb_run, wants_wandb, write_manifest


def make_parser() -> RecipeParser:
    return RecipeParser((CoTArguments, PromptArguments, GenerationArguments))


def main(args: CoTArguments, prompt: PromptArguments, generation: GenerationArguments) -> None:
    if args.merge:
        print(f"merged shards into {merge_shards(args.output_dir)}", file=sys.stderr)
        return
    report = annotate(args, prompt, generation)
    teacher = [] if generation.backend == GOLD_TEMPLATE else [generation.model_name_or_path]
    manifest = build_manifest("cot", config_dict(args, prompt, generation), [*args.datasets, *teacher])
    write_manifest(args.output_dir, manifest, report)
    with wandb_run("cot", args.output_dir, manifest, wants_wandb(args.report_to)) as run:
        if run is not None:
            run.summary.update(report)
    print(json.dumps(report, indent=2))
    print(
        f"cot: {report['accepted']}/{report['sentences']} sentences accepted "
        f"({100 * report['acceptance_rate']:.1f}%), teacher F1 {100 * report['teacher_f1_mean']:.1f}, "
        f"consistency {report['consistency_mean']:.2f} -> {output_path(args)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())

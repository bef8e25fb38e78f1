"""Evaluation: run a model over the evaluation sets of a recipe; scores, error analysis, probes.

python stages/eval.py --config recipes/tiny-cpu/eval.yaml [--limit 20] [--model_name_or_path DIR]
python stages/eval.py --config recipes/eval/crossner-zero-shot.yaml --model_name_or_path outputs/qwen3-8b/rl
"""

import sys
from pathlib import Path

from rich.console import Console

from reasoningner.cli import run_stage
from reasoningner.configs import EvalArguments, GenerationArguments, PromptArguments, RecipeParser
from reasoningner.evaluate import GENERATIONS, RESULTS_JSON, RESULTS_MD, evaluate
from reasoningner.results import log_wandb_tables
from reasoningner.tracking import build_manifest, log_results, wandb_run, wants_wandb, write_manifest


def make_parser() -> RecipeParser:
    return RecipeParser((EvalArguments, PromptArguments, GenerationArguments))


def main(args: EvalArguments, prompt: PromptArguments, generation: GenerationArguments) -> None:
    evaluation = evaluate(args, prompt, generation)
    model = [generation.model_name_or_path] if generation.model_name_or_path else []
    inputs = [*(d if isinstance(d, str) else d["path"] for d in args.datasets), *model]
    manifest = build_manifest("eval", evaluation.config, inputs)  # the prompt as resolved from the model
    results = evaluation.to_dict()  # the scores by mode, and how each mode was counted (compat)
    write_manifest(args.output_dir, manifest, {**results["scores"], "counting": results["counting"]})
    with wandb_run("eval", args.output_dir, manifest, wants_wandb(args.report_to)) as run:
        if run is not None:
            log_wandb_tables(run, evaluation, Path(args.output_dir) / GENERATIONS)
            log_results(run, manifest, args.output_dir, [RESULTS_JSON, RESULTS_MD])
    Console().print(evaluation.table())
    asked = evaluation.generation
    print(
        f"eval: {asked['sentences']} outputs ({asked['reused']} of an earlier run), "
        f"{asked['sentences_per_second']:.2f} sentences/s "
        f"-> {args.output_dir}/{RESULTS_MD}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(make_parser, main)

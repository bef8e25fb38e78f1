"""Evaluation: run a model over the evaluation sets of a recipe; scores, error analysis, probes.

python stages/eval.py --config recipes/tiny-cpu/eval.yaml [--limit 20] [--model_name_or_path DIR]
python stages/eval.py --config recipes/eval/crossner-zero-shot.yaml --model_name_or_path outputs/qwen3-8b/grpo
"""

import sys

from rich.console import Console

from reasoningner.cli import run_stage
from reasoningner.configs import EvalArguments, GenerationArguments, PromptArguments, RecipeParser
from reasoningner.evaluate import RESULTS_MD, evaluate
from reasoningner.results import NORMAL
from reasoningner.tracking import build_manifest, wandb_run, wants_wandb, write_manifest


def log_tables(run, evaluation) -> None:
    """One W&B table row per dataset and mode, and the average F1s in the summary."""
    import wandb

    table = wandb.Table(columns=["mode", "dataset", "precision", "recall", "f1"])
    for mode in evaluation.modes:
        report = evaluation.reports[NORMAL][mode]
        for name, scores in report.datasets.items():
            table.add_data(mode, name, scores.micro.precision, scores.micro.recall, scores.micro.f1)
        run.summary[f"{mode}/avg_f1"] = report.average.f1
    run.log({"results": table})


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
            log_tables(run, evaluation)
    Console().print(evaluation.table())
    generation = evaluation.generation
    print(
        f"eval: {generation['sentences']} outputs, {generation['sentences_per_second']:.2f} sentences/s "
        f"-> {args.output_dir}/{RESULTS_MD}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_stage(make_parser, main)

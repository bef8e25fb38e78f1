"""Evaluation throughput on CPU: the same sentences evaluated with the transformers backend at several
batch sizes, side by side (generation, parsing, scoring and writing generations.jsonl included; model
loading and one warm-up batch excluded).

Without --model, a random tiny model of the default size (the one stage 2 starts from) is built in a
temporary folder: it never stops early, so every output runs to --max-new-tokens and batches carry no
padding waste; a trained model stops at different lengths, which narrows the gain of batching. Every
batch size evaluates `--repeats` times into fresh folders, the order reversed every other round; the
figures are each one's median with its range, and the speed-up the ratio of medians.

    python benchmarks/bench_eval.py [--model PATH] [--sentences 64] [--batch-sizes 1 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch
from timing import add_repeats, check_repeats, median_run, rounds

from reasoningner.configs import EvalArguments, GenerationArguments, PromptArguments
from reasoningner.evaluate import evaluate
from reasoningner.generation import SamplingConfig, TransformersGenerator
from reasoningner.readers import read_dataset
from reasoningner.tiny_model import build_tiny_model

ROOT = Path(__file__).parents[1]
DATA = ROOT / "data" / "conll2003" / "dev-slice.txt"
TOKENIZER_CORPUS = ROOT / "data" / "conll2003" / "train-slice.txt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: a random tiny model)")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    add_repeats(parser, "evaluations of each batch size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        model = args.model or build_tiny_model(
            Path(scratch) / "tiny", [e.text for e in read_dataset(TOKENIZER_CORPUS).examples]
        )
        generators = {}
        for batch_size in args.batch_sizes:  # loaded once each, warmed up with one batch
            generator = stack.enter_context(
                TransformersGenerator(model, batch_size=batch_size, dtype="float32")
            )
            warm_up = [[{"role": "user", "content": "Sentence: EU rejects German call ."}]] * batch_size
            generator.generate(warm_up, SamplingConfig(max_new_tokens=args.max_new_tokens))
            generators[batch_size] = generator
        timed: dict[int, list[dict]] = {batch_size: [] for batch_size in args.batch_sizes}
        for round_, batch_size in rounds(args.batch_sizes, args.repeats):
            eval_args = EvalArguments(
                datasets=[{"path": str(DATA), "name": "conll2003"}],
                limit=args.sentences,
                output_dir=str(Path(scratch) / f"eval-{batch_size}-{round_}"),  # fresh: nothing resumed
            )
            sampling = GenerationArguments(max_new_tokens=args.max_new_tokens)
            run = evaluate(eval_args, PromptArguments(), sampling, generator=generators[batch_size])
            timed[batch_size].append(run.generation)
    rows = []
    for batch_size, runs in timed.items():
        generation = median_run(runs)
        rows.append(
            {
                "batch_size": batch_size,
                "threads": args.threads,
                "sentences": generation["sentences"],
                "seconds": generation["seconds"],
                "seconds_range": generation["seconds_range"],
                "sentences_per_second": generation["sentences_per_second"],
                "tokens_per_second": generation["completion_tokens"] / generation["seconds"],
            }
        )

    base = rows[0]["sentences_per_second"]
    print(f"\nmodel {args.model or 'random tiny (default size)'}, {args.threads} torch thread(s), "
          f"max_new_tokens {args.max_new_tokens}, median of {args.repeats}")  # fmt: skip
    print(
        f"{'batch':>6} {'sentences':>10} {'median s (range)':>20} {'sent/s':>8} {'tok/s':>8} {'speed-up':>9}"
    )
    for row in rows:
        low, high = row["seconds_range"]
        spread = f"{row['seconds']:.2f} ({low:.2f}-{high:.2f})"
        print(
            f"{row['batch_size']:>6} {row['sentences']:>10} {spread:>20} "
            f"{row['sentences_per_second']:>8.2f} {row['tokens_per_second']:>8.1f} "
            f"{row['sentences_per_second'] / base:>8.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

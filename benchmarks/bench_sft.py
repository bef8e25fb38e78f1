"""Stage 2 throughput: our batching against TRL's defaults, on the same data, model and number of steps.

Arms (all with the tiny-cpu SFT recipe's batch size, learning rate, seed and prompt options):
- `trl-default`: TRL's defaults, random sampling into padded batches;
- `length-grouped`: what `configure_batching` picks for sdpa/eager (ours on CPU): batches of similar length;
- `padding-free`: what it picks for flash attention: one flattened row per batch. Here the model runs sdpa,
  which transformers masks block-diagonally from the position ids: the padding it removes is real, the
  speed is not that of a varlen kernel (attention spans the whole flattened batch).

No arm truncates (`max_length=None`), so all train on the same token sequences: TRL cannot truncate
padding-free batches without packing, and truncating conversations cuts off answers anyway.

Every arm trains the same number of steps, by default one epoch, so that all see the same conversations
(length grouping puts the longest batches first: over fewer steps the arms would see different samples).
Each arm trains `--repeats` times from the same model (`timing`: the order reversed every other round, so
that the first run's one-time costs and a drifting machine favour no arm). Reported: each arm's median run
by seconds, with the range: supervised tokens per second (labels != -100) over all steps, and the share of
padding positions per batch. Without --annotations, stage 1's gold-template teacher annotates the
CoNLL-2003 slice in the repository; without --model, a random tiny model is built with the
`reasoningner tiny-model` sizes (only speed counts).

    python benchmarks/bench_sft.py [--conversations 512] [--steps N] [--arms ...] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset
from timing import add_repeats, check_repeats, median_run, rounds
from transformers import AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from reasoningner.configs import CoTArguments, DataArguments, GenerationArguments, PromptArguments
from reasoningner.cot import ANNOTATIONS, annotate
from reasoningner.tiny_model import build_tiny_model
from reasoningner.training import configure_batching
from reasoningner.training_data import sft_conversations

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "tiny-cpu" / "sft.yaml"
TRAIN_SLICE = ROOT / "data" / "conll2003" / "train-slice.txt"
# Arm name -> the attention implementation `configure_batching` is told about (None: TRL's defaults).
ARMS: dict[str, str | None] = {
    "trl-default": None,
    "length-grouped": "sdpa",
    "padding-free": "flash_attention_2",
}


class StepClock(TrainerCallback):
    """Wall-clock time at the start of training and at the end of every optimizer step."""

    def __init__(self) -> None:
        self.start = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def recording(
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]], batches: list[dict[str, int]]
) -> Any:
    """Wrap `collator` to append, for every batch it makes, its supervised, real and total positions."""

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(rows)
        batches.append(
            {
                "supervised": int((batch["labels"] != -100).sum()),
                "real": sum(len(row["input_ids"]) for row in rows),
                "positions": batch["input_ids"].numel(),
            }
        )
        return batch

    return collate


def run_arm(
    name: str, model: Path, conversations: list[dict[str, Any]], recipe: dict[str, Any], steps: int, out: Path
) -> dict[str, Any]:
    """Train `steps` steps with one arm's batching, in `out`; return its throughput and padding."""
    args = SFTConfig(
        output_dir=str(out),
        assistant_only_loss=True,
        max_length=None,
        per_device_train_batch_size=recipe["per_device_train_batch_size"],
        learning_rate=recipe["learning_rate"],
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=recipe["seed"],
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )
    attn = ARMS[name]
    batching = "TRL defaults" if attn is None else configure_batching(args, attn)
    trainer = SFTTrainer(
        model=str(model),
        args=args,
        train_dataset=Dataset.from_list(conversations),
        processing_class=AutoTokenizer.from_pretrained(model),
    )
    batches: list[dict[str, int]] = []
    trainer.data_collator = recording(trainer.data_collator, batches)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    trained = batches[:steps]  # the dataloader may have made one batch more than was trained
    seconds = clock.ends[-1] - clock.start
    padding = [1 - b["real"] / b["positions"] for b in trained]
    return {
        "arm": name,
        "batching": batching,
        "sampler": args.train_sampling_strategy,
        "steps": steps,
        "seconds": seconds,
        "supervised_tokens": sum(b["supervised"] for b in trained),
        "supervised_tokens_per_s": sum(b["supervised"] for b in trained) / seconds,
        "positions_per_s": sum(b["positions"] for b in trained) / seconds,
        "seconds_per_step": seconds / steps,
        "padding_mean": statistics.fmean(padding),
        "padding_max": max(padding),
        "positions_per_batch": statistics.fmean(b["positions"] for b in trained),
    }


def prepare(
    args: argparse.Namespace, work: Path, recipe: dict[str, Any]
) -> tuple[Path, list[dict[str, Any]]]:
    """The model and the conversations: given, or made as the tiny-cpu pipeline makes them."""
    prompt = PromptArguments(
        **{key: recipe[key] for key in ("output_format", "descriptions", "compact_prompt")}
    )
    annotations = args.annotations
    if annotations is None:
        # Every gold-template annotation is accepted, so as many sentences as conversations are needed.
        annotate(
            CoTArguments(datasets=[str(TRAIN_SLICE)], limit=args.conversations, output_dir=str(work / "cot")),
            prompt,
            GenerationArguments(backend="gold-template"),
        )
        annotations = work / "cot" / ANNOTATIONS
    conversations = sft_conversations([str(annotations)], prompt, DataArguments(limit=args.conversations))
    model = args.model
    if model is None:
        corpus = [message["content"] for c in conversations for message in c["messages"]]
        model = build_tiny_model(work / "tiny-model", corpus)
    return model, conversations


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        "arm",
        "batching",
        "sampler",
        "sup tok/s",
        "pos/s",
        "median s/step (range)",
        "pad mean",
        "pad max",
        "pos/batch",
    )
    rows = [
        (
            r["arm"],
            r["batching"],
            r["sampler"],
            f"{r['supervised_tokens_per_s']:.0f}",
            f"{r['positions_per_s']:.0f}",
            f"{r['seconds_per_step']:.3f} ({r['seconds_range'][0] / r['steps']:.3f}-"
            f"{r['seconds_range'][1] / r['steps']:.3f})",
            f"{r['padding_mean']:.1%}",
            f"{r['padding_max']:.1%}",
            f"{r['positions_per_batch']:.0f}",
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotations", type=Path, help="stage 1 output (default: annotate the CoNLL slice)")
    parser.add_argument("--model", type=Path, help="model directory (default: build a random tiny model)")
    parser.add_argument("--conversations", type=int, default=512)
    parser.add_argument("--steps", type=int, help="optimizer steps per arm (default: one epoch)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    add_repeats(parser, "trainings of each arm")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    check_repeats(parser, args.repeats)
    torch.set_num_threads(args.threads)
    recipe = yaml.safe_load(RECIPE.read_text())

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, conversations = prepare(args, work, recipe)
        steps = args.steps or math.ceil(len(conversations) / recipe["per_device_train_batch_size"])
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.arms}
        for round_, name in rounds(args.arms, args.repeats):
            runs[name].append(run_arm(name, model, conversations, recipe, steps, work / f"{name}-{round_}"))
        results = [median_run(runs[name]) for name in args.arms]
    settings = {
        "conversations": len(conversations),
        "steps": steps,
        "batch_size": recipe["per_device_train_batch_size"],
        "max_length": None,
        "threads": args.threads,
        "repeats": args.repeats,
        "model": str(args.model or "random tiny model (build_tiny_model defaults)"),
        "torch": torch.__version__,
    }
    print(json.dumps(settings))
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

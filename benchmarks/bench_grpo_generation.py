"""Where a CPU GRPO step of the demo's recipe spends its time, and what the transformers generation
options TRL offers change: one micro-batch of the recipe (its prompts as GRPO formats them, groups of
`num_generations` samples at its temperature, up to `max_completion_length` tokens) generated with
`model.generate` and the dynamic cache (TRL's default), with a static cache (`cache_implementation:
static`), with continuous batching (`use_transformers_continuous_batching`), then one forward and
backward pass over the generated rows (the training half of the step). Variants alternate, micro-batch
by micro-batch, so that a machine whose speed drifts favours none.

    python benchmarks/bench_grpo_generation.py [--model outputs/tiny-cpu/sft] [--batches 2] [--json out.json]

The model is a trained one (an untrained model never stops, which hides the cost of waiting for a
batch's longest row): the demo's SFT model by default (`make demo` writes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from reasoningner.configs import PromptArguments, PromptContract
from reasoningner.training_data import rl_prompts

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "tiny-cpu" / "rl.yaml"
DEFAULT = "generate, dynamic cache (TRL's default)"


def micro_batches(model: Path, recipe: dict[str, Any], count: int, tokenizer: Any) -> list[list[list[int]]]:
    """Token ids of `count` micro-batches of the recipe, each prompt repeated num_generations times."""
    prompt = PromptArguments().resolve(PromptContract.load(model))
    files = [str(ROOT / path) for path in recipe["train_files"]]
    records = rl_prompts(files, prompt, total=recipe["total"], seed=recipe["seed"])
    per_batch = recipe["per_device_train_batch_size"] // recipe["num_generations"]
    if len(records) < per_batch * count:
        raise ValueError(f"{RECIPE} gives {len(records)} prompts, fewer than {count} micro-batches need")
    texts = [
        tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        for r in records[: per_batch * count]
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [
        [row for row in ids[b * per_batch : (b + 1) * per_batch] for _ in range(recipe["num_generations"])]
        for b in range(count)
    ]


def left_padded(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    return {
        "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }


def completions(generated: torch.Tensor, prompt_width: int, eos: int) -> list[list[int]]:
    """Generated rows up to and including their first end-of-sequence token."""
    rows = []
    for row in generated[:, prompt_width:].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "outputs" / "tiny-cpu" / "sft")
    parser.add_argument("--batches", type=int, default=2, help="micro-batches per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        parser.error(
            f"no model in {args.model}: run `make demo` (it writes outputs/tiny-cpu/sft) or pass --model"
        )
    torch.set_num_threads(args.threads)
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    eos = tokenizer.eos_token_id
    batches = micro_batches(args.model, recipe, args.batches, tokenizer)
    sampling = {
        "max_new_tokens": recipe["max_completion_length"],
        "do_sample": True,
        "temperature": recipe["temperature"],
        "top_p": 1.0,
        "top_k": 0,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        "disable_compile": True,
    }
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    paged = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="paged|sdpa"
    ).eval()

    def generate(cache: str | None) -> Callable[[list[list[int]]], list[list[int]]]:
        def run(rows: list[list[int]]) -> list[list[int]]:
            inputs = left_padded(rows, tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(**inputs, **sampling, cache_implementation=cache)
            return completions(out, inputs["input_ids"].shape[1], eos)

        return run

    def continuous(rows: list[list[int]]) -> list[list[int]]:
        with torch.no_grad():
            outputs = paged.generate_batch(
                rows, generation_config=GenerationConfig(**sampling), progress_bar=False
            )
        return [o.generated_tokens for o in outputs.values()]

    variants = {
        DEFAULT: generate(None),
        "generate, static cache": generate("static"),
        "continuous batching (paged|sdpa)": continuous,
    }
    seconds: dict[str, list[float]] = {name: [] for name in [*variants, "forward + backward"]}
    lengths: list[int] = []
    decode_steps: list[int] = []
    for index, rows in enumerate(batches):
        outputs = {}
        for name, run in variants.items():
            torch.manual_seed(index)
            started = time.perf_counter()
            outputs[name] = run(rows)
            seconds[name].append(time.perf_counter() - started)
        generated = outputs[DEFAULT]
        lengths += map(len, generated)
        decode_steps.append(max(map(len, generated)))
        sequences = [prompt + completion for prompt, completion in zip(rows, generated, strict=True)]
        inputs = left_padded(sequences, tokenizer.pad_token_id)
        model.train()
        started = time.perf_counter()
        logits = model(**inputs).logits
        torch.log_softmax(logits[:, :-1], dim=-1).amax(-1).mean().backward()
        seconds["forward + backward"].append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
        model.eval()

    base = statistics.mean(seconds[DEFAULT])
    rows = [
        {
            "variant": name,
            "seconds_per_micro_batch": statistics.mean(values),
            "ratio": statistics.mean(values) / base,
        }
        for name, values in seconds.items()
    ]
    summary = {
        "model": str(args.model),
        "threads": args.threads,
        "micro_batches": args.batches,
        "rows_per_micro_batch": len(batches[0]),
        "mean_completion_tokens": statistics.mean(lengths),
        "decode_steps_per_micro_batch": statistics.mean(decode_steps),
        "variants": rows,
    }
    print(
        f"\n{args.model}, {args.threads} torch thread(s), "
        f"{args.batches} micro-batches of {len(batches[0])} rows; "
        f"completions average {summary['mean_completion_tokens']:.0f} tokens, a micro-batch decodes "
        f"{summary['decode_steps_per_micro_batch']:.0f} steps (its longest row)"
    )
    print(f"{'':44} {'s / micro-batch':>16} {'vs default':>11}")
    for row in rows:
        print(f"{row['variant']:44} {row['seconds_per_micro_batch']:>16.2f} {row['ratio']:>10.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

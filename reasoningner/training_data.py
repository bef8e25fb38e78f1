"""Training records for stages 2 and 3, built from examples with the shared prompts.

SFT records are conversations (user instruction, assistant `<think>…</think>` + answer) that TRL
tokenizes with the model's own chat template; RL records are the prompt alone plus the gold
columns the rewards read. Mixtures of datasets are sampled proportionally with a per-dataset cap,
as ReasoningNER's scripts do, and deterministically from a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasoningner.cot import is_cot_file, read_records, record_example
from reasoningner.formats import OutputFormat, get_format
from reasoningner.prompts import assistant_target, ner_instruction
from reasoningner.readers import read_dataset
from reasoningner.spans import Example


def sft_record(
    example: Example,
    output_format: OutputFormat,
    rationale: str | None,
    *,
    answer: str | None = None,
    descriptions: bool = True,
    compact: bool = False,
) -> dict[str, Any]:
    """A conversation teaching `<think>rationale</think>answer` (the answer alone without rationale).

    `answer` defaults to the gold answer; stage 1 records bring their own.
    """
    prompt = ner_instruction(
        example.text,
        example.schema,
        output_format,
        reasoning=rationale is not None,
        descriptions=descriptions,
        compact=compact,
    )
    target = assistant_target(output_format.render(example) if answer is None else answer, rationale)
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}]}


def rl_record(
    example: Example,
    output_format: OutputFormat,
    *,
    dataset: str = "",
    descriptions: bool = True,
    compact: bool = False,
) -> dict[str, Any]:
    """A GRPO prompt with the gold columns the rewards need."""
    prompt = ner_instruction(
        example.text,
        example.schema,
        output_format,
        reasoning=True,
        descriptions=descriptions,
        compact=compact,
    )
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "text": example.text,
        "entities": example.entity_dicts(),
        "labels": list(example.schema.labels),
        "output_format": output_format.name,
        "dataset": dataset,
    }


def proportional_sizes(sizes: Sequence[int], total: int | None, cap: int | None) -> list[int]:
    """How many to draw from each dataset: shares proportional to size, each at most `cap`.

    Without `total`, every dataset gives all it has up to `cap`. Rounding is by largest remainder so
    that the sizes add up to `min(total, sum(sizes))` when no cap binds.
    """
    capped = [min(n, cap) if cap is not None else n for n in sizes]
    if total is None or total >= sum(capped):
        return capped
    whole = sum(sizes)
    raw = [total * n / whole for n in sizes]
    takes = [min(int(r), c) for r, c in zip(raw, capped, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order:
        if sum(takes) >= total:
            break
        if takes[i] < capped[i]:
            takes[i] += 1
    return takes


def sample_mixture(
    datasets: Sequence[Sequence[Example]], total: int | None, cap: int | None, seed: int
) -> list[list[Example]]:
    """Draw from each dataset the `proportional_sizes` share, without replacement, seeded."""
    takes = proportional_sizes([len(d) for d in datasets], total, cap)
    rng = random.Random(seed)
    return [
        [examples[i] for i in sorted(rng.sample(range(len(examples)), take))]
        for examples, take in zip(datasets, takes, strict=True)
    ]


def sft_conversations(
    paths: Sequence[str],
    output_format: str,
    *,
    rationales: bool = True,
    descriptions: bool = True,
    compact: bool = False,
    reader: str = "auto",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """SFT conversations from stage 1 annotations (accepted ones) or from any NER data file.

    With `rationales`, every file must be stage 1 output (its rationale becomes the `<think>`
    block); without, the answer alone is the target: the papers' direct-answer baseline.
    """
    fmt = get_format(output_format)
    conversations = []
    for path in paths:
        if is_cot_file(path):
            records = [r for r in read_records(Path(path)) if r["accepted"]][:limit]
            for record in records:
                if record["output_format"] != output_format:
                    raise ValueError(
                        f"{path}: annotations answer in {record['output_format']}, "
                        f"the recipe asks for {output_format}"
                    )
            pairs = [
                (record_example(r), r["answer"], r["rationale"] if rationales else None) for r in records
            ]
        elif rationales:
            raise ValueError(
                f"{path}: plain NER data has no rationales; "
                "run stage 1 (make cot) on it, or set rationales: false"
            )
        else:
            pairs = [(e, fmt.render(e), None) for e in read_dataset(path, reader).examples[:limit]]
        conversations.extend(
            sft_record(example, fmt, rationale, answer=answer, descriptions=descriptions, compact=compact)
            for example, answer, rationale in pairs
        )
    if not conversations:
        raise ValueError(f"no training examples in {list(paths)} (are any annotations accepted?)")
    return conversations


def rl_prompts(
    paths: Sequence[str],
    output_format: str,
    *,
    total: int | None = None,
    cap_per_dataset: int | None = None,
    seed: int = 0,
    descriptions: bool = True,
    compact: bool = False,
    reader: str = "auto",
) -> list[dict[str, Any]]:
    """GRPO prompts with gold columns, sampled proportionally from several datasets (`sample_mixture`)."""
    fmt = get_format(output_format)
    named: list[tuple[str, list[Example]]] = []
    for path in paths:
        if is_cot_file(path):
            records = read_records(Path(path))
            named.append(
                (records[0]["dataset"] if records else Path(path).stem, [record_example(r) for r in records])
            )
        else:
            dataset = read_dataset(path, reader)
            named.append((dataset.name, dataset.examples))
    drawn = sample_mixture([examples for _, examples in named], total, cap_per_dataset, seed)
    return [
        rl_record(example, fmt, dataset=name, descriptions=descriptions, compact=compact)
        for (name, _), examples in zip(named, drawn, strict=True)
        for example in examples
    ]

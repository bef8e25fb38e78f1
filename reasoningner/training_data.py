"""Training records for stages 2 and 3, built from examples with the shared prompts.

SFT records are conversations (user instruction, assistant `<think>…</think>` + answer) that TRL
tokenizes with the model's own chat template; RL records are the prompt alone plus the gold
columns the rewards read. Mixtures of datasets are sampled proportionally with a per-dataset cap,
as ReasoningNER's scripts do, and deterministically from a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reasoningner.configs import DataArguments, PromptArguments
from reasoningner.formats import get_format
from reasoningner.prompts import assistant_target, ner_instruction
from reasoningner.readers import read_dataset
from reasoningner.records import is_cot_file, read_records, record_example
from reasoningner.spans import Example


def sft_record(
    example: Example, prompt: PromptArguments, rationale: str | None = None, answer: str | None = None
) -> dict[str, Any]:
    """A conversation teaching `<think>rationale</think>answer`, or the answer alone when the contract
    says no reasoning. `answer` defaults to the gold answer; stage 1 records bring their own."""
    if prompt.reasoning and rationale is None:
        raise ValueError("the prompt asks for reasoning: a rationale is needed")
    if answer is None:
        answer = get_format(prompt.output_format).render(example)
    target = assistant_target(answer, rationale if prompt.reasoning else None)
    return {
        "messages": [
            {"role": "user", "content": ner_instruction(example.text, example.schema, prompt)},
            {"role": "assistant", "content": target},
        ]
    }


def rl_record(example: Example, prompt: PromptArguments, dataset: str = "") -> dict[str, Any]:
    """A GRPO prompt with the gold columns the rewards need."""
    return {
        "prompt": [{"role": "user", "content": ner_instruction(example.text, example.schema, prompt)}],
        "text": example.text,
        "entities": example.entity_dicts(),
        "labels": list(example.schema.labels),
        "output_format": prompt.output_format,
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


def _accepted_annotations(path: str, prompt: PromptArguments) -> list[dict[str, Any]]:
    """The accepted records of a stage 1 file, which must answer in the contract's format."""
    records = [record for record in read_records(path) if record["accepted"]]
    for record in records:
        if record["output_format"] != prompt.output_format:
            raise ValueError(
                f"{path}: annotations answer in {record['output_format']}, "
                f"the recipe asks for {prompt.output_format}"
            )
    return records


SFTExample = tuple[Example, str, "str | None"]  # gold example, answer to learn, rationale (None: direct)


def sft_examples(
    paths: Sequence[str], prompt: PromptArguments, data: DataArguments | None = None
) -> list[SFTExample]:
    """What SFT learns from stage 1 annotations (accepted ones) or from any NER data file.

    With `prompt.reasoning`, every file must be stage 1 output (its rationale becomes the `<think>`
    block); without, the answer alone is the target: the papers' direct-answer baseline.
    """
    data = data or DataArguments()
    fmt = get_format(prompt.output_format)
    examples: list[SFTExample] = []
    for path in paths:
        if is_cot_file(path):
            records = _accepted_annotations(path, prompt)[: data.limit]
            examples += [(record_example(r), r["answer"], r["rationale"]) for r in records]
        elif prompt.reasoning:
            raise ValueError(
                f"{path}: plain NER data has no rationales; "
                "run stage 1 (make cot) on it, or set reasoning: false"
            )
        else:
            examples += [
                (e, fmt.render(e), None) for e in read_dataset(path, data.reader).examples[: data.limit]
            ]
    if not examples:
        raise ValueError(f"no training examples in {list(paths)} (are any annotations accepted?)")
    return examples


def sft_conversations(
    paths: Sequence[str], prompt: PromptArguments, data: DataArguments | None = None
) -> list[dict[str, Any]]:
    """The `sft_record` conversations of `sft_examples`."""
    return [
        sft_record(e, prompt, rationale, answer) for e, answer, rationale in sft_examples(paths, prompt, data)
    ]


def trained_labels(label_sets: Iterable[Sequence[str]]) -> list[str]:
    """Every label of the training examples' label sets, in first-seen order: what the model knows."""
    return list(dict.fromkeys(label for labels in label_sets for label in labels))


def rl_prompts(
    paths: Sequence[str],
    prompt: PromptArguments,
    data: DataArguments | None = None,
    *,
    total: int | None = None,
    cap_per_dataset: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """GRPO prompts with gold columns, sampled proportionally from several datasets (`sample_mixture`)
    after the first `data.limit` examples of each file."""
    data = data or DataArguments()
    named: list[tuple[str, list[Example]]] = []
    for path in paths:
        if is_cot_file(path):
            records = read_records(path)[: data.limit]  # gold only: any answer format will do
            name = records[0]["dataset"] if records else Path(path).stem
            named.append((name, [record_example(r) for r in records]))
        else:
            dataset = read_dataset(path, data.reader)
            named.append((dataset.name, dataset.examples[: data.limit]))
    drawn = sample_mixture([examples for _, examples in named], total, cap_per_dataset, seed)
    return [
        rl_record(example, prompt, dataset=name)
        for (name, _), examples in zip(named, drawn, strict=True)
        for example in examples
    ]

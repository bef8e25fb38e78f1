"""Training records for stages 2 and 3, built from examples with the shared prompts.

SFT records are conversations (user instruction, assistant `<think>…</think>` + answer) that TRL
tokenizes with the model's own chat template; RL records are the prompt alone plus the gold
columns the rewards read. A lone surrogate in the data (a JSON "\\ud83d", half an emoji) is U+FFFD in
both, as the model is asked it (`generation.without_lone_surrogates`): Arrow and tokenizers take UTF-8 only.
Mixtures of datasets are sampled deterministically from a seed, with a per-dataset cap:
proportionally to their sizes, or as ReasoningNER's `sample_grpo.py` does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from reasoningner.configs import SAMPLERS, DataArguments, PromptArguments, PromptContract
from reasoningner.formats import get_format
from reasoningner.generation import without_lone_surrogates
from reasoningner.prompts import assistant_target, ner_instruction
from reasoningner.readers import sniff
from reasoningner.records import is_cot_file, read_records, record_example
from reasoningner.sources import file_source, is_source, load_source_sets
from reasoningner.spans import Example, Schema

logger = logging.getLogger(__name__)


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
    messages = [
        {"role": "user", "content": ner_instruction(example.text, example.schema, prompt)},
        {"role": "assistant", "content": target},
    ]
    return {"messages": without_lone_surrogates(messages)}


def rl_record(example: Example, prompt: PromptArguments, dataset: str = "") -> dict[str, Any]:
    """A GRPO prompt with the gold columns the rewards need."""
    return without_lone_surrogates(
        {
            "prompt": [{"role": "user", "content": ner_instruction(example.text, example.schema, prompt)}],
            "text": example.text,
            "entities": example.entity_dicts(),
            "labels": list(example.schema.labels),
            "output_format": prompt.output_format,
            "dataset": dataset,
        }
    )


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


def sample_reasoningner(
    datasets: Sequence[Sequence[Example]], total: int, cap: int | None, seed: int
) -> list[list[Example]]:
    """ReasoningNER's `sample_for_grpo`: each dataset's size capped at `cap` (its `max_count`), a share
    `int(total * capped / sum of capped)` (floored, so the sum may fall short of `total`) taken after a
    shuffle of the whole dataset, one seeded `random` stream over the datasets in order. The same
    examples in the same order give the paper's subset (its final shuffle aside: the trainer shuffles)."""
    rng = random.Random(seed)
    capped = [min(len(d), cap) if cap is not None else len(d) for d in datasets]
    whole = sum(capped)
    drawn = []
    for examples, size in zip(datasets, capped, strict=True):
        shuffled = list(examples)
        rng.shuffle(shuffled)
        drawn.append(shuffled[: int(total * size / whole)] if whole else [])
    return drawn


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


class SFTExample(NamedTuple):
    """What SFT learns from one sentence: its gold example, the answer and the rationale (None: an
    answer-only target) to learn."""

    example: Example
    answer: str
    rationale: str | None


def sft_examples(
    paths: Sequence[str],
    prompt: PromptArguments,
    data: DataArguments | None = None,
    *,
    corpora: list[str] | None = None,
) -> list[SFTExample]:
    """What SFT learns from stage 1 annotations (accepted ones) or from any NER data file.

    With `prompt.reasoning`, every file must be stage 1 output (its rationale becomes the `<think>`
    block) or a source with rationales (NER-CoT, whose teacher `cot` is the `<think>` block and whose
    gold, rendered in the contract's format, the answer); without, the answer alone is the target:
    the papers' direct-answer baseline. `corpora`, when given, is extended with the corpora the
    records say they come from (NER-CoT's `source`), which the stage records in its manifest.
    """
    data = data or DataArguments()
    fmt = get_format(prompt.output_format)
    examples: list[SFTExample] = []
    for path in paths:
        if is_source(path) or data.reader == "nercot":
            examples += _source_examples(path, prompt, data, [] if corpora is None else corpora)
        elif is_cot_file(path):
            records = _accepted_annotations(path, prompt)[: data.limit]
            examples += [SFTExample(record_example(r), r["answer"], r["rationale"]) for r in records]
        elif data.reader == "auto" and sniff(path) == "nercot":  # a NER-CoT file of one's own
            examples += _source_examples(path, prompt, data, [] if corpora is None else corpora)
        elif prompt.reasoning:
            raise ValueError(
                f"{path}: plain NER data has no rationales; "
                "run stage 1 (make cot) on it, or set reasoning: false"
            )
        else:
            examples += [SFTExample(e, fmt.render(e), None) for e in data.read(path).examples[: data.limit]]
    if not examples:
        raise ValueError(f"no training examples in {list(paths)} (are any annotations accepted?)")
    return examples


def _source_examples(
    path: str, prompt: PromptArguments, data: DataArguments, corpora: list[str]
) -> list[SFTExample]:
    """The examples of a named source (`sources`), each with its rationale when it has one; the
    corpora its records name go to `corpora`."""
    spec = path if is_source(path) else file_source(path, "nercot")
    fmt = get_format(prompt.output_format)
    found: list[SFTExample] = []
    unexplained = 0
    for dataset, rationales in load_source_sets(spec, on_error=data.on_error, limit=data.limit):
        corpora.extend(dataset.corpora)
        for example, rationale in zip(dataset.examples, rationales, strict=True):
            if prompt.reasoning and not (rationale and rationale.strip()):
                if data.on_error == "raise":
                    raise ValueError(
                        f"{path}: example {example.id} has no rationale (NER-CoT's cot); run stage 1 (make "
                        "cot) on it, set reasoning: false, or skip_bad: true to leave such rows out"
                    )
                unexplained += 1  # a target without its rationale would teach answering without one
                continue
            found.append(SFTExample(example, fmt.render(example), rationale if prompt.reasoning else None))
    if unexplained:
        logger.warning("%s: %d examples without a rationale left out (skip_bad)", path, unexplained)
    return found


def sft_conversations(
    paths: Sequence[str], prompt: PromptArguments, data: DataArguments | None = None
) -> list[dict[str, Any]]:
    """The `sft_record` conversations of `sft_examples`."""
    return [
        sft_record(e.example, prompt, rationale=e.rationale, answer=e.answer)
        for e in sft_examples(paths, prompt, data)
    ]


def rl_prompts(
    paths: Sequence[str],
    prompt: PromptArguments,
    data: DataArguments | None = None,
    *,
    total: int | None = None,
    cap_per_dataset: int | None = None,
    seed: int = 0,
    sampler: str = "proportional",
    corpora: list[str] | None = None,
    schemas: list[Schema] | None = None,
    trained: PromptContract | None = None,
) -> list[dict[str, Any]]:
    """GRPO prompts with gold columns, drawn from several datasets after the first `data.limit`
    examples of each: `proportional` (`sample_mixture`) or `reasoningner` (`sample_reasoningner`, the
    paper's, which needs `total`; `RLScriptArguments.sampler` in the stage). Each set
    of a named source (`sources`, e.g. an InstructUIE tree) is a dataset of its own. `corpora`, when
    given, is extended with the corpora the records name (as in `sft_examples`); `schemas` with the
    schema of each prompt (`PromptContract.trained`). With `trained`, the policy's contract, each
    prompt is asked as the policy learnt (`PromptContract.asked`: trained descriptions and label order)."""
    data = data or DataArguments()
    if sampler not in SAMPLERS or (sampler == "reasoningner" and total is None):
        raise ValueError(f"sampler {sampler!r}: choose one of {list(SAMPLERS)} (reasoningner needs total)")
    named: list[tuple[str, list[Example]]] = []
    for path in paths:
        if is_source(path):
            sets = [d for d, _ in load_source_sets(path, on_error=data.on_error, limit=data.limit)]
            named += [(d.name, d.examples) for d in sets]
            if corpora is not None:
                corpora.extend(c for d in sets for c in d.corpora)
        elif is_cot_file(path):
            records = read_records(path)[: data.limit]  # gold only: any answer format will do
            name = records[0]["dataset"] if records else Path(path).stem
            named.append((name, [record_example(r) for r in records]))
        else:
            dataset = data.read(path)
            named.append((dataset.name, dataset.examples[: data.limit]))
    groups = [examples for _, examples in named]
    if sampler == "reasoningner":
        drawn = sample_reasoningner(groups, total, cap_per_dataset, seed)  # type: ignore[arg-type]
    else:
        drawn = sample_mixture(groups, total, cap_per_dataset, seed)
    if trained is not None:
        drawn = [[_asked(example, trained) for example in examples] for examples in drawn]
    if schemas is not None:
        schemas.extend(example.schema for examples in drawn for example in examples)
    return [
        rl_record(example, prompt, dataset=name)
        for (name, _), examples in zip(named, drawn, strict=True)
        for example in examples
    ]


def _asked(example: Example, trained: PromptContract) -> Example:
    schema = trained.asked(example.schema)
    return example if schema is example.schema else Example(example.text, example.spans, schema, example.id)

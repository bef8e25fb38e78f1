"""Counting as the papers' own scripts count, so that their numbers can be reproduced on the same outputs:
`reasoningner score --compat` over a predictions file, and `compat` of an evaluation recipe (results.md
then says so).

`llms4ner` makes the exact-span scores count as LLMs4NER's evaluation scripts do where they differ
from ours: the whole output (LLaMA-Factory's `predict`) is read (no `<think>` or code fence is
removed; JSON must load as it is, nothing is salvaged); duplicates are a multiset; XML tags whose
name is not a label are text, and a closer ends the tags opened inside it; a sentence whose
rewritten text differs from the input is matched by (label, text) on both sides; JSON entries are
matched as the tuples of their fields ((text, label) grouped, + occurrence_index, + start and end).
Gold comes from a predictions line's `label` (LLaMA-Factory's gold answer) when there is one, else
from the gold file rendered in the format. Their scripts keep whitespace inside a tag in the entity;
ours trim it.
Text-mode scores and the error analysis stay ours.

`reasoningie` makes the text-mode scores count as ReasoningIE's evaluation does (ReasoningNER's
Table 1), for grouped JSON answers: the answer read as its code reads it (`<think>` blocks dropped, the
inside of <answer> or of a ```json fence taken, one never closed being no answer where its code raises,
`rewards.reasoningie_answer`), and each sentence's sets
of (text, label) compared with texts lower-cased and stripped of punctuation and articles, labels
lower-cased (`rewards.reasoningie_key`); gold entities of a non-entity label (misc, other, na:
`sources.protocol_label`) are not counted, as its reader drops them, while a predicted one is a false
positive, as its compute_f1 counts every entity a completion names.
Exact scores and the error analysis stay ours.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from reasoningner.formats import FORMATS
from reasoningner.metrics import Counts, multiset_counts
from reasoningner.rewards import reasoningie_answer, reasoningie_entities, reasoningie_key
from reasoningner.sources import protocol_label
from reasoningner.spans import Example

COMPAT = ("none", "llms4ner", "reasoningie")
Compat = Literal["none", "llms4ner", "reasoningie"]
# The matching mode whose scores each compatibility counts; the other mode stays ours.
COUNTED_MODE = {"llms4ner": "exact", "reasoningie": "text"}


def check_compat(compat: str, output_formats: set[str], reasoning: bool = False) -> None:
    """A ValueError for a compatibility that cannot count these answers: ReasoningIE's reads grouped JSON,
    LLMs4NER's the whole output (a rationale before the answer would be read as part of it)."""
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {COMPAT}, not {compat!r}")
    if compat == "reasoningie" and (others := output_formats - {"grouped_json"}):
        raise ValueError(
            f"compat reasoningie reads grouped_json answers, as the paper's are, not {sorted(others)}: "
            "score them without it"
        )
    if compat == "llms4ner" and reasoning:
        raise ValueError(
            "compat llms4ner reads the whole output, as LLMs4NER's scripts read their answer-only models': "
            "a model that reasons first would be scored on its rationale; use compat reasoningie or none"
        )


def compat_counts(
    compat: str,
    mode: str,
    output: str,
    gold: Example,
    output_format: str,
    gold_answer: str | None = None,
    source_labels: Mapping[str, str] | None = None,
) -> dict[str, Counts] | None:
    """Per-label counts of one output in `mode` as `compat` counts them, or None where the mode's are ours.
    `source_labels` names the dataset's label of each label asked (a recipe's rename, a probe's)."""
    if COUNTED_MODE.get(compat) != mode:
        return None
    if compat == "llms4ner":
        return llms4ner_counts(output, gold, output_format, gold_answer)
    return reasoningie_counts(output, gold, source_labels)


def llms4ner_keys(
    answer: str, output_format: str, labels: tuple[str, ...]
) -> tuple[list[tuple[Any, ...]], str]:
    """(keys, clean text) of one answer as LLMs4NER's scripts read it (module docstring); the clean
    text is "" for JSON formats. Inline keys are (label, start, end); JSON keys as their fields."""
    if output_format in ("xml", "bracketed"):
        answer = answer.strip() if output_format == "bracketed" else answer  # as their two scripts do
        markup = FORMATS[output_format].markup(answer, labels, llms4ner=True)  # type: ignore[attr-defined]
        return [(label, start, end) for start, end, label in markup.spans], markup.clean
    try:
        value = json.loads(answer)
        if output_format == "grouped_json":
            if not isinstance(value, dict):
                return [], ""
            return [
                (str(mention), str(label))
                for label, mentions in value.items()
                if isinstance(mentions, list)
                for mention in mentions
            ], ""
        if not isinstance(value, list):
            return [], ""
        fields = ("occurrence_index",) if output_format == "occurrence_json" else ("start", "end")
        return [
            (str(entry["text"]), str(entry["label"]), *(int(entry[name]) for name in fields))
            for entry in value
            if isinstance(entry, dict) and all(entry.get(k) is not None for k in ("text", "label", *fields))
        ], ""
    except (ValueError, TypeError, OverflowError, RecursionError):  # Infinity; [[[... past the stack
        return [], ""


def _llms4ner_gold(gold_answer: str | None, gold: Example, output_format: str) -> str:
    """The gold answer LLMs4NER's scripts compare with: the predictions line's own (`label` of
    LLaMA-Factory's file), else the gold rendered in the format (grouped as their files write it,
    without the `entities` wrapper)."""
    if gold_answer is not None:
        return gold_answer
    rendered = FORMATS[output_format].render(gold)
    if output_format == "grouped_json":
        return json.dumps(json.loads(rendered)["entities"])
    return rendered


def llms4ner_counts(
    output: str, gold: Example, output_format: str, gold_answer: str | None = None
) -> dict[str, Counts]:
    """Per-label counts of one output as LLMs4NER's `compute_f1` makes them."""
    labels = gold.schema.labels
    predicted, predicted_clean = llms4ner_keys(output, output_format, labels)
    expected, gold_clean = llms4ner_keys(
        _llms4ner_gold(gold_answer, gold, output_format), output_format, labels
    )
    if output_format not in ("xml", "bracketed"):
        return multiset_counts(expected, predicted, label_at=1)
    if predicted_clean != gold_clean:  # their "matching" mode: (label, text) on both sides
        predicted = [(label, predicted_clean[start:end]) for label, start, end in predicted]
        expected = [(label, gold_clean[start:end]) for label, start, end in expected]
    return multiset_counts(expected, predicted, label_at=0)


def reasoningie_counts(
    output: str, gold: Example, source_labels: Mapping[str, str] | None = None
) -> dict[str, Counts]:
    """Per-label counts of one output as ReasoningIE's evaluation makes them (module docstring): its keys
    are sets, for which the multiset count is the set count. Counts are keyed by the schema's labels
    (its keys lower-case them), a predicted label outside the schema as it lower-cased it."""
    found = reasoningie_entities(reasoningie_answer(output)) or set()
    # Its reader drops gold entities of a non-entity label (misc, other, na...), by the dataset's label
    # (under a probe, `source_labels`); a predicted one counts against precision, as its compute_f1
    # counts every entity a completion names (rner/metric.py).
    source = source_labels or {}
    expected = {
        reasoningie_key(span.text(gold.text), span.label)
        for span in gold.spans
        if protocol_label(source.get(span.label, span.label)) is not None
    }
    counts = multiset_counts(expected, found, label_at=1)
    named = {reasoningie_key("", label)[1]: label for label in gold.schema.labels}
    return {named.get(label, label): count for label, count in counts.items()}

"""Entity-level micro precision, recall and F1 in the two matching modes NER papers use.

Both modes compare, per example, a set of gold entity keys with a set of predicted entity keys;
a key in both sets is a true positive, a predicted key not in gold a false positive, a gold key
not predicted a false negative. Counts are summed over the examples of a dataset (micro average).

`exact` (LLMs4NER, CoNLL/seqeval style): the key is the span `(start, end, label)`. A predicted
entity is correct only at the gold offsets with the gold label; a right mention at the wrong
occurrence of a repeated word, or with one character more or less, is wrong. Predictions that
could not be grounded in the text have no offsets and are false positives (one per distinct
`(normalize_mention(text), label)`), so hallucinated entities cost precision in both modes.

`text` (ReasoningNER style): the key is `(normalize_mention(covered text), label)`; grounded and
ungrounded predictions are pooled. Occurrences are not distinguished: two gold mentions
"Paris"/location in one sentence are one key, matched by predicting either of them (or the string
"paris" without offsets). `normalize_mention` folds case and whitespace, so "U.S. ," matches "U.S.,".

Per-label counts: a false positive counts against its predicted label, a false negative against
its gold label (a right span with the wrong label is one of each). Labels outside the schema are
scored like any other, so predictions with invented labels are false positives of the micro score.

LLMs4NER's scripts count otherwise (`multiset_counts`, used by `compat` llms4ner): the keys
of a sentence are a multiset, so an entity stated twice is two predictions, one of them false if
gold has it once; and a key is whatever tuple their reader makes of the format (offsets when the
rewritten sentence equals the input, else the text).

Undefined ratios are 0.0: precision when nothing was predicted, recall when there is no gold
entity, F1 when precision + recall is 0. This matches seqeval's `zero_division=0`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from reasoningner.spans import Example, Span, check_span, normalize_mention

MatchMode = Literal["exact", "text"]
MATCH_MODES: tuple[str, ...] = get_args(MatchMode)


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, with the ratios derived from them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        """tp / predicted; 0.0 when nothing was predicted."""
        predicted = self.tp + self.fp
        return self.tp / predicted if predicted else 0.0

    @property
    def recall(self) -> float:
        """tp / gold; 0.0 when there is no gold entity."""
        gold = self.tp + self.fn
        return self.tp / gold if gold else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0.0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, float]:
        """Counts and ratios (fractions in [0, 1]), JSON-able."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def text_keys(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """`(text, label)` pairs keyed as `text` matching keys them: `(normalize_mention(text), label)`.

    The one definition of a text-level key: metrics, the F1 and consistency rewards, rationale
    consistency and the error analysis all compare these.
    """
    return {(normalize_mention(text), label) for text, label in pairs}


def _match_keys(
    gold: Example, predicted: Sequence[Span], ungrounded: Sequence[tuple[str, str]], mode: MatchMode
) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The gold and predicted entity keys of one example in `mode` (see `match_counts`)."""
    if mode not in MATCH_MODES:
        raise ValueError(f"unknown match mode {mode!r}; expected one of {list(MATCH_MODES)}")
    for span in predicted:
        check_span(span, gold.text)
    ungrounded_keys = text_keys(ungrounded)
    if mode == "exact":
        # 3-tuples for spans and 2-tuples for ungrounded mentions never compare equal.
        gold_keys: set[tuple[Any, ...]] = {(s.start, s.end, s.label) for s in gold.spans}
        predicted_keys = {(s.start, s.end, s.label) for s in predicted} | ungrounded_keys
    else:
        text = gold.text
        gold_keys = text_keys((s.text(text), s.label) for s in gold.spans)
        predicted_keys = text_keys((s.text(text), s.label) for s in predicted) | ungrounded_keys
    return gold_keys, predicted_keys


def match_counts(
    gold: Example,
    predicted: Sequence[Span],
    ungrounded: Sequence[tuple[str, str]] = (),
    mode: MatchMode = "exact",
) -> dict[str, Counts]:
    """Per-label counts of one example's predictions against its gold spans.

    `predicted` are spans of `gold.text` (labels may lie outside the schema); `ungrounded` are
    `(mention text, label)` pairs a model produced but that were not found in the text. Duplicates
    are counted once (both sides are sets). Only labels with a non-zero count appear, in sorted
    order, so the micro counts are the sum of the values. Raises `SpanError` for a predicted span
    that is not a valid span of the text (a grounding bug, not a model error) and `ValueError` for
    an unknown mode.
    """
    gold_keys, predicted_keys = _match_keys(gold, predicted, ungrounded, mode)
    tp = Counter(key[-1] for key in gold_keys & predicted_keys)
    fp = Counter(key[-1] for key in predicted_keys - gold_keys)
    fn = Counter(key[-1] for key in gold_keys - predicted_keys)
    return {
        label: Counts(tp[label], fp[label], fn[label]) for label in sorted(tp.keys() | fp.keys() | fn.keys())
    }


def match_totals(
    gold: Example,
    predicted: Sequence[Span],
    ungrounded: Sequence[tuple[str, str]] = (),
    mode: MatchMode = "exact",
) -> Counts:
    """The micro counts of one example: `match_counts` summed over labels, without the split."""
    return key_counts(*_match_keys(gold, predicted, ungrounded, mode))


def key_counts(expected: AbstractSet[Any], found: AbstractSet[Any]) -> Counts:
    """The counts of one set of found keys against the expected ones."""
    tp = len(expected & found)
    return Counts(tp, len(found) - tp, len(expected) - tp)


def f1_difference(
    before: Sequence[Counts], after: Sequence[Counts], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Micro F1 of `after` minus that of `before` (two evaluations of the same sentences, one `Counts`
    each, in the same order), and the 95% interval of that difference over the sentences drawn again
    with replacement (a paired bootstrap): how large a gain between two checkpoints this evaluation set
    can tell from the luck of which sentences it holds. Raises `ValueError` for unpaired input."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need the same sentences scored twice, got {len(before)} and {len(after)}")
    columns = [[c.tp for c in before], [c.fp for c in before], [c.fn for c in before]]
    columns += [[c.tp for c in after], [c.fp for c in after], [c.fn for c in after]]

    def difference(picks: Sequence[int]) -> float:
        tp, fp, fn, tp2, fp2, fn2 = (sum(column[i] for i in picks) for column in columns)
        return Counts(tp2, fp2, fn2).f1 - Counts(tp, fp, fn).f1

    draw = random.Random(seed)
    every = range(len(before))
    spread = sorted(difference(draw.choices(every, k=len(before))) for _ in range(resamples))
    return difference(every), spread[int(0.025 * resamples)], spread[int(0.975 * resamples) - 1]


def multiset_counts(
    gold: Iterable[tuple[Any, ...]], predicted: Iterable[tuple[Any, ...]], label_at: int
) -> dict[str, Counts]:
    """Per-label counts of one sentence with duplicates counted (LLMs4NER's `compute_f1`): a key
    predicted k times and in gold g times is min(k, g) true and k - min(k, g) false positives.
    `label_at` is where the label sits in a key; labels with a non-zero count, sorted."""
    gold_bag, predicted_bag = Counter(gold), Counter(predicted)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for key, count in predicted_bag.items():
        tp[key[label_at]] += min(count, gold_bag[key])
        fp[key[label_at]] += max(0, count - gold_bag[key])
    for key, count in gold_bag.items():
        fn[key[label_at]] += max(0, count - predicted_bag[key])
    labels = {label for counter in (tp, fp, fn) for label, n in counter.items() if n}
    return {label: Counts(tp[label], fp[label], fn[label]) for label in sorted(labels)}


def agreement(expected: AbstractSet[Any], found: AbstractSet[Any]) -> float:
    """F1 between two sets of keys, 2|E & F| / (|E| + |F|); both empty is 1.0 (`sample_f1`)."""
    return sample_f1(key_counts(expected, found))


def sample_f1(counts: Counts) -> float:
    """F1 of one sample, 2tp / (2tp + fp + fn); nothing expected and nothing found is 1.0.

    The per-sample score of stage 1 validation, the F1 reward and rationale consistency: unlike a
    corpus-level score, a sentence with nothing to find answered with nothing scores 1.0, as
    nothing was missed and nothing invented.
    """
    compared = 2 * counts.tp + counts.fp + counts.fn
    return 2 * counts.tp / compared if compared else 1.0


def example_f1(
    gold: Example,
    predicted: Sequence[Span],
    ungrounded: Sequence[tuple[str, str]] = (),
    mode: MatchMode = "exact",
) -> float:
    """F1 of one example's prediction (`agreement` of its gold and predicted keys in `mode`)."""
    return agreement(*_match_keys(gold, predicted, ungrounded, mode))


@dataclass(frozen=True)
class DatasetScores:
    """Micro counts of one dataset and their split by label (labels that occurred, sorted)."""

    examples: int
    micro: Counts
    per_label: Mapping[str, Counts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "micro": self.micro.to_dict(),
            "per_label": {label: counts.to_dict() for label, counts in self.per_label.items()},
        }


@dataclass(frozen=True)
class Average:
    """Unweighted mean over datasets of their micro P, R and F1 (the papers' "Avg" column).

    `f1` is the mean of the F1s, not the harmonic mean of `precision` and `recall`.
    """

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class Report:
    """Scores of every dataset a `Scorer` saw, in first-seen order, and their macro average."""

    mode: MatchMode
    datasets: Mapping[str, DatasetScores]
    average: Average

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ratios are fractions in [0, 1] so no precision is lost (markdown shows %)."""
        return {
            "mode": self.mode,
            "datasets": {name: scores.to_dict() for name, scores in self.datasets.items()},
            "average": self.average.to_dict(),
        }

    def to_markdown(self) -> str:
        """A table with one row per dataset and an Avg row, P/R/F1 in percent to two decimals."""
        rows = ["| Dataset | P | R | F1 |", "| --- | ---: | ---: | ---: |"]
        for name, scores in self.datasets.items():
            rows.append(_markdown_row(name, scores.micro.precision, scores.micro.recall, scores.micro.f1))
        rows.append(_markdown_row("Avg", self.average.precision, self.average.recall, self.average.f1))
        return "\n".join(rows) + "\n"


def _markdown_row(name: str, precision: float, recall: float, f1: float) -> str:
    return f"| {name} | {100 * precision:.2f} | {100 * recall:.2f} | {100 * f1:.2f} |"


@dataclass
class _Tally:
    examples: int = 0
    per_label: dict[str, Counts] = field(default_factory=dict)


class Scorer:
    """Accumulates per-label counts per dataset; reports micro P/R/F1 per dataset and per label
    within a dataset, and the macro average of the per-dataset scores over datasets.

    Datasets are kept apart because papers average per-dataset F1 (each benchmark weighs the
    same); pooling all examples would let the largest dataset dominate.
    """

    def __init__(self, mode: MatchMode = "exact") -> None:
        if mode not in MATCH_MODES:
            raise ValueError(f"unknown match mode {mode!r}; expected one of {list(MATCH_MODES)}")
        self.mode: MatchMode = mode
        self._tallies: dict[str, _Tally] = {}

    def add(
        self,
        gold: Example,
        predicted: Sequence[Span],
        ungrounded: Sequence[tuple[str, str]] = (),
        dataset: str = "default",
    ) -> dict[str, Counts]:
        """Score one example into `dataset`; returns its per-label counts (see `match_counts`). Every
        label of its schema gets a row in the report, zeros included (LLMs4NER's tables list each)."""
        counts = match_counts(gold, predicted, ungrounded, self.mode)
        self.add_counts(counts, dataset)
        for label in gold.schema.labels:
            self._tallies[dataset].per_label.setdefault(label, Counts())
        return counts

    def add_counts(self, counts: Mapping[str, Counts], dataset: str = "default") -> None:
        """Tally one example's per-label counts made by another rule (`multiset_counts`)."""
        tally = self._tallies.setdefault(dataset, _Tally())
        tally.examples += 1
        for label, label_counts in counts.items():
            tally.per_label[label] = tally.per_label.get(label, Counts()) + label_counts

    def report(self) -> Report:
        """The scores so far; raises `ValueError` if no example was added (an empty evaluation
        is a bug upstream, not a score of 0)."""
        if not self._tallies:
            raise ValueError("no examples were added to the scorer")
        datasets = {
            name: DatasetScores(
                examples=tally.examples,
                micro=sum(tally.per_label.values(), Counts()),
                per_label={label: tally.per_label[label] for label in sorted(tally.per_label)},
            )
            for name, tally in self._tallies.items()
        }
        n = len(datasets)
        average = Average(
            precision=sum(s.micro.precision for s in datasets.values()) / n,
            recall=sum(s.micro.recall for s in datasets.values()) / n,
            f1=sum(s.micro.f1 for s in datasets.values()) / n,
        )
        return Report(self.mode, datasets, average)

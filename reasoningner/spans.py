"""The data model at the centre of reasoningner: texts, labelled character-offset spans, schemas.

Everything else (BIO tags, the five output formats, prompts, rewards, metrics) is derived from
these objects, the way spaCy derives everything from a `Span` over an immutable text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple, Protocol, TypeVar


class SpanError(ValueError):
    """A span that does not fit its text or schema; the message says which and why."""


class Span(NamedTuple):
    """A labelled half-open character range `[start, end)` of a text.

    Spans may nest or overlap (GENIA, ACE2005); ordering is by (start, end, label), so of two spans
    starting together the shorter (inner) one sorts first: `sort_spans` gives rendering order (outer
    first). A named tuple: immutable, hashable and ordered like a dataclass, and cheap to build (parsers
    build millions in GRPO).
    """

    start: int
    end: int
    label: str

    def text(self, text: str) -> str:
        """The covered text of `text`."""
        return text[self.start : self.end]


class Labelled(Protocol):
    """Anything placed on a text like a span: a `Span`, or a prediction's entity with its score."""

    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def label(self) -> str: ...


LabelledT = TypeVar("LabelledT", bound=Labelled)


def sort_spans(spans: Iterable[LabelledT]) -> list[LabelledT]:
    """Reading order for rendering: by start, longer (outer) spans first, then label."""
    return sorted(spans, key=lambda s: (s.start, -s.end, s.label))


@dataclass(frozen=True)
class Schema:
    """The label set of a task, with optional natural-language descriptions for prompts.

    Labels keep their given order (prompts list them in that order); descriptions are optional
    per label and never change matching.
    """

    labels: tuple[str, ...]
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        if not labels:
            raise SpanError("a schema needs at least one label")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise SpanError(f"schema labels are repeated: {duplicates}")
        for label in labels:
            if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
                raise SpanError(
                    f"label {label!r} is not usable: labels are words joined by single spaces, without "
                    'any of []|<>{}"'
                )
        unknown = sorted(set(self.descriptions) - set(labels))
        if unknown:
            raise SpanError(f"descriptions given for labels outside the schema: {unknown}")
        object.__setattr__(self, "labels", labels)
        # One line each: a prompt lists a label per line, and a line break would add labels never asked.
        descriptions = {
            label: " ".join(text.split()) if isinstance(text, str) else text
            for label, text in self.descriptions.items()
        }
        object.__setattr__(self, "descriptions", MappingProxyType(descriptions))

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __hash__(self) -> int:
        return hash((self.labels, tuple(sorted(self.descriptions.items()))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return self.labels == other.labels and dict(self.descriptions) == dict(other.descriptions)

    def describe(self, label: str) -> str | None:
        return self.descriptions.get(label)

    def ordered_as(self, order: Sequence[str]) -> Schema:
        """This schema with its labels in `order` when those are exactly its labels (a model's training
        order: it answers best asked as it was trained), else as it is."""
        if list(order) == list(self.labels) or set(order) != set(self.labels):
            return self
        return Schema(tuple(order), self.descriptions)

    @classmethod
    def union(cls, schemas: Iterable[Schema]) -> Schema:
        """All labels of `schemas` in first-seen order; the first description of a label wins."""
        labels: dict[str, None] = {}
        descriptions: dict[str, str] = {}
        for schema in schemas:
            for label in schema.labels:
                labels.setdefault(label, None)
                if label in schema.descriptions:
                    descriptions.setdefault(label, schema.descriptions[label])
        return cls(tuple(labels), descriptions)


# Words joined by single spaces ("programming language", as the paper's data names its types), without
# the characters that the inline and JSON formats use as markup: such a label could not be rendered
# unambiguously.
_LABEL_WORD = r"[^\s\[\]|<>{}\"]+"
LABEL_PATTERN = re.compile(rf"{_LABEL_WORD}(?: {_LABEL_WORD})*")


@dataclass(frozen=True)
class Example:
    """One sentence (or passage) with its gold spans and the schema they are drawn from.

    Construction validates every span: offsets in range, non-empty, no leading or trailing
    whitespace inside the span, label in the schema, no exact duplicate.
    """

    text: str
    spans: tuple[Span, ...]
    schema: Schema
    id: str = ""

    def __post_init__(self) -> None:
        spans = tuple(sort_spans(self.spans))
        seen: set[Span] = set()
        for span in spans:
            check_span(span, self.text, self.schema)
            if span in seen:
                raise SpanError(f"duplicate span {span} in example {self.id or self.text[:40]!r}")
            seen.add(span)
        object.__setattr__(self, "spans", spans)

    def span_texts(self) -> list[tuple[str, str]]:
        """(covered text, label) for every span, in reading order."""
        return [(span.text(self.text), span.label) for span in self.spans]

    def entity_dicts(self) -> list[dict[str, int | str]]:
        """Spans as plain dicts with their text: the JSON (and Arrow) form used on disk."""
        return [
            {"start": s.start, "end": s.end, "label": s.label, "text": s.text(self.text)} for s in self.spans
        ]

    @property
    def is_nested(self) -> bool:
        return nesting_depth(self.spans) > 1


def spans_from_dicts(entities: Iterable[Mapping[str, object]]) -> tuple[Span, ...]:
    """The inverse of `Example.entity_dicts` (the text, if present, is checked by `Example`)."""
    return tuple(Span(int(e["start"]), int(e["end"]), str(e["label"])) for e in entities)


def check_span(span: Span, text: str, schema: Schema | None = None, expected_text: str | None = None) -> None:
    """Raise `SpanError` unless `span` is a valid entity of `text` (and of `schema` if given).

    `expected_text`, when a source states the entity text next to its offsets, must equal the
    covered text: a mismatch means the offsets are wrong, and silently trusting them would corrupt
    training data.
    """
    if not (0 <= span.start < span.end <= len(text)):
        raise SpanError(f"span {span.start}:{span.end} is out of range for a text of length {len(text)}")
    covered = text[span.start : span.end]
    if covered != covered.strip():
        raise SpanError(f"span {span.start}:{span.end} ({covered!r}) starts or ends with whitespace")
    if expected_text is not None and covered != expected_text:
        raise SpanError(f"span {span.start}:{span.end} covers {covered!r}, not the stated {expected_text!r}")
    if schema is not None and span.label not in schema:
        raise SpanError(
            f"label {span.label!r} of span {span.start}:{span.end} is not in the schema {list(schema.labels)}"
        )


def nesting_depth(spans: Sequence[Span]) -> int:
    """The largest number of spans covering one character (0 without spans, 1 for flat NER)."""
    events: list[tuple[int, int]] = []
    for span in spans:
        events.append((span.start, 1))
        events.append((span.end, -1))
    depth = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        depth += delta
        best = max(best, depth)
    return best


def is_crossing(a: Span, b: Span) -> bool:
    """True when two spans overlap without one containing the other (inline markup cannot say it)."""
    return a.start < b.start < a.end < b.end or b.start < a.start < b.end < a.end


def occurrences(text: str, needle: str, *, ignore_case: bool = False) -> list[int]:
    """Start offsets of `needle` in `text` at word boundaries, in order, overlaps allowed.

    A boundary occurrence is one not glued to a word character on either side where the needle
    itself begins or ends with one: "an" is not found inside "Germany". When the needle only occurs
    inside words, those occurrences are returned instead, so that an entity written as a word
    piece is still found. `ignore_case` matches character by character in `text` itself (not in
    `text.lower()`, which may be longer: "İ" lowers to two characters), so each match is `needle`'s length.
    """
    if not needle:
        return []
    if ignore_case:
        found = [m.start() for m in re.finditer(f"(?={re.escape(needle)})", text, re.IGNORECASE)]
    else:
        found = []
        start = text.find(needle)
        while start != -1:
            found.append(start)
            start = text.find(needle, start + 1)
    if len(found) < 2:  # one occurrence is returned bounded or not
        return found
    # Only a needle edge that is a word character can be glued to a neighbour.
    check_left, check_right = is_word_char(needle[0]), is_word_char(needle[-1])
    length, size = len(needle), len(text)
    bounded = [
        s
        for s in found
        if not (check_left and s > 0 and is_word_char(text[s - 1]))
        and not (check_right and s + length < size and is_word_char(text[s + length]))
    ]
    return bounded or found


class Placed(NamedTuple):
    """Where `place_mentions` put one mention; `nested`: no occurrence was free, so it lies inside (or
    across) a span placed before it."""

    span: Span
    nested: bool


def place_mentions(
    mentions: Sequence[tuple[str, str]],
    find: Callable[[str], Sequence[tuple[int, int]]],
    placed: Sequence[Span] = (),
) -> list[Placed | None]:
    """Where each `(mention, label)` stated without a position is, given `find(mention)`, its
    occurrences in the text in order; None for one with no occurrence left for its label.

    The longer mentions first (as found in the text; listing order among equals), each at its first
    occurrence that no span placed before overlaps (`placed` first): in "Paris Hilton visited Paris",
    "Paris" listed beside "Paris Hilton" is the second; a mention listed twice takes two occurrences.
    One found only inside others is placed there (nested, as GENIA's "IL-2" in "IL-2 gene"). The gold
    readers of positionless data (`sources`) and the grouped_json parser share it, so that a gold
    answer parses back to its gold. Linear in the occurrences: an occurrence once covered stays so.
    """
    found = [find(mention) for mention, _ in mentions]
    covered = {position for span in placed for position in range(span.start, span.end)}
    taken = set(placed)
    next_free: dict[str, int] = {}  # per text: its occurrences before this one are covered
    next_unused: dict[tuple[str, str], int] = {}  # per text and label: taken before this one
    result: list[Placed | None] = [None] * len(mentions)
    order = sorted(range(len(mentions)), key=lambda i: -(found[i][0][1] - found[i][0][0] if found[i] else 0))
    for index in order:  # stable: listing order among equals
        (mention, label), occurrences_ = mentions[index], found[index]
        at = next_free.get(mention, 0)
        while at < len(occurrences_) and not covered.isdisjoint(range(*occurrences_[at])):
            at += 1
        next_free[mention] = at
        nested = at == len(occurrences_)
        if nested:  # no free occurrence: the first this label has not taken, inside another
            at = next_unused.get((mention, label), 0)
            while at < len(occurrences_) and Span(*occurrences_[at], label) in taken:
                at += 1
            next_unused[(mention, label)] = at
            if at == len(occurrences_):
                continue
        span = Span(*occurrences_[at], label)
        taken.add(span)
        covered.update(range(span.start, span.end))
        result[index] = Placed(span, nested)
    return result


def is_word_char(char: str) -> bool:
    """A character of a word: what `\\w` matches in a str pattern (alphanumerics and `_`) and combining
    marks, which belong to the letter before them (`José` written with U+0301 is one word, not `Jos`)."""
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


@lru_cache(maxsize=65_536)  # one memo for every user: mentions recur across completions, sentences too
def normalize_mention(text: str) -> str:
    """The key text-level matching uses: case-folded, whitespace collapsed, whitespace next to
    punctuation removed, so that "U.S. ," and "U.S.," or "( IL-2 )" and "(IL-2)" match."""
    collapsed = " ".join(text.split()).casefold()
    if collapsed.replace(" ", "").isalnum():  # no punctuation, so no space next to it (the usual case)
        return collapsed
    # A space stays between word characters only (`is_word_char`: a combining mark is one, not punctuation).
    words = collapsed.split(" ")
    kept = [words[0]]
    for word in words[1:]:
        if is_word_char(kept[-1][-1]) and is_word_char(word[0]):
            kept.append(" ")
        kept.append(word)
    return "".join(kept)

"""The five answer formats of "Assessment of Generative NER in the Era of LLMs" (LLMs4NER).

Each format is a render/parse pair behind `OutputFormat`: `render` writes the gold answer a model
is trained on, `parse` reads whatever a model emitted (a `<think>` rationale first or not, code
fences, truncation, invalid JSON...) back into grounded character spans of the sentence, and
never raises. What went wrong is reported as `Problem`s, which the format-validity reward uses;
the spans it could still recover are kept, so metrics see a partly broken answer as partly right.

Formats (field names and markup as in the LLMs4NER release, except the `entities` wrapper)

The inline grammar (`Markup`, read by `BracketedFormat.markup` and `XmlFormat.markup`) is the one
the gold readers use too (`readers.read_alpaca`), so a gold output and a model output mean the same:

- ``bracketed``: the sentence rewritten with each entity as ``[entity text | LABEL]``; nesting
  allowed: ``[[IL-2 | protein] gene | DNA]``. Every ``[`` may open an entity; a closer
  ``| LABEL]`` (whitespace around ``|`` and before ``]`` optional) ends the innermost open one; a
  bare ``]`` pairs with the innermost open ``[`` as literal text. Unpaired ``[`` and pipes are
  plain text; a closer with no open ``[`` is an ``unbalanced_tag``.
- ``xml``: the sentence with each entity as ``<LABEL>entity text</LABEL>``; nesting allowed. A
  tag is ``<NAME>`` or ``</NAME>`` where NAME is a schema label, identifier-like (a letter or
  ``_`` then letters, digits, ``_ . -``) or a schema label of several words in another case, so
  ``P < 0.01``, ``<0.05>`` and ``<a b>`` stay text; there is no escaping. A closing tag closes the
  innermost open tag of its name, and tags opened inside it stay open: closers may come in any order
  (GENIA's ``<protein><RNA>Id2</protein></RNA>`` is two entities). A closer with no open tag of its
  name, and a tag never closed, are ``unbalanced_tag``.
- Both: labels follow `spans.LABEL_PATTERN`; an entity is its marked text without the whitespace
  at its edges (``<PER> Ann </PER>`` marks "Ann"), and one of only whitespace is a ``bad_entry``.
- ``grouped_json`` (ReasoningNER's answer): ``{"entities": {"LABEL": ["text", ...], ...}}``;
  labels without entities are left out when rendering (``[]`` is accepted). A text listed k times
  is placed at k of its occurrences (`spans.occurrences`, word-boundary aware), the longer texts
  first, each at the first occurrence outside the mentions placed before it where there is one
  (`spans.place_mentions`); texts are listed in reading order.
- ``occurrence_json``: ``[{"text": ..., "label": ..., "occurrence_index": k}, ...]`` where k is
  the 1-based index of the mention among `occurrences(sentence, text)`; ``"occurrence"`` is
  accepted as the key too.
- ``offset_json``: ``[{"text": ..., "label": ..., "start": s, "end": e}, ...]`` with half-open
  character offsets of the sentence. The offsets are what the answer states: when
  ``sentence[s:e]`` is not the text, the span is ``s:e`` (``offset_mismatch``), so exact matching
  counts it wrong; offsets that are no span of the sentence leave only the text (kept as
  ungrounded); an entry without integer offsets (``bad_entry``) is grounded by its text.
  ``OffsetJsonFormat(reground=True)`` (``get_format(..., reground_offsets=True)``) is the lenient
  reading: the text wins, grounded at its occurrence nearest to ``s``.

Grounding. A mention given as text is looked up exactly (`occurrences`); if absent, a lenient
search ignoring case and whitespace next to punctuation ("U.S.," finds "U.S. ,") is tried; if
that fails too, the mention is ``ungrounded``. Inline answers whose sentence was altered by the
model are aligned to the input by a word-level diff (`difflib`); a mention whose aligned position
does not hold its text is grounded at the occurrence nearest to where the alignment puts it.

Labels outside the schema are kept in the spans (metrics count them wrong) and reported once per
label as ``unknown_label``. Repeated identical spans are reported as ``duplicate`` and kept once.

Problem kinds (stable identifiers)

================  ======================================================================
kind              meaning
================  ======================================================================
no_answer         nothing after the rationale (or an empty output)
unclosed_think    ``<think>`` without ``</think>``: the output was cut inside the
                  rationale, so there is no answer (``no_answer`` is not added)
extra_text        text around the answer: before ``<think>``, outside a code fence, or
                  around the JSON value
code_fence        the answer is wrapped in a Markdown code fence. It costs format credit:
                  gold answers never have one, and a trained model should not learn to
                  add tokens the parser has to strip
truncated         the answer stops early: JSON runs off the end with brackets open, or
                  the inline sentence is a prefix of the input; complete parts are kept
invalid_json      not valid JSON; a Python literal (single quotes, trailing commas) is
                  accepted, otherwise the entries before the error are kept
wrong_shape       valid JSON of the wrong shape (a list where an object is expected,
                  no ``entities`` wrapper, ...); what fits is still used
bad_entry         one entry is unusable or mistyped (missing text/label, a number for a
                  text, a string for an offset, an empty entity)
unknown_label     a label outside the schema (span kept)
ungrounded        a mention that cannot be found in the sentence
unbalanced_tag    an inline closer without opener, or a tag never closed
offset_mismatch   offsets or occurrence index that do not fit the stated text
text_altered      an inline answer whose sentence differs from the input
duplicate         the same span stated twice, or a text listed more often than it occurs
================  ======================================================================

What each format cannot express (`expresses` is False; `render` is then best effort)

===============  =============================================================================
format           not expressible
===============  =============================================================================
bracketed        crossing spans (markup nests); a sentence containing ``| NAME]`` (it reads as
                 a closer); an entity whose text has unpaired ``[`` or ``]`` (it would pair with
                 the entity's own brackets). Paired brackets (``[3H]thymidine``) are fine.
xml              crossing spans; a sentence containing a tag-like ``<NAME>``/``</NAME>``
grouped_json     a repeated text whose gold mentions are not the occurrences it is placed at:
                 longer texts first, each at its first occurrence outside those placed before
                 (`spans.place_mentions`, as the gold readers place positionless mentions); e.g.
                 a mention inside a longer entity whose text also stands alone, unannotated
occurrence_json  a mention that `occurrences` does not list (a word piece of a text that also
                 occurs as a whole word), so no index names it
offset_json      nothing
===============  =============================================================================

In every format, an answer whose sentence holds ``<think>`` or ``</think>`` is read as a rationale
around it (`split_answer`): an inline answer (bracketed, xml) repeats the sentence, so without a
rationale before it such an answer is cut there. Likewise a line of the sentence that starts with
three backticks opens a code fence (within a line they are text). No sentence of the shared data holds
either marker or such a line.

Measured on the shared data (CoNLL-2003 and CrossNER train/dev, GENIA and ACE2005 dev, 25k
sentences): every sentence is expressible in every format except grouped_json, which expresses
99.0-100% per file (lowest: GENIA and ACE2005, nested mentions whose text also stands alone).
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from operator import itemgetter
from typing import Any, ClassVar

from reasoningner.spans import (
    LABEL_PATTERN,
    Example,
    Placed,
    Schema,
    Span,
    is_crossing,
    is_word_char,
    normalize_mention,
    occurrences,
    place_mentions,
    sort_spans,
)

__all__ = [
    "CONTENT_PROBLEMS",
    "FORMATS",
    "WRAPPERS",
    "BracketedFormat",
    "Markup",
    "GroupedJsonFormat",
    "OccurrenceJsonFormat",
    "OffsetJsonFormat",
    "OutputFormat",
    "ParseResult",
    "Problem",
    "XmlFormat",
    "fold_labels",
    "get_format",
    "join_answer",
    "json_format_of",
    "split_answer",
    "unknown_label",
]


# Problems with what an answer states rather than how it is written; every other kind is a syntax
# (format) problem. Evaluation counts format failures and the format reward charges by this split.
CONTENT_PROBLEMS = frozenset({"unknown_label", "ungrounded", "duplicate"})
# Syntax problems around an answer whose value is still read whole (a fence, a lead-in): an answer that
# yields no entity with only these is the empty answer; any other syntax problem, nothing readable.
WRAPPERS = frozenset({"code_fence", "extra_text"})


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a model output; `kind` is one of the identifiers in the module docstring."""

    kind: str
    detail: str


@dataclass(slots=True)
class ParseResult:
    """Spans grounded in the sentence (deduplicated, reading order), what could not be grounded, problems."""

    spans: list[Span]
    ungrounded: list[tuple[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def syntax_problems(self) -> set[str]:
        """The kinds of its problems with how the answer is written: all but `CONTENT_PROBLEMS`."""
        return {problem.kind for problem in self.problems} - CONTENT_PROBLEMS


def unknown_label(label: str) -> Problem:
    return Problem("unknown_label", f"{label!r} is not a label of the schema")


def fold_labels(
    parse: ParseResult, labels: Sequence[str], key: Callable[[str], str] = str.casefold
) -> ParseResult:
    """`parse` with each label outside `labels` whose `key` is that of exactly one of them renamed to it
    (spans merged), and `unknown_label` said of the labels still outside: a label written in another
    case (`PER` for `per`) read as the one meant, where that is what a caller wants."""
    keys = Counter(map(key, labels))
    canonical = {key(label): label for label in labels if keys[key(label)] == 1}

    def fold(label: str) -> str:
        return label if label in labels else canonical.get(key(label), label)

    spans = sort_spans(dict.fromkeys(Span(s.start, s.end, fold(s.label)) for s in parse.spans))
    ungrounded = list(dict.fromkeys((mention, fold(label)) for mention, label in parse.ungrounded))
    unknown = dict.fromkeys(label for _, _, label in spans if label not in labels)
    unknown.update(dict.fromkeys(label for _, label in ungrounded if label not in labels))
    problems = [p for p in parse.problems if p.kind != "unknown_label"]
    return ParseResult(spans, ungrounded, problems + [unknown_label(label) for label in unknown])


class OutputFormat(ABC):
    """One answer format: how gold spans are written and how model outputs are read back."""

    name: ClassVar[str]

    @abstractmethod
    def render(self, example: Example) -> str:
        """The gold answer for `example` (best effort where `expresses` is False)."""

    def parse(self, output: str, text: str, schema: Schema) -> ParseResult:
        """Spans of `text` stated by a raw model output (rationale optional); never raises."""
        _, answer, problems = split_answer(output)
        return self.parse_answer(answer, text, schema, problems)

    @abstractmethod
    def parse_answer(
        self, answer: str, text: str, schema: Schema, problems: Sequence[Problem] = ()
    ) -> ParseResult:
        """`parse` of an answer already taken out of its output by `split_answer`, which found `problems`."""

    @abstractmethod
    def expresses(self, example: Example) -> bool:
        """Whether parsing the rendering of `example` gives its spans back exactly."""

    @abstractmethod
    def instruction(self, example: Example | None = None) -> str:
        """How to write this format, with a tiny example (`format_example()` unless given), for prompts."""

    def _example_line(self, example: Example | None) -> str:
        example = example or _EXAMPLE
        return f"Example: {example.text} -> {self.render(example)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --- shared: rationale and fences, result building, grounding --------------------------------------

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# A fence opens a line (Markdown's), so that ``` inside a sentence an inline answer repeats, or inside
# an entity's text, is text. Its info string ("json") is only taken as such when a newline follows it,
# so that a fenced one-line answer is not eaten as an info string.
_FENCE = re.compile(r"^[ \t]*```(?:[\w+-]*[ \t]*\n)?(.*?)(?:```|\Z)", re.DOTALL | re.MULTILINE)


def message_text(message: dict[str, Any], *, cut_when_only_reasoning: bool = False) -> str:
    """A chat message's text with its rationale in front, where a parser split it off.

    `vllm serve --reasoning-parser ...` (and transformers' `parse_response`, which TRL's GRPO uses when
    the tokenizer has a `response_template`) move the `<think>` text into `reasoning_content` (or
    `reasoning`, vLLM's name since 0.12); what parses the text needs it back. With no content, vLLM's
    Qwen3 parser found no `</think>` and moved the whole output (thinking on): it is returned as the
    model wrote it, so that an answer written without a rationale is not taken for a rationale
    followed by an empty answer. `parse_response` fills the reasoning only after a `<think>` it read:
    there (`cut_when_only_reasoning`) no content means the output was cut inside its rationale, and
    it is returned unclosed, which `split_answer` reports.
    """
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning and not content.strip():
        return f"{THINK_OPEN}\n{reasoning}" if cut_when_only_reasoning else str(reasoning)
    if reasoning and THINK_CLOSE not in content:
        return join_answer(str(reasoning), content)
    return str(content)


def join_answer(rationale: str, answer: str) -> str:
    """`<think>rationale</think>` then the answer, as training targets write them (`split_answer` reads)."""
    return f"{THINK_OPEN}\n{rationale.strip()}\n{THINK_CLOSE}\n{answer}"


def split_answer(output: str) -> tuple[str | None, str, list[Problem]]:
    """(rationale, answer, problems) of a raw output.

    The rationale is the content of a leading `<think>...</think>` (None without one); a bare
    `</think>` counts as closing a block the chat template opened. An unclosed `<think>` means the
    output was cut inside the rationale: the answer is "". Code fences around the answer are
    removed and cost `code_fence`.
    """
    problems: list[Problem] = []
    rationale: str | None = None
    answer = output
    open_at = output.find(THINK_OPEN)
    close_at = output.find(THINK_CLOSE)
    if open_at != -1 and (close_at == -1 or open_at < close_at):
        if output[:open_at].strip():
            problems.append(Problem("extra_text", "text before <think>"))
        body_at = open_at + len(THINK_OPEN)  # the first </think> is past it: "</" is not in "<think>"
        if close_at == -1:
            problems.append(Problem("unclosed_think", "<think> is never closed, so there is no answer"))
            return output[body_at:].strip(), "", problems
        rationale, answer = output[body_at:close_at], output[close_at + len(THINK_CLOSE) :]
    elif close_at != -1:
        rationale, answer = output[:close_at], output[close_at + len(THINK_CLOSE) :]
    answer = answer.strip()
    fence = _FENCE.search(answer) if "```" in answer else None
    if fence:
        problems.append(Problem("code_fence", "the answer is wrapped in a code fence"))
        if (answer[: fence.start()] + answer[fence.end() :]).strip():
            problems.append(Problem("extra_text", "text outside the code fence"))
        answer = fence.group(1).strip()
    return (rationale.strip() if rationale is not None else None), answer, problems


_LABEL_OF_KEY = itemgetter(2)
_LABEL_OF_PAIR = itemgetter(1)
_new_tuple = tuple.__new__


class _Builder:
    """Collects grounded spans and problems for one parse, then dedups and sorts them."""

    __slots__ = ("keys", "problems", "schema", "text", "ungrounded")  # one per parse: lighter and faster

    def __init__(self, text: str, schema: Schema, problems: list[Problem]) -> None:
        self.text = text
        self.schema = schema
        self.problems = problems
        # Each span as its reading-order key (start, -end, label): plain tuples dedup and sort in C.
        self.keys: list[tuple[int, int, str]] = []
        self.ungrounded: list[tuple[str, str]] = []

    def add(self, start: int, end: int, label: str) -> None:
        self.keys.append((start, -end, label))

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append(Problem(kind, detail))

    def no_answer(self) -> None:
        """An empty answer is `no_answer`, unless an unclosed rationale already says why."""
        if not any(problem.kind == "unclosed_think" for problem in self.problems):
            self.problem("no_answer", "the answer is empty")

    def ground(self, mention: str, label: str, near: int) -> None:
        """Add the occurrence of `mention` nearest to position `near`, or record it as ungrounded."""
        found = _find(self.text, mention)
        if found:
            self.add(*_nearest(found, near), label)
        else:
            self.miss(mention, label)

    def miss(self, mention: str, label: str) -> None:
        self.ungrounded.append((mention, label))
        self.problem("ungrounded", f"{mention!r} ({label}) is not in the sentence")

    def result(self) -> ParseResult:
        """The spans once each, in reading order (`spans.sort_spans`); duplicates and labels outside
        the schema reported in the order they were written."""
        keys, ungrounded = self.keys, self.ungrounded
        if not keys and not ungrounded:  # nothing stated (a broken or empty answer)
            return ParseResult([], [], self.problems)
        unique = dict.fromkeys(keys)
        if len(unique) < len(keys):
            seen: set[tuple[int, int, str]] = set()
            for key in keys:
                if key in seen:
                    start, negative_end, label = key
                    mention = self.text[start:-negative_end]
                    self.problem("duplicate", f"{mention!r} ({label}) is stated more than once")
                seen.add(key)
        # Labels in the order they were written (`map` with `itemgetter`: no Python-level call per entity).
        stated = dict.fromkeys(map(_LABEL_OF_KEY, unique))
        if ungrounded:
            stated.update(dict.fromkeys(map(_LABEL_OF_PAIR, ungrounded)))
        known = self.schema.labels
        for label in stated:
            if label not in known:
                self.problems.append(unknown_label(label))
        # `tuple.__new__` makes each Span as `Span._make` does, without its Python-level call.
        spans = [
            _new_tuple(Span, (start, -negative_end, label)) for start, negative_end, label in sorted(unique)
        ]
        return ParseResult(spans, ungrounded, self.problems)


@lru_cache(maxsize=16_384)
def _find(text: str, mention: str) -> tuple[tuple[int, int], ...]:
    """Where `mention` is in `text`: exact occurrences, else ones equal up to case and spacing, else
    up to Unicode composition (`_composed_occurrences`).

    Cached: the completions of one prompt mention mostly the same texts of the same sentence.
    """
    starts = occurrences(text, mention)
    size = len(mention)
    if len(starts) == 1:  # the usual case, without building a list
        return ((starts[0], starts[0] + size),)
    if starts:
        return tuple([(start, start + size) for start in starts])
    return tuple(_lenient_occurrences(text, mention) or _composed_occurrences(text, mention))


def _composed_occurrences(text: str, mention: str) -> list[tuple[int, int]]:
    """Where `mention` is in `text` once both are composed (NFC), in offsets of `text` itself.

    Text from macOS, PDFs or Korean sources is often decomposed ("e" + U+0301 for "é"); a model whose
    tokenizer composes its input (Qwen's does) writes the entity composed, which no other search finds.
    The text is composed cluster by cluster (a character and the marks or Hangul vowels and finals
    after it), so that every match that begins and ends at a cluster edge maps back.
    """
    composed_mention = unicodedata.normalize("NFC", mention)
    if unicodedata.is_normalized("NFC", text):
        return list(_find(text, composed_mention)) if composed_mention != mention else []
    pieces: list[str] = []
    origin = {0: 0}  # offset in the composed text -> offset in `text`, at each cluster edge
    start, size, composed = 0, len(text), 0
    while start < size:
        end = start + 1
        while end < size and (unicodedata.combining(text[end]) or "\u1160" <= text[end] <= "\u11ff"):
            end += 1
        pieces.append(unicodedata.normalize("NFC", text[start:end]))
        composed += len(pieces[-1])
        origin[composed] = end
        start = end
    found = _find("".join(pieces), composed_mention)
    return [(origin[a], origin[b]) for a, b in found if a in origin and b in origin]


def _lenient_occurrences(text: str, mention: str) -> list[tuple[int, int]]:
    """Matches of `mention` ignoring case and whitespace next to punctuation, word-bounded if possible.

    The regex is the inverse of `normalize_mention`: between a word character and a punctuation
    mark any whitespace may appear or not; between words, one or more whitespace characters.
    """
    key = normalize_mention(mention)
    # A match normalises to `key` and lies within the text, so `key` lies within the normalised text.
    if not key or key not in normalize_mention(text):
        return []
    if mention.isascii() and mention.isalnum() and text.isascii():
        return _ascii_word_occurrences(text, mention)
    return _lenient_regex_occurrences(text, mention, key)


def _ascii_word_occurrences(text: str, mention: str) -> list[tuple[int, int]]:
    """`_lenient_occurrences` of one ASCII word in an ASCII text, by string search: what the regex
    finds there (case ignored, word-bounded matches if any, else all; never overlapping)."""
    lowered, needle, size = text.lower(), mention.lower(), len(mention)
    found = []
    start = lowered.find(needle)
    while start != -1:
        found.append(start)
        start = lowered.find(needle, start + size)
    bounded = [
        s
        for s in found
        if (s == 0 or not is_word_char(text[s - 1]))
        and (s + size == len(text) or not is_word_char(text[s + size]))
    ]
    return [(s, s + size) for s in bounded or found]


def _lenient_regex_occurrences(text: str, mention: str, key: str) -> list[tuple[int, int]]:
    parts: list[str] = []
    previous = ""
    gap = False
    for char in " ".join(mention.split()):
        if char == " ":
            gap = True
            continue
        if previous:
            if not (is_word_char(previous) and is_word_char(char)):
                parts.append(r"\s*")
            elif gap:
                parts.append(r"\s+")
        parts.append(re.escape(char))
        previous, gap = char, False
    core = "".join(parts)
    # Word-bounded where the mention's edge is a word character (`is_word_char`: a combining mark belongs
    # to its letter, which `\w` does not know), else every match.
    left, right = is_word_char(mention.strip()[0]), is_word_char(mention.strip()[-1])
    bounded_pattern = (r"(?<!\w)" if left else "") + core + (r"(?!\w)" if right else "")
    for pattern, bounded in ((bounded_pattern, True), (core, False)):
        found = [
            (m.start(), m.end())
            for m in re.finditer(pattern, text, re.IGNORECASE)
            if normalize_mention(m.group()) == key
            and not (bounded and left and m.start() > 0 and is_word_char(text[m.start() - 1]))
            and not (bounded and right and m.end() < len(text) and is_word_char(text[m.end()]))
        ]
        if found:
            return found
    return []


def _nearest(found: Sequence[tuple[int, int]], near: int) -> tuple[int, int]:
    return min(found, key=lambda span: (abs(span[0] - near), span[0]))


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# --- inline formats ---------------------------------------------------------------------------------


@dataclass
class Markup:
    """An inline answer with its markup taken out: the one reading of the inline grammar, shared by
    the output parsers and the gold readers (`readers.read_alpaca`).

    `spans` are (start, end, label) in `clean`, trimmed of surrounding whitespace (an entity of only
    whitespace is dropped as a `bad_entry` problem); `problems` are closers that close nothing;
    `unclosed` are (label, position in the answer) of openers never closed; `core` is `clean`
    without what an answer cut short leaves behind (unpaired openers, a partial closer or tag),
    used to recognise truncation.
    """

    clean: str
    spans: list[tuple[int, int, str]]
    problems: list[Problem]
    unclosed: list[tuple[str, int]]
    core: str

    @property
    def errors(self) -> list[str]:
        """Why this is not well-formed markup (for gold data, where any of it is an error)."""
        return [p.detail for p in self.problems] + [
            f"<{label}> at character {at} of the output is never closed" for label, at in self.unclosed
        ]


def _trimmed(
    clean: str, raw: list[tuple[int, int, str]], problems: list[Problem]
) -> list[tuple[int, int, str]]:
    """Spans without the whitespace at their edges: `<PER> Ann </PER>` marks "Ann"."""
    spans = []
    for start, end, label in raw:
        covered = clean[start:end]
        if not covered.strip():
            problems.append(Problem("bad_entry", f"an empty {label} entity at character {start}"))
            continue
        spans.append(
            (start + len(covered) - len(covered.lstrip()), end - len(covered) + len(covered.rstrip()), label)
        )
    return spans


class _InlineFormat(OutputFormat):
    """Formats that rewrite the sentence with markup around each entity."""

    @abstractmethod
    def _open(self, label: str) -> str: ...

    @abstractmethod
    def _close(self, label: str) -> str: ...

    @abstractmethod
    def markup(self, answer: str, labels: Collection[str] = (), llms4ner: bool = False) -> Markup:
        """`answer` read by the inline grammar (module docstring); `labels` are the schema's.

        `llms4ner`: XML as LLMs4NER's evaluation scripts read it, for `compat` llms4ner: only
        tags naming one of `labels` are markup, and a closer ends the tags opened inside it (they
        are lost, not reported). Brackets read the same either way.
        """

    def render(self, example: Example) -> str:
        text = example.text
        out: list[str] = []
        cursor = 0
        stack: list[Span] = []

        def close_top() -> None:
            nonlocal cursor
            top = stack.pop()
            out.append(text[cursor : top.end])
            out.append(self._close(top.label))
            cursor = max(cursor, top.end)

        for span in example.spans:
            while stack and stack[-1].end <= span.start:
                close_top()
            out.append(text[cursor : span.start])
            out.append(self._open(span.label))
            cursor = max(cursor, span.start)
            stack.append(span)
        while stack:
            close_top()
        out.append(text[cursor:])
        return "".join(out)

    def parse_answer(
        self, answer: str, text: str, schema: Schema, problems: Sequence[Problem] = ()
    ) -> ParseResult:
        built = _Builder(text, schema, list(problems))
        if not answer:
            if text.strip():
                built.no_answer()
            return built.result()
        markup = self.markup(answer, schema.labels)
        built.problems.extend(markup.problems)
        if markup.clean.strip() == text.strip():
            truncated = False
            shift = (len(text) - len(text.lstrip())) - (len(markup.clean) - len(markup.clean.lstrip()))
            for start, end, label in markup.spans:
                built.add(start + shift, end + shift, label)  # spans are trimmed: in range
        else:
            core = markup.core.strip()
            truncated = len(core) < len(text.strip()) and text.strip().startswith(core)
            if core == text.strip():
                built.problem("unbalanced_tag", "an entity is opened but never closed")
            elif truncated:
                built.problem("truncated", "the answer stops before the end of the sentence")
            else:
                built.problem("text_altered", "the rewritten sentence differs from the input")
            self._add_aligned(built, markup)
        if not truncated:
            for label, at in markup.unclosed:
                built.problem("unbalanced_tag", f"<{label}> at character {at} is never closed")
        return built.result()

    @staticmethod
    def _add_aligned(built: _Builder, markup: Markup) -> None:
        """Carry spans of the model's rewritten sentence over to the input sentence."""
        clean, text = markup.clean, built.text
        if not markup.spans:
            return
        position = _align(clean, text)
        for start, end, label in markup.spans:
            mention = clean[start:end]
            mapped_start, mapped_last = position.get(start), position.get(end - 1)
            if (
                mapped_start is not None
                and mapped_last is not None
                and text[mapped_start : mapped_last + 1] == mention
            ):
                built.add(mapped_start, mapped_last + 1, label)
            else:
                near = mapped_start if mapped_start is not None else start * len(text) // max(1, len(clean))
                built.ground(mention, label, near)


_ALIGN_TOKEN = re.compile(r"\w+|[^\w\s]")


def _align(clean: str, text: str) -> dict[int, int]:
    """Positions in `text` of the non-space characters of `clean` that a word-level diff matches.

    Words and punctuation marks, not characters, are aligned: it is what a model changes when it
    rewrites a sentence, and it keeps the diff fast (difflib's heuristic for frequent tokens also
    bounds the time on degenerate outputs).
    """
    clean_tokens = list(_ALIGN_TOKEN.finditer(clean))
    text_tokens = list(_ALIGN_TOKEN.finditer(text))
    matcher = difflib.SequenceMatcher(
        None, [t.group() for t in clean_tokens], [t.group() for t in text_tokens]
    )
    position: dict[int, int] = {}
    for a, b, size in matcher.get_matching_blocks():
        for ours, theirs in zip(clean_tokens[a : a + size], text_tokens[b : b + size], strict=True):
            for offset in range(len(ours.group())):
                position[ours.start() + offset] = theirs.start() + offset
    return position


# The lookbehinds make a closer's leading whitespace match only from the start of a whitespace run,
# which keeps scanning linear on long runs of spaces.
_BRACKET_TOKEN = re.compile(rf"(?P<close>(?<!\s)\s*\|\s*(?P<label>{LABEL_PATTERN.pattern})\s*\])|\[|\]")
_BRACKET_CLOSER = re.compile(rf"\|\s*{LABEL_PATTERN.pattern}\s*\]")
_PARTIAL_CLOSER = re.compile(r"(?<!\s)\s*\|[^\[\]|]*\Z")


class BracketedFormat(_InlineFormat):
    """``[entity text | LABEL]`` inline; see the module docstring for how brackets pair."""

    name = "bracketed"

    def _open(self, label: str) -> str:
        return "["

    def _close(self, label: str) -> str:
        return f" | {label}]"

    def markup(self, answer: str, labels: Collection[str] = (), llms4ner: bool = False) -> Markup:
        tokens = list(_BRACKET_TOKEN.finditer(answer))
        problems: list[Problem] = []
        stack: list[int] = []  # indexes in `tokens` of the "[" still open
        markup: set[int] = set()
        pairs: list[tuple[int, int, str]] = []
        for index, token in enumerate(tokens):
            if token.group("close") is not None:
                markup.add(index)
                if stack:
                    opener = stack.pop()
                    markup.add(opener)
                    pairs.append((opener, index, token.group("label")))
                else:
                    problems.append(
                        Problem(
                            "unbalanced_tag",
                            f"{token.group().strip()!r} at character {token.start()} of the output "
                            "closes no '['",
                        )
                    )
            elif token.group() == "[":
                stack.append(index)
            elif stack:
                stack.pop()  # a literal "[...]" pair
        unpaired = set(stack)
        clean: list[str] = []
        core: list[str] = []
        position: dict[int, int] = {}
        length = cursor = 0
        for index, token in enumerate(tokens):
            piece = answer[cursor : token.start()]
            clean.append(piece)
            core.append(piece)
            length += len(piece)
            position[index] = length
            cursor = token.end()
            if index not in markup:
                clean.append(token.group())
                length += len(token.group())
                if index not in unpaired:
                    core.append(token.group())
        clean.append(answer[cursor:])
        core.append(answer[cursor:])
        text = "".join(clean)
        spans = _trimmed(
            text, [(position[opener], position[closer], label) for opener, closer, label in pairs], problems
        )
        # Unpaired "[" are text (the sentence may have them), so nothing is reported as unclosed.
        return Markup(text, spans, problems, [], _PARTIAL_CLOSER.sub("", "".join(core)))

    def expresses(self, example: Example) -> bool:
        return (
            not _has_crossing(example.spans)
            and not _BRACKET_CLOSER.search(example.text)
            and all(_brackets_paired(span.text(example.text)) for span in example.spans)
        )

    def instruction(self, example: Example | None = None) -> str:
        return (
            "Rewrite the sentence exactly as given, enclosing every entity as [entity text | LABEL]; "
            "entities may nest. " + self._example_line(example)
        )


def _brackets_paired(text: str) -> bool:
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _has_crossing(spans: tuple[Span, ...]) -> bool:
    return any(is_crossing(a, b) for a, b in combinations(spans, 2))


_XML_TAG = re.compile(rf"<(/?)({LABEL_PATTERN.pattern})>")
_TAG_NAME = re.compile(r"[^\W\d][\w.\-]*")
_PARTIAL_TAG = re.compile(r"</?([^<>]*)\Z")


def _is_tag(name: str, labels: Collection[str], unknown_tags_are_text: bool = False) -> bool:
    """A schema label, or (unless `unknown_tags_are_text`) an identifier-like name (`<0.05>` is text) or
    a label of several words in another case (`<Programming Language>`: an unknown label, kept)."""
    if name in labels:
        return True
    if unknown_tags_are_text:
        return False
    if " " in name:
        return any(name.casefold() == label.casefold() for label in labels)
    return _TAG_NAME.fullmatch(name) is not None


def _without_partial_tag(text: str, labels: Collection[str]) -> str:
    """`text` without a tag cut off at its end: a name without spaces, or a label's first words (`<a b`
    before the end of a sentence that holds it stays)."""
    cut = _PARTIAL_TAG.search(text)
    if cut is None:
        return text
    name = cut.group(1).casefold()
    spaced = any(char.isspace() for char in name)
    if spaced and not any(label.casefold().startswith(name) for label in labels):
        return text
    return text[: cut.start()]


class XmlFormat(_InlineFormat):
    """``<LABEL>entity text</LABEL>`` inline; see the module docstring for what counts as a tag."""

    name = "xml"

    def _open(self, label: str) -> str:
        return f"<{label}>"

    def _close(self, label: str) -> str:
        return f"</{label}>"

    def markup(self, answer: str, labels: Collection[str] = (), llms4ner: bool = False) -> Markup:
        problems: list[Problem] = []
        clean: list[str] = []
        raw: list[tuple[int, int, str]] = []
        stack: list[tuple[str, int, int]] = []  # (name, position in clean, position in answer)
        length = cursor = 0
        for tag in _XML_TAG.finditer(answer):
            closing, name = tag.group(1), tag.group(2)
            if not _is_tag(name, labels, unknown_tags_are_text=llms4ner):
                continue
            piece = answer[cursor : tag.start()]
            clean.append(piece)
            length += len(piece)
            cursor = tag.end()
            if not closing:
                stack.append((name, length, tag.start()))
                continue
            # The innermost open tag of this name; tags opened inside it stay open, so that closers
            # may come in any order (GENIA's <protein><RNA>Id2</protein></RNA>).
            depth = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == name), None)
            if depth is None:
                problems.append(
                    Problem(
                        "unbalanced_tag",
                        f"</{name}> at character {tag.start()} of the output closes no <{name}>",
                    )
                )
                continue
            raw.append((stack[depth][1], length, name))
            del stack[depth : depth + 1 if not llms4ner else len(stack)]
        clean.append(answer[cursor:])
        text = "".join(clean)
        spans = _trimmed(text, raw, problems)
        unclosed = [(name, at) for name, _, at in stack]
        return Markup(text, spans, problems, unclosed, _without_partial_tag(text, labels))

    def expresses(self, example: Example) -> bool:
        return (
            not _has_crossing(example.spans)
            and not any(label.startswith("/") for label in example.schema.labels)  # <//x> closes nothing
            and not any(
                _is_tag(tag.group(2), example.schema.labels) for tag in _XML_TAG.finditer(example.text)
            )
        )

    def instruction(self, example: Example | None = None) -> str:
        return (
            "Rewrite the sentence exactly as given, wrapping every entity in tags named after its label, "
            "<LABEL>entity text</LABEL>; tags may nest. " + self._example_line(example)
        )


# --- JSON formats -------------------------------------------------------------------------------------


def joined_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose repeated keys of lists (or of objects) keep every one's entries (`{"PER":
    ["Ann"], "PER": ["Bob"]}` states both; `json` would keep the last only); other repeats, the last."""
    joined: dict[str, Any] = {}
    for key, value in pairs:
        earlier = joined.get(key)
        if isinstance(earlier, list) and isinstance(value, list):
            value = earlier + value
        elif isinstance(earlier, dict) and isinstance(value, dict):
            value = joined_keys([*earlier.items(), *value.items()])
        joined[key] = value
    return joined


def json_format_of(value: dict[str, Any] | list[Any]) -> str:
    """Which JSON answer format a decoded answer is written in, by its shape: an object is grouped, a list
    with an entry stating `start` holds offsets, any other list occurrences."""
    if isinstance(value, dict):
        return "grouped_json"
    if any(isinstance(entry, dict) and "start" in entry for entry in value):
        return "offset_json"
    return "occurrence_json"


_DECODER = json.JSONDecoder(object_pairs_hook=joined_keys)
_MISSING: Any = object()
_JSON_START = re.compile(r"[\[{]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_MAX_DEPTH = 20


def _load_json(answer: str, built: _Builder) -> Any:
    """The JSON value of `answer`, repaired as far as possible, or `_MISSING`; problems go to `built`."""
    if not answer:
        built.no_answer()
        return _MISSING
    if answer[0] in "[{":  # the usual case, without a search
        start = 0
    else:
        found = _JSON_START.search(answer)
        if found is None:
            built.problem("invalid_json", "the answer holds no JSON object or list")
            return _MISSING
        start = found.start()
        if answer[:start].strip():
            built.problem("extra_text", "text before the JSON value")
    try:
        value, end = _DECODER.raw_decode(answer, start)
    except (ValueError, RecursionError):
        end = _json_extent(answer, start)
        if end is None:
            built.problem("truncated", "the JSON value is cut off; its complete entries are kept")
            return _salvage_broken(answer, start, 0)[0]
        value = _python_literal(answer[start:end])
        if value is _MISSING:
            built.problem(
                "invalid_json", "the answer is not valid JSON; the entries before the error are kept"
            )
            return _salvage_broken(answer, start, 0)[0]
        built.problem("invalid_json", "the answer is a Python literal, not JSON")
    if answer[end:].strip():
        built.problem("extra_text", "text after the JSON value")
    return value


def _json_extent(text: str, start: int) -> int | None:
    """Where the bracketed value at `start` ends by bracket counting, or None if it runs off the end."""
    closers: list[str] = []
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            closers.append("]" if char == "[" else "}")
        elif char in "]}":
            expected = closers.pop() if closers else None
            if expected != char or not closers:  # a mismatched closer, or the value's own
                return index + 1
    return None


def _python_literal(source: str) -> Any:
    """`source` read as a Python list or dict literal (what models write for JSON), else `_MISSING`.

    Only sources with single quotes are tried: that is how Python writes strings, and an answer
    without them is JSON gone wrong, better salvaged entry by entry than read with Python's rules.
    """
    if "'" not in source:
        return _MISSING
    if '"' not in source and "\\" not in source:
        # Strings without quotes or escapes inside: swapping the quotes makes it JSON, read in C.
        try:
            value = _LITERAL_DECODER.decode(source.replace("'", '"'))
            compatible = _python_compatible(value)
        except (ValueError, RecursionError):  # nested past the stack: no answer, as in ast below
            pass
        else:
            if compatible:
                return value if isinstance(value, (list, dict)) else _MISSING
    try:
        value = _literal(ast.parse(source.lstrip(" \t"), mode="eval").body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING
    return value if isinstance(value, (list, dict)) else _MISSING


def _literal(node: ast.expr) -> Any:
    """`ast.literal_eval` of `node`, whose dicts keep every list of a repeated key as JSON's do
    (`joined_keys`); `literal_eval` keeps the last."""
    if isinstance(node, ast.Dict):
        return joined_keys(
            [(ast.literal_eval(k), _literal(v)) for k, v in zip(node.keys, node.values, strict=True)]
        )
    if isinstance(node, ast.List):
        return [_literal(element) for element in node.elts]
    return ast.literal_eval(node)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a Python literal")


# JSON without NaN and Infinity, which Python literals lack; made once (`json.loads` with an option
# makes a decoder on every call).
_LITERAL_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=joined_keys)


def _python_compatible(value: Any) -> bool:
    """Whether JSON `value` reads the same as a Python literal: JSON's true, false and null do not."""
    if isinstance(value, dict):
        return all(map(_python_compatible, value.values()))
    if isinstance(value, list):
        return all(map(_python_compatible, value))
    return value is not None and not isinstance(value, bool)


def _salvage(text: str, start: int, depth: int) -> tuple[Any, int, bool]:
    """(value, end, complete) for the JSON value at `start`: the value itself when it decodes, else
    what `_salvage_broken` keeps of it."""
    try:
        value, end = _DECODER.raw_decode(text, start)
        return value, end, True
    except (ValueError, RecursionError):
        return _salvage_broken(text, start, depth)


def _salvage_broken(text: str, start: int, depth: int) -> tuple[Any, int, bool]:
    """`_salvage` of a value at `start` known not to decode: as much of a broken list or object as
    decodes, entry by entry, up to the first error (a decoding error is slow: it is not repeated).

    Objects cut short inside a list are dropped (half a record is no record); lists and objects
    cut short elsewhere are kept with their complete members; broken scalars are dropped.
    """
    if depth >= _MAX_DEPTH or start >= len(text) or text[start] not in "[{":
        return _MISSING, start, False
    is_object = text[start] == "{"
    members: list[tuple[str, Any]] = []  # joined as a decoded object's are: a repeated key keeps every list
    items: list[Any] = []
    index = _JSON_SPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    while index < len(text):
        key = ""
        if is_object:
            key, index, complete = _salvage(text, index, depth + 1)
            if not complete or not isinstance(key, str):
                break
            index = _JSON_SPACE.match(text, index).end()  # type: ignore[union-attr]
            if not text.startswith(":", index):
                break
            index = _JSON_SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
        value, index, complete = _salvage(text, index, depth + 1)
        if value is not _MISSING and (complete or is_object or not isinstance(value, dict)):
            if is_object:
                members.append((key, value))
            else:
                items.append(value)
        if not complete:
            break
        index = _JSON_SPACE.match(text, index).end()  # type: ignore[union-attr]
        if not text.startswith(",", index):
            break
        index = _JSON_SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    return (joined_keys(members) if is_object else items), index, False


def _as_int(value: Any, what: str, built: _Builder) -> int | None:
    """An integer field; anything else is a `bad_entry`, still read when it spells an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value is None:
        built.problem("bad_entry", f"an entry has no {what}")
        return None
    built.problem("bad_entry", f"{what} {_short(value)} is not an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class _EntryListFormat(OutputFormat):
    """JSON lists of entity objects with "text" and "label" plus a locating field."""

    def parse_answer(
        self, answer: str, text: str, schema: Schema, problems: Sequence[Problem] = ()
    ) -> ParseResult:
        built = _Builder(text, schema, list(problems))
        value = _load_json(answer, built)
        if value is not _MISSING:
            for entry, mention, label in self._entries(value, built):
                self._locate(entry, mention, label, built)
        return built.result()

    @staticmethod
    def _entries(value: Any, built: _Builder) -> list[tuple[dict[str, Any], str, str]]:
        """(entry, stripped mention, label) for every usable entry of a list, however wrapped."""
        if isinstance(value, dict):
            if "text" in value and "label" in value:
                built.problem("wrong_shape", "a single entity object instead of a list")
                value = [value]
            else:
                lists = [member for member in value.values() if isinstance(member, list)]
                if len(lists) != 1:
                    built.problem("wrong_shape", "an object where a list of entities is expected")
                    return []
                built.problem("wrong_shape", "the list of entities is wrapped in an object")
                value = lists[0]
        if not isinstance(value, list):
            built.problem("wrong_shape", f"{_short(value)} is not a list of entities")
            return []
        entries = []
        for entry in value:
            if not isinstance(entry, dict):
                built.problem("bad_entry", f"{_short(entry)} is not an entity object")
                continue
            mention, label = entry.get("text"), entry.get("label")
            if not isinstance(mention, str) or not mention.strip() or not isinstance(label, str) or not label:
                built.problem("bad_entry", f"{_short(entry)} lacks a non-empty string text or label")
                continue
            entries.append((entry, mention.strip(), label))
        return entries

    @abstractmethod
    def _locate(self, entry: dict[str, Any], mention: str, label: str, built: _Builder) -> None:
        """Ground one entry in the sentence."""


class OccurrenceJsonFormat(_EntryListFormat):
    """``[{"text", "label", "occurrence_index"}]``: which occurrence of the text is meant, no offsets."""

    name = "occurrence_json"

    def render(self, example: Example) -> str:
        entries = []
        for span in example.spans:
            mention = span.text(example.text)
            starts = occurrences(example.text, mention)
            index = starts.index(span.start) + 1 if span.start in starts else 1
            entries.append({"text": mention, "label": span.label, "occurrence_index": index})
        return _dumps(entries)

    def _locate(self, entry: dict[str, Any], mention: str, label: str, built: _Builder) -> None:
        found = _find(built.text, mention)
        if not found:
            built.miss(mention, label)
            return
        raw = entry.get("occurrence_index", entry.get("occurrence"))
        index = _as_int(raw, "occurrence_index", built)
        if index is None:
            index = 1
        elif not 1 <= index <= len(found):
            built.problem(
                "offset_mismatch", f"{mention!r} occurs {len(found)} times, so there is no occurrence {index}"
            )
            index = min(max(index, 1), len(found))
        built.add(*found[index - 1], label)

    def expresses(self, example: Example) -> bool:
        return all(span.start in occurrences(example.text, span.text(example.text)) for span in example.spans)

    def instruction(self, example: Example | None = None) -> str:
        return (
            'Answer with a JSON list of {"text": entity text, "label": LABEL, "occurrence_index": k}, '
            "where k says which appearance of that text in the sentence is meant (1 for the first). "
            + self._example_line(example)
        )


class OffsetJsonFormat(_EntryListFormat):
    """``[{"text", "label", "start", "end"}]`` with half-open character offsets.

    The offsets are the answer (exact matching scores them): an entry whose offsets do not hold its
    text states the span at its offsets (`offset_mismatch`), and an entry whose offsets are no span
    of the sentence (out of range, empty, on whitespace) is kept as ungrounded text, which exact
    matching counts wrong and text matching compares by its text. An entry without integer offsets
    (a `bad_entry`) states none, so its text is grounded. `reground=True` is the lenient reading:
    the text wins and is grounded at its occurrence nearest to the stated start.
    """

    name = "offset_json"

    def __init__(self, reground: bool = False) -> None:
        self.reground = reground

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reground={self.reground})"

    def render(self, example: Example) -> str:
        return _dumps(
            [
                {"text": span.text(example.text), "label": span.label, "start": span.start, "end": span.end}
                for span in example.spans
            ]
        )

    def _locate(self, entry: dict[str, Any], mention: str, label: str, built: _Builder) -> None:
        start = _as_int(entry.get("start"), "start", built)
        end = _as_int(entry.get("end"), "end", built)
        stated = start is not None and end is not None
        if stated and 0 <= start < end <= len(built.text):  # type: ignore[operator]
            covered = built.text[start:end]  # type: ignore[misc]
            # The stated text, with any whitespace the answer stated around it left out.
            if mention and covered.strip() == mention:
                lead = len(covered) - len(covered.lstrip())
                built.add(start + lead, start + lead + len(mention), label)  # type: ignore[operator]
                return
        if not stated or self.reground:  # no offsets to honour (a bad_entry), or the lenient reading
            if stated:
                built.problem("offset_mismatch", f"{start}:{end} does not hold {mention!r}")
            built.ground(mention, label, start if start is not None else 0)
            return
        built.problem("offset_mismatch", f"{start}:{end} does not hold {mention!r}")
        covered = built.text[start:end] if 0 <= start < end <= len(built.text) else ""  # type: ignore[operator]
        if covered.strip() and covered == covered.strip():
            built.add(start, end, label)  # type: ignore[arg-type]
        else:  # no span at these offsets: only the text is left to compare
            built.ungrounded.append((mention, label))

    def expresses(self, example: Example) -> bool:
        return True

    def instruction(self, example: Example | None = None) -> str:
        return (
            'Answer with a JSON list of {"text": entity text, "label": LABEL, "start": s, "end": e}, where s '
            "and e are the entity's character offsets in the sentence (from 0, end exclusive). "
            + self._example_line(example)
        )


class GroupedJsonFormat(OutputFormat):
    """``{"entities": {"LABEL": ["text", ...]}}``; a text listed k times is placed at k occurrences
    (`spans.place_mentions`)."""

    name = "grouped_json"

    def render(self, example: Example) -> str:
        return _dumps({"entities": self._groups(example)})

    @staticmethod
    def _groups(example: Example) -> dict[str, list[str]]:
        """Each label's mention texts in reading order, the labels in schema order."""
        groups: dict[str, list[str]] = {label: [] for label in example.schema.labels}
        for span in example.spans:
            groups[span.label].append(span.text(example.text))
        return {label: texts for label, texts in groups.items() if texts}

    def parse_answer(
        self, answer: str, text: str, schema: Schema, problems: Sequence[Problem] = ()
    ) -> ParseResult:
        built = _Builder(text, schema, list(problems))
        value = _load_json(answer, built)
        if value is _MISSING:
            return built.result()
        if not isinstance(value, dict):
            built.problem("wrong_shape", f"{_short(value)} is not an object")
            return built.result()
        groups = value.get("entities", _MISSING)
        if groups is _MISSING:
            built.problem("wrong_shape", 'no "entities" object; the labels are read from the top level')
            groups = value
        elif not isinstance(groups, dict):
            built.problem("wrong_shape", f'"entities" holds {_short(groups)}, not an object of labels')
            return built.result()
        stated: list[tuple[str, str]] = []  # (mention, label) found in the text, in listing order
        for label, mentions in groups.items():
            if isinstance(mentions, str):
                built.problem("bad_entry", f"{label}: a string where a list is expected")
                mentions = [mentions]
            if not isinstance(mentions, list) or not isinstance(label, str) or not label:
                built.problem("bad_entry", f"{label!r}: {_short(mentions)} is not a list of texts")
                continue
            for listed_mention in mentions:
                mention = listed_mention.strip() if isinstance(listed_mention, str) else ""
                if not mention:
                    built.problem("bad_entry", f"{label}: {_short(listed_mention)} is not an entity text")
                elif _find(text, mention):
                    stated.append((mention, label))
                else:
                    built.miss(mention, label)
        for (mention, label), place in zip(stated, self._place(text, stated), strict=True):
            if place is None:
                built.problem("duplicate", f"{mention!r} is listed under {label} more often than it occurs")
            else:
                built.add(place.span.start, place.span.end, label)
        return built.result()

    @staticmethod
    def _place(text: str, stated: Sequence[tuple[str, str]]) -> list[Placed | None]:
        """Where the listed `(mention, label)`s are: `spans.place_mentions`, as the gold readers of
        positionless data place them (a text is found as `_find` finds it)."""
        return place_mentions(stated, functools.partial(_find, text))

    def expresses(self, example: Example) -> bool:
        stated = [(text, label) for label, texts in self._groups(example).items() for text in texts]
        placed = self._place(example.text, stated)
        return None not in placed and sorted(p.span for p in placed if p) == sorted(example.spans)

    def instruction(self, example: Example | None = None) -> str:
        return (
            'Answer with a JSON object {"entities": {LABEL: [entity text, ...]}} listing the exact text of '
            "each entity under its label, in sentence order; list a text k times for its first k mentions. "
            + self._example_line(example)
        )


_EXAMPLE = Example(
    "Alice works at Acme Corp.",
    (Span(0, 5, "person"), Span(15, 24, "organisation")),
    Schema(("person", "organisation")),
)


def format_example(label_map: Mapping[str, str] | None = None) -> Example:
    """The example every format instruction shows, its labels renamed by `label_map` where it names
    them (a memorization probe's prompt must not show the real names it hides)."""
    if not label_map:
        return _EXAMPLE
    rename = {label: label_map.get(label, label) for label in _EXAMPLE.schema.labels}
    spans = tuple(Span(span.start, span.end, rename[span.label]) for span in _EXAMPLE.spans)
    return Example(_EXAMPLE.text, spans, Schema(tuple(rename.values())))


FORMATS: dict[str, OutputFormat] = {
    fmt.name: fmt
    for fmt in (
        BracketedFormat(),
        XmlFormat(),
        GroupedJsonFormat(),
        OccurrenceJsonFormat(),
        OffsetJsonFormat(),
    )
}


_REGROUNDING = OffsetJsonFormat(reground=True)


def get_format(name: str, reground_offsets: bool = False) -> OutputFormat:
    """The format called `name`; a ValueError names the valid ones. `reground_offsets`: offset_json's
    lenient reading, where a stated text wins over offsets that do not hold it."""
    try:
        output_format = FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown output format {name!r}; valid: {', '.join(FORMATS)}") from None
    return _REGROUNDING if reground_offsets and name == _REGROUNDING.name else output_format

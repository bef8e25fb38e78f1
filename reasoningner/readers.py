"""Readers of NER corpora into `Example`s, and writers out of them.

Every reader is strict by default: a malformed record raises `DataError`, whose message starts with
`path:line:`, because a silently dropped or misread sentence corrupts training and evaluation
without anyone noticing. `on_error="skip"` skips bad records instead (a record is a CoNLL sentence,
a JSON array item or a JSONL line) and returns their messages in `Dataset.skipped`; it never
skips a file that cannot be parsed at all (broken JSON syntax, undecodable bytes). In JSON arrays
the line is where the record starts, and messages name the record's index too.

Formats
- CoNLL BIO (`read_conll`): `token<TAB>tag` or space-separated `token ... tag` (tag last, as in the
  4-column CoNLL-2003 files), a blank line between sentences, `-DOCSTART-` lines ignored. The text
  is the tokens joined by single spaces. Tags are `O`, `B-x`, `I-x`, `E-x`, `S-x` (IOB1, IOB2 and
  BIOES all decode). As seqeval does by default, an `I-x` or `E-x` that does not continue an open
  `x` entity (after `O`, or after a `B-y` of another type) starts a new `x` entity; each sentence
  where that happened is noted (`Dataset.notes`, counted in the reader's log line): in IOB1 it is
  the rule, in an IOB2 or BIOES corpus a tagging error. Every line has as many columns as the first.
- Alpaca instruction JSON (`read_alpaca`, `write_alpaca`): `[{"instruction", "input", "output"}]`
  or JSONL of such objects, in every variant of the LLMs4NER release. The `output` is either the
  `input` with inline markup, `<LABEL>text</LABEL>` or `[text | LABEL]`, read by `formats`' one
  inline grammar (`formats.Markup`: nesting, closers in any order, what counts as a tag, entity
  whitespace trimmed): removing the markup must give back `input` exactly, and malformed markup
  is an error naming its character. Or it is an answer in a JSON format, told by its shape and
  read by that format's parser (`{LABEL: [texts]}` with or without the `entities` wrapper:
  grouped_json; entries with `start`/`end`: offset_json; else occurrence_json); any problem the
  parser reports is an error. Exact duplicate spans (ACE's `<PER><PER>x</PER></PER>`) are merged,
  as an `Example` holds a span once, and each merge is recorded in `Dataset.notes`. The labels and
  descriptions come from the instruction: a `Label Set:` block (`LABEL: description` or
  `LABEL(long name): description`, one per line; a long name is kept in the description as
  `(long name) description`), or, without that header (LLMs4NER's relabelled `conll2003-so/se`
  files), the first run of `LABEL: description` lines after the instruction's first line.
- InstructUIE JSON (`read_instructuie`): `[{"sentence", "entities": [{"name", "type", "pos"}]}]`
  with half-open character offsets `pos`; `name` must equal the covered text; type `NA` or empty
  means "no entity". A `labels.json` list next to the file (InstructUIE's layout) states the labels.
- Our JSONL (`read_jsonl`, `write_jsonl`), the canonical interchange format, one object per line:
      {"id": str, "text": str,
       "entities": [{"start": int, "end": int, "label": str, "text": str}],
       "labels": [str, ...], "descriptions": {label: str}}
  Offsets are half-open character offsets into `text`; the entity `text` is optional and checked
  when present; `id`, `labels` and `descriptions` are optional; other keys are errors (a typo
  such as "entites" would otherwise drop every entity of the line). `write_jsonl` writes every
  field, and the labels and descriptions on every line, so that a line stands alone.
- Hugging Face datasets with `tokens`/`ner_tags` columns (`from_hf`; by name: `hf:` sources); the tag names
  come from the `ClassLabel` feature, or the column holds tag strings.

Schema and names
- The dataset schema is the one passed in; else the labels the file states (union over records,
  first seen first); else the labels of the entities in first-seen order. Each `Example` carries
  its record's own stated label set when it has one (so JSONL round-trips exactly), else the
  dataset schema.
- `Dataset.name` defaults to `<parent dir>-<split>` when the file stem starts with a split name
  (`crossner/ai/dev.txt` -> `ai-dev`, `genia/dev_xml_alpaca.json` -> `genia-dev`), else the stem.
  Example ids are the record's own (JSONL `id`) or `<name>-<index of the record in the file>`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reasoningner.files import JSONL_ERRORS
from reasoningner.formats import FORMATS, get_format, joined_keys, json_format_of
from reasoningner.spans import LABEL_PATTERN, Example, Schema, Span, SpanError, check_span, nesting_depth

__all__ = [
    "READERS",
    "DataError",
    "Dataset",
    "from_hf",
    "read_alpaca",
    "read_conll",
    "read_dataset",
    "read_instructuie",
    "read_jsonl",
    "sniff",
    "write_alpaca",
    "write_conll",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
PathLike = str | os.PathLike[str]


class CannotWrite(ValueError):
    """An example a writer's format cannot hold (nested spans in CoNLL, ...): the data are well formed."""


class DataError(ValueError):
    """A malformed record of a data file; `str()` is `path:line: message` like a compiler error.

    `line` is 1-based; it is None for problems of the whole file and for a row of a loaded Hugging
    Face dataset, whose message names it as `record N` instead.
    """

    def __init__(self, path: PathLike, line: int | None, message: str) -> None:
        super().__init__(str(path), line, message)
        self.path, self.line, self.message = str(path), line, message

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class Dataset:
    """What a reader returns: examples, their label set, a name, and what was skipped and why.

    `skipped` holds a `path:line: why` message per record skipped under `on_error="skip"`; `notes`
    one per record the reader changed without losing information (exact duplicate spans merged);
    `corpora` the corpora its records say they come from (NER-CoT's `source`), which a model trained on
    them records for the contamination check. `indices` holds each example's record index in its file,
    which pairs it with a line of another file once records were skipped (empty where the examples
    come from several files).
    """

    examples: list[Example]
    schema: Schema
    name: str
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    corpora: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)


@dataclass
class RawRecord:
    """A parsed record before the dataset schema is known (it may be inferred from all records)."""

    line: int | None  # None: a row of a loaded dataset, named by its index
    index: int
    text: str
    spans: list[Span]
    schema: Schema | None = None
    id: str | None = None
    example: Example | None = None


class RecordCollector:
    """Turns records into examples, and per-record problems into errors or skip messages."""

    def __init__(
        self, path: PathLike, schema: Schema | None, on_error: OnError, name: str, numbered: bool = False
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.path, self.schema, self.on_error, self.name = path, schema, on_error, name
        self.numbered = numbered  # messages name the record index too (JSON: the line is its start)
        self.records: list[RawRecord] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []

    def report(self, line: int | None, why: str, index: int | None = None) -> None:
        error = DataError(self.path, line, why if index is None else f"record {index}: {why}")
        if self.on_error == "raise":
            raise error
        self.skipped.append(str(error))

    def note(self, record: RawRecord, what: str) -> None:
        self.notes.append(str(DataError(self.path, record.line, f"record {record.index}: {what}")))

    def add(self, record: RawRecord, notes: Iterable[str] = ()) -> bool:
        """Validate the record's spans now, so that errors come in file order with their line; `notes`,
        what the reader read otherwise than written, are noted when the record is kept."""
        if record.id is None:
            record.id = f"{self.name}-{record.index}"
        labels = tuple(dict.fromkeys(span.label for span in record.spans))
        try:
            provisional = self.schema or record.schema or (Schema(labels) if labels else None)
            if provisional is not None:
                record.example = Example(record.text, tuple(record.spans), provisional, record.id)
        except SpanError as error:
            self.report(record.line, str(error), record.index if self.numbered else None)
            return False
        self.records.append(record)
        for what in notes:
            self.note(record, what)
        return True

    def dataset(self) -> Dataset:
        schema = self.schema or self._file_schema()
        examples, indices = [], []
        for record in self.records:
            target = self.schema or record.schema or schema
            example = record.example
            if example is None or example.schema != target:
                try:
                    example = Example(record.text, tuple(record.spans), target, record.id or "")
                except SpanError as error:
                    self.report(record.line, str(error), record.index if self.numbered else None)
                    continue
            examples.append(example)
            indices.append(record.index)
        for kind, messages in (("skipped bad records", self.skipped), ("notes", self.notes)):
            if messages:
                logger.warning("%s: %d %s, first: %s", self.path, len(messages), kind, messages[0])
        return Dataset(examples, schema, self.name, self.skipped, self.notes, indices=indices)

    def _file_schema(self) -> Schema:
        stated = [record.schema for record in self.records if record.schema is not None]
        if stated:
            return Schema.union(stated)
        labels = dict.fromkeys(span.label for record in self.records for span in record.spans)
        if not self.records and not self.skipped:
            raise DataError(self.path, None, "holds no sentences")
        if not labels:
            skipped = f" ({len(self.skipped)} records skipped)" if self.skipped else ""
            raise DataError(
                self.path, None, f"no labels: no entities and none stated{skipped}; pass schema= (--labels)"
            )
        return Schema(tuple(labels))


def _default_name(path: PathLike) -> str:
    path = Path(path)
    stem = path.name.split(".")[0]
    split = re.split(r"[_.\-]", stem)[0].lower()
    parent = path.resolve().parent.name
    return f"{parent}-{split}" if split in _SPLITS and parent else stem


_SPLITS = {"train", "dev", "valid", "validation", "test", "eval"}


def read_file_text(path: PathLike) -> str:
    """The file as text; undecodable bytes are a file-level error with their line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(path, line, f"not UTF-8: {error.reason} at byte {error.start}") from None


# ---------------------------------------------------------------------------------------------- CoNLL


class _TokenError(ValueError):
    """A bad token or tag at `position` of a sentence (mapped to a file line or a row by the caller)."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position


def _split_tag(tag: str, position: int) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, dash, label = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not dash or not LABEL_PATTERN.fullmatch(label):
        raise _TokenError(position, f"bad tag {tag!r}: expected O, or B-, I-, E-, S- and a label")
    return prefix, label


def _tag_label(tag: Any) -> str | None:
    """The label of a valid entity tag; None for `O` and anything `_split_tag` refuses."""
    if not isinstance(tag, str):
        return None
    try:
        return _split_tag(tag, 0)[1] or None
    except _TokenError:
        return None


def _bio_spans(tokens: Sequence[str], tags: Sequence[str]) -> tuple[str, list[Span], list[str]]:
    """The text (tokens joined by spaces), the entities of a BIO/IOB1/BIOES tag sequence, and a note of
    what was read past the IOB2/BIOES rules (none when nothing): an entity opened by I- or E- (IOB1's
    way, or a tagging error), and a label change inside an entity (I-LOC after B-PER), each read as a new
    entity."""
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    spans: list[Span] = []
    current: tuple[int, str] | None = None  # first token and label of the open entity

    def close(last: int) -> None:
        spans.append(Span(starts[current[0]], starts[last] + len(tokens[last]), current[1]))

    opened = changed = 0  # entities opened by I- or E-; label changes inside an entity
    for i, tag in enumerate(tags):
        prefix, label = _split_tag(tag, i)
        if current is not None and (prefix in ("B", "S", "O") or label != current[1]):
            changed += prefix in ("I", "E")
            close(i - 1)
            current = None
        elif current is None and prefix in ("I", "E"):
            opened += 1
        if prefix != "O" and current is None:
            current = (i, label)
        if prefix in ("E", "S"):
            close(i)
            current = None
    if current is not None:
        close(len(tags) - 1)
    repairs = []
    if opened:
        repairs.append(f"entities opened by I- or E-: {opened} (IOB1 tags, or tagging errors), read as B-")
    if changed:
        repairs.append(
            f"label changes inside an entity (I-Y after B-X or I-X): {changed}, each read as a new entity"
        )
    return " ".join(tokens), spans, ["; ".join(repairs)] if repairs else []


def _conll_sentences(text: str) -> Iterator[list[tuple[int, str]]]:
    """Non-empty runs of (line number, line) between blank and `-DOCSTART-` lines."""
    sentence: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if sentence:
                yield sentence
            sentence = []
        else:
            sentence.append((number, line))
    if sentence:
        yield sentence


def _conll_columns(line: str, position: int, width: list[tuple[int, int]], number: int) -> tuple[str, str]:
    """The token (first column) and tag (last) of a line. Every line of a file has as many columns as
    its first (`width` holds its count and line): a token holding a space in a space-separated file
    ("New York B-LOC") would otherwise lose its middle and shift every later offset."""
    # Columns split on tabs, else on ASCII spaces only: a token may hold a no-break space (`10\xa0000`).
    parts = line.split("\t") if "\t" in line else [part for part in line.split(" ") if part]
    if len(parts) < 2:
        raise _TokenError(position, f"expected a token and a tag separated by a tab or spaces, got {line!r}")
    if not width:
        width.append((len(parts), number))
    elif len(parts) != width[0][0]:
        raise _TokenError(
            position,
            f"{len(parts)} columns in {line!r}, where line {width[0][1]} has {width[0][0]} (columns split on "
            "tabs, else on spaces: a token holding a space needs tab-separated columns)",
        )
    token, tag = parts[0], parts[-1].strip()
    if not token.strip() or token != token.strip():
        raise _TokenError(position, f"token {token!r} is empty or has surrounding whitespace")
    return token, tag


def read_conll(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """Read a CoNLL BIO/IOB/BIOES file (see the module docstring for the accepted layout)."""
    collector = RecordCollector(path, schema, on_error, name or _default_name(path))
    width: list[tuple[int, int]] = []  # (columns, line) of the file's first token line
    for index, sentence in enumerate(_conll_sentences(read_file_text(path))):
        try:
            columns = [
                _conll_columns(content, i, width, number) for i, (number, content) in enumerate(sentence)
            ]
            tokens, tags = [token for token, _ in columns], [tag for _, tag in columns]
            text, spans, repaired = _bio_spans(tokens, tags)
            if schema is not None:
                unknown = [i for i, tag in enumerate(tags) if tag != "O" and tag[2:] not in schema]
                if unknown:
                    raise _TokenError(unknown[0], f"label of tag {tags[unknown[0]]!r} is not in the schema")
        except _TokenError as error:
            collector.report(sentence[error.position][0], str(error))
            continue
        collector.add(RawRecord(sentence[0][0], index, text, spans), repaired)
    return collector.dataset()


# Characters that would split a token's line or its columns when the file is read back.
_LINE_BREAKING = re.compile("[\t\n\r]")


def write_conll(dataset: Dataset, path: PathLike) -> None:
    """Write flat examples as `token<TAB>tag` (IOB2), tokens being the text split at spaces.

    Raises ValueError for what CoNLL cannot represent: nested or overlapping spans, spans that
    do not start and end at token boundaries, labels with spaces, texts that are empty or have other
    whitespace than single spaces between tokens (reading the file back would change the text).
    """
    blocks = []
    for example in dataset.examples:
        where = f"example {example.id or example.text[:40]!r}"
        # Split at ASCII spaces only, as `read_conll` joins them: a token may hold a no-break space.
        tokens = example.text.split(" ")
        if not all(token and token == token.strip() and not _LINE_BREAKING.search(token) for token in tokens):
            raise CannotWrite(f"{where}: CoNLL needs a non-empty text with single spaces between tokens")
        if nesting_depth(example.spans) > 1:
            raise CannotWrite(f"{where}: CoNLL BIO cannot represent nested or overlapping spans")
        if spaced := sorted({span.label for span in example.spans if " " in span.label}):
            raise CannotWrite(f"{where}: a CoNLL tag cannot hold a label with a space: {spaced}")
        starts, ends, offset = {}, {}, 0
        for i, token in enumerate(tokens):
            starts[offset], ends[offset + len(token)] = i, i
            offset += len(token) + 1
        tags = ["O"] * len(tokens)
        for span in example.spans:
            if span.start not in starts or span.end not in ends:
                raise CannotWrite(f"{where}: span {span} does not start and end at token boundaries")
            first, last = starts[span.start], ends[span.end]
            tags[first : last + 1] = [f"B-{span.label}"] + [f"I-{span.label}"] * (last - first)
        blocks.append("".join(f"{token}\t{tag}\n" for token, tag in zip(tokens, tags, strict=True)))
    Path(path).write_text("\n".join(blocks), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- JSON


def json_items(path: PathLike, text: str, collector: RecordCollector) -> Iterator[tuple[int, int, Any]]:
    """(index, line, value) of each item of a top-level JSON array, or of each non-blank JSONL line.

    A JSON syntax error in an array is fatal (nothing after it can be trusted); in JSONL it only
    spoils its own line.
    """
    start = _WHITESPACE.match(text).end()
    if not text.startswith("[", start):
        lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
        for index, (number, line) in enumerate(lines):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                collector.report(number, f"invalid JSON: {error.msg} at column {error.colno}", index)
                continue
            yield index, number, value
        return
    decoder, position, line, counted = json.JSONDecoder(), start + 1, 1, 0
    for index in itertools.count():
        position = _WHITESPACE.match(text, position).end()
        if text.startswith("]", position) and index == 0:
            break
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(
                path, error.lineno, f"invalid JSON: {error.msg} at column {error.colno}"
            ) from None
        yield index, line, value
        position = _WHITESPACE.match(text, position).end()
        if text.startswith(",", position):
            position += 1
        elif text.startswith("]", position):
            break
        else:
            raise DataError(
                path, text.count("\n", 0, position) + 1, "expected ',' or ']' after an array item"
            )
    position = _WHITESPACE.match(text, position + 1).end()
    if position < len(text):
        raise DataError(path, text.count("\n", 0, position) + 1, "unexpected text after the JSON array")


_WHITESPACE = re.compile(r"\s*")


def _require(record: Any, key: str, kind: type) -> Any:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _offset(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- Alpaca

_LABEL_LINE = re.compile(r"([^\s\[\]|<>{}\"():]+)(?:\(([^)]*)\))?:[ \t]*(.*)")
# In a block under a `Label Set:` header, a label of several words too, with a description, when a label
# line follows it or the output uses it: "Now process the input sentence:" has no description, and
# "Output format: JSON" ends a block.
_SPACED_LABEL_LINE = re.compile(
    r"([^\s\[\]|<>{}\"():]+(?: [^\s\[\]|<>{}\"():]+)+)(?:\(([^)]*)\))?:[ \t]*(\S.*)"
)


def _label_set(instruction: str, output: str = "") -> Schema | None:
    """The labels and descriptions an instruction states, if it does.

    Either a `Label Set:` block (`LABEL: description` or `LABEL(long name): description`, one per
    line; a label of several words as `_SPACED_LABEL_LINE` says; or `Label Set: A, B` inline), or, in
    LLMs4NER's relabelled files (`conll2003-so/se`), which have no header, the first run of
    `LABEL: description` lines after the first line.
    """
    lines = instruction.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().startswith("Label Set:")]
    if heads:
        inline = lines[heads[0]].strip()[len("Label Set:") :].strip()
        if inline:
            return Schema(tuple(label.strip() for label in inline.split(",")))
        block = lines[heads[0] + 1 :]
    else:
        first = next((i for i, line in enumerate(lines[1:], 1) if _LABEL_LINE.fullmatch(line.strip())), None)
        if first is None:
            return None
        block = lines[first:]
    labels: dict[str, str] = {}
    for line, following in zip(block, [*block[1:], ""], strict=True):
        match = _LABEL_LINE.fullmatch(line.strip())
        if match is None and heads and (spaced := _SPACED_LABEL_LINE.fullmatch(line.strip())):
            name = spaced.group(1)
            used = any(f in output for f in (f"<{name}>", f"| {name}]", f'"{name}"'))
            if (
                used
                or _LABEL_LINE.fullmatch(following.strip())
                or _SPACED_LABEL_LINE.fullmatch(following.strip())
            ):
                match = spaced
        if not match:
            break
        label, long_name, description = match.groups()
        labels[label] = f"({long_name}) {description}".strip() if long_name else description.strip()
    if not labels:
        raise ValueError("the instruction's 'Label Set:' block lists no labels")
    return Schema(tuple(labels), {label: text for label, text in labels.items() if text})


def _inline_spans(output: str, labels: Sequence[str], text: str) -> tuple[str, list[Span]]:
    """The spans of inline markup (`formats`' grammar) over the output without it: XML's reading when it
    finds tags and gives back the input `text` cleanly, else brackets' when they do (a sentence of a
    bracketed file may hold tag-like text, `a <b> Ann`, `<i>Ann</i> said`); malformed markup is a
    ValueError naming its character."""
    markup = FORMATS["xml"].markup(output, labels)  # type: ignore[attr-defined]
    if not markup.spans or markup.errors or markup.clean != text:
        bracketed = FORMATS["bracketed"].markup(output, labels)  # type: ignore[attr-defined]
        if not (markup.spans or markup.errors) or (not bracketed.errors and bracketed.clean == text):
            markup = bracketed
    if markup.errors:
        raise ValueError(markup.errors[0])
    return markup.clean, [Span(start, end, label) for start, end, label in markup.spans]


def _json_output(output: str) -> Any:
    """The output as a JSON list or object (LLMs4NER's JSON-format files), else None (inline)."""
    if not output.lstrip().startswith(("[", "{")):
        return None
    try:
        value = json.loads(output, object_pairs_hook=joined_keys)
    except ValueError:
        return None
    return value if isinstance(value, (list, dict)) else None


def _json_labels(value: Any) -> list[str]:
    """The labels a JSON gold output uses (for files that state none), first seen first."""
    if isinstance(value, dict):
        groups = value.get("entities", value)
        used = [label for label, texts in groups.items() if texts] if isinstance(groups, dict) else []
    else:
        used = [entry.get("label") for entry in value if isinstance(entry, dict)]
    return [label for label in dict.fromkeys(used) if isinstance(label, str)]


def _json_spans(value: Any, text: str, known: Schema | None) -> tuple[list[Span], list[str]]:
    """Spans of a JSON gold output read by its answer format's own parser, and the duplicates it
    merged. Anything else the parser objects to is a ValueError: gold data must say exactly what it
    means."""
    name = json_format_of(value)
    if name == "grouped_json" and "entities" not in value:  # LLMs4NER's grouped files have no wrapper
        value = {"entities": value}
    used = _json_labels(value)
    schema = known or (Schema(tuple(used)) if used else None)
    if schema is None:
        return [], []
    result = get_format(name).parse_answer(json.dumps(value), text, schema)
    errors = [f"{p.kind}: {p.detail}" for p in result.problems if p.kind != "duplicate"]
    if errors:
        raise ValueError(f"{name} output: {errors[0]}")
    return result.spans, [p.detail for p in result.problems if p.kind == "duplicate"]


def _alpaca_record(record: Any, schema: Schema | None) -> tuple[str, list[Span], Schema | None, list[str]]:
    """(text, spans, stated schema, duplicates merged) of an alpaca record: its output is the input
    with inline markup, or an answer in one of the JSON formats (LLMs4NER's JSON-variant files)."""
    text, output = _require(record, "input", str), _require(record, "output", str)
    stated = _label_set(_require(record, "instruction", str), output) if "instruction" in record else None
    value = _json_output(output) if output != text else None
    # A headerless block is a guess (`_label_set`): one that misses a label the output uses was some other
    # `Word: text` line of the instruction. A JSON output's labels are compared before it is read with them.
    guessed = stated is not None and "Label Set:" not in record["instruction"]
    if guessed and value is not None and not set(_json_labels(value)) <= set(stated.labels):  # type: ignore[union-attr]
        stated = None
    known = schema or stated
    if value is not None:
        spans, merged = _json_spans(value, text, known)
    else:
        stripped, spans = _inline_spans(output, known.labels if known else (), text)
        if stripped != text:
            at = next(
                (i for i, (a, b) in enumerate(zip(stripped, text, strict=False)) if a != b),
                min(len(stripped), len(text)),
            )
            raise ValueError(
                f"the output without tags differs from the input at character {at}: "
                f"{stripped[at : at + 30]!r} vs {text[at : at + 30]!r}"
            )
        unique = list(dict.fromkeys(spans))
        merged = [f"{s.label} {s.start}:{s.end}" for s in unique if spans.count(s) > 1]
        if guessed and stated is not None and not {s.label for s in spans} <= set(stated.labels):
            stated = None  # an inline output's labels are known once read
    return text, spans, stated, merged


def read_alpaca(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """Read Alpaca instruction JSON or JSONL whose outputs tag the input inline or answer in JSON."""
    collector = RecordCollector(path, schema, on_error, name or _default_name(path), numbered=True)
    for index, line, record in json_items(path, read_file_text(path), collector):
        try:
            text, spans, stated, merged = _alpaca_record(record, schema)
        except ValueError as error:
            collector.report(line, str(error), index)
            continue
        record = RawRecord(line, index, text, list(dict.fromkeys(spans)), stated)
        # inline spans come with their duplicates; a JSON parser merged them, one detail each
        count = len(spans) - len(record.spans) or len(merged)
        collector.add(record, [f"merged {count} duplicate spans ({', '.join(merged)})"] if merged else [])
    return collector.dataset()


def write_alpaca(dataset: Dataset, path: PathLike, format_name: str = "xml") -> None:
    """Write Alpaca JSON whose outputs are answers in `format_name` (see `formats`).

    The instruction states the format and a `Label Set:` block with the descriptions, so that
    `read_alpaca` gives the examples back for the inline formats (`xml`, `bracketed`). Raises
    ValueError for an example the format cannot express (crossing spans, a tag-like `<NAME>` in
    the text...): a best-effort rendering would be wrong gold data.
    """
    output_format = get_format(format_name)
    records = []
    for example in dataset.examples:
        if not output_format.expresses(example):
            raise CannotWrite(
                f"example {example.id or example.text[:40]!r}: {format_name} cannot express its spans"
            )
        for label in example.schema.labels:
            if (line := _LABEL_LINE.fullmatch(f"{label}:")) is None or line.group(1) != label:
                raise CannotWrite(f"label {label!r}: a 'Label Set:' line holds no ':', '(' or space")
        # One line per label: a description's line breaks would end the block (and drop the labels after).
        labels = "\n".join(
            f"{label}: {' '.join((example.schema.describe(label) or '').split())}".rstrip()
            for label in example.schema.labels
        )
        instruction = (
            "Identify the named entities in the input sentence. "
            f"Answer format: {output_format.instruction()}\n"
            f"Label Set:\n{labels}\nNow process the input sentence:"
        )
        records.append(
            {"instruction": instruction, "input": example.text, "output": output_format.render(example)}
        )
    Path(path).write_text(
        json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", errors=JSONL_ERRORS
    )


# ---------------------------------------------------------------------------------------- InstructUIE


def _instructuie_record(record: Any) -> tuple[str, list[Span]]:
    text = _require(record, "sentence", str)
    spans = []
    for entity in _require(record, "entities", list):
        label = _require(entity, "type", str)
        if label in ("NA", ""):
            continue
        pos = entity.get("pos")
        if not isinstance(pos, list) or len(pos) != 2:
            raise ValueError(f"entity {entity!r}: 'pos' must be [start, end]")
        span = Span(_offset(pos[0], "pos[0]"), _offset(pos[1], "pos[1]"), label)
        check_span(span, text, expected_text=_require(entity, "name", str))
        spans.append(span)
    return text, spans


def read_instructuie(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """Read an InstructUIE NER file; a sibling `labels.json` (a list of labels) states the labels."""
    labels_path = Path(path).with_name("labels.json")
    stated = _stated_schema(labels_path) if schema is None and labels_path.exists() else None
    collector = RecordCollector(path, schema, on_error, name or _default_name(path), numbered=True)
    for index, line, record in json_items(path, read_file_text(path), collector):
        try:
            text, spans = _instructuie_record(record)
        except ValueError as error:
            collector.report(line, str(error), index)
            continue
        unlisted = sorted({span.label for span in spans} - set(stated.labels)) if stated else []
        if unlisted:
            collector.report(
                line, f"labels {unlisted} are not in {labels_path}, which states the file's", index
            )
            continue
        collector.add(RawRecord(line, index, text, spans, stated))
    return collector.dataset()


# ---------------------------------------------------------------------------------------------- JSONL

_JSONL_KEYS = {"id", "text", "entities", "labels", "descriptions"}
_ENTITY_KEYS = {"start", "end", "label", "text"}


def jsonl_record(record: Any) -> tuple[str, list[Span], Schema | None, str | None]:
    text = _require(record, "text", str)
    unknown = sorted(set(record) - _JSONL_KEYS)
    if unknown:
        raise ValueError(f"unknown fields {unknown}; expected {sorted(_JSONL_KEYS)}")
    # An optional field that is null is absent: `datasets` gives every row each column of the file.
    record = {key: value for key, value in record.items() if value is not None}
    example_id = _require(record, "id", str) if "id" in record else None
    spans = []
    for entity in _require(record, "entities", list):
        if not isinstance(entity, dict) or set(entity) - _ENTITY_KEYS:
            raise ValueError(f"entity {entity!r} must be an object with keys {sorted(_ENTITY_KEYS)}")
        entity = {key: value for key, value in entity.items() if value is not None}
        span = Span(
            _offset(entity.get("start"), "start"),
            _offset(entity.get("end"), "end"),
            _require(entity, "label", str),
        )
        check_span(span, text, expected_text=_require(entity, "text", str) if "text" in entity else None)
        spans.append(span)
    descriptions = _require(record, "descriptions", dict) if "descriptions" in record else {}
    if not all(isinstance(value, str) for value in descriptions.values()):
        raise ValueError("'descriptions' must map labels to strings")
    if "labels" not in record:
        if descriptions:
            raise ValueError("'descriptions' needs 'labels'")
        return text, spans, None, example_id
    return text, spans, Schema(tuple(_require(record, "labels", list)), descriptions), example_id


def read_jsonl(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """Read our JSONL interchange format (schema in the module docstring)."""
    collector = RecordCollector(path, schema, on_error, name or _default_name(path), numbered=True)
    for index, line, record in json_items(path, read_file_text(path), collector):
        try:
            text, spans, stated, example_id = jsonl_record(record)
        except ValueError as error:
            collector.report(line, str(error), index)
            continue
        collector.add(RawRecord(line, index, text, spans, stated, example_id))
    return collector.dataset()


def write_jsonl(dataset: Dataset, path: PathLike) -> None:
    """Write one JSON object per example; `read_jsonl` gives back equal examples and schema."""
    with open(path, "w", encoding="utf-8", errors=JSONL_ERRORS) as out:
        for example in dataset.examples:
            record: dict[str, Any] = {
                "id": example.id,
                "text": example.text,
                "entities": example.entity_dicts(),
                "labels": list(example.schema.labels),
            }
            if example.schema.descriptions:
                record["descriptions"] = dict(example.schema.descriptions)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _stated_schema(labels_path: Path) -> Schema:
    """The labels an InstructUIE folder's `labels.json` lists; a DataError naming it when it lists none
    usable."""
    try:
        labels = json.loads(read_file_text(labels_path))
        if not isinstance(labels, list):
            raise TypeError(f"got {type(labels).__name__}")
        return Schema(tuple(labels))
    except (ValueError, TypeError) as error:
        raise DataError(labels_path, None, f"not a list of usable labels: {error}") from None


def write_instructuie(dataset: Dataset, path: PathLike) -> None:
    """Write InstructUIE JSON and its sibling `labels.json`; `read_instructuie` gives them back. A
    `labels.json` there already (the folder's train file's) is kept when it holds this file's labels,
    and refused before anything is written when it lacks some (another task's)."""
    records = [
        {
            "sentence": example.text,
            "entities": [
                {"name": s.text(example.text), "type": s.label, "pos": [s.start, s.end]}
                for s in example.spans
            ],
        }
        for example in dataset.examples
    ]
    labels_path = Path(path).with_name("labels.json")
    listed = None
    if labels_path.exists() and read_file_text(labels_path).strip():
        listed = list(_stated_schema(labels_path).labels)
        if not set(dataset.schema.labels) <= set(listed):
            raise DataError(
                labels_path,
                None,
                f"states the labels of the files beside it, {listed}, which lack some of this one's "
                f"{list(dataset.schema.labels)}: write it into a folder of its own",
            )
    Path(path).write_text(
        json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", errors=JSONL_ERRORS
    )
    if listed is None:  # the folder's labels.json (a train file's) serves its dev and test files too
        labels_path.write_text(json.dumps(list(dataset.schema.labels)) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------- Hugging Face


def from_hf(
    dataset: Any,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    schema: Schema | None = None,
    name: str | None = None,
    on_error: OnError = "raise",
    where: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read a Hugging Face `datasets.Dataset` of token and BIO tag columns.

    Integer tags are named by the column's `ClassLabel` feature (the hub's conll2003 layout);
    string tags are used as they are. Errors name `where` (the source it was read from, else `name`)
    and the row (`dataset[row]`) as its record. `limit`: only the first rows become examples, while
    the schema, unless given, is the labels of every row's tags, as a whole read finds it (a smoke
    run's prompts then list the labels a full run's do).
    """
    name = name or getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf"
    feature = getattr(dataset.features[tags_column], "feature", None)
    names: list[str] | None = getattr(feature, "names", None)

    def decoded(tags: Sequence[Any]) -> Sequence[Any]:
        """Tag names for ClassLabel ids (an id out of range as its repr, which no tag is)."""
        if names is None:
            return tags
        return [names[tag] if isinstance(tag, int) and 0 <= tag < len(names) else repr(tag) for tag in tags]

    if limit is not None and schema is None:
        labels = dict.fromkeys(
            label for tags in dataset[tags_column] for tag in decoded(tags) if (label := _tag_label(tag))
        )
        schema = Schema(tuple(labels)) if labels else None
    collector = RecordCollector(where or name, schema, on_error, name, numbered=True)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    for row, (tokens, tags) in enumerate(zip(dataset[tokens_column], dataset[tags_column], strict=True)):
        try:
            if len(tokens) != len(tags):
                raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
            tags = decoded(tags)
            if not all(isinstance(tag, str) for tag in tags):
                raise ValueError(
                    f"{tags_column!r} holds numbers but its feature names no labels (ClassLabel)"
                )
            if any(not token or token != token.strip() for token in tokens):
                raise ValueError("a token is empty or has surrounding whitespace")
            text, spans, repaired = _bio_spans(tokens, tags)
        except _TokenError as error:
            collector.report(None, f"token {error.position}: {error}", row)
            continue
        except (ValueError, TypeError) as error:
            collector.report(None, str(error), row)
            continue
        collector.add(RawRecord(None, row, text, spans), repaired)
    return collector.dataset()


# ------------------------------------------------------------------------------------ Named sources


def read_source(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """A data source by name, `hf:OWNER/NAME[:CONFIG][@SPLIT]` or a local stand-in (`sources`)."""
    from reasoningner.sources import load_source  # sources reads its rows with this module's readers

    return load_source(str(path), schema, on_error, name)


def read_nercot(
    path: PathLike, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """A local NER-CoT file (ReasoningNER's stage 1 layout), read as the `hf:` source of that file."""
    from reasoningner.sources import file_source, load_source

    return load_source(file_source(path, "nercot"), schema, on_error, name or _default_name(path))


# ------------------------------------------------------------------------------------------ Dispatch

READERS: dict[str, Callable[..., Dataset]] = {
    "conll": read_conll,
    "alpaca": read_alpaca,
    "instructuie": read_instructuie,
    "jsonl": read_jsonl,
    "hf": read_source,
    "nercot": read_nercot,
}


WRITERS: dict[str, Callable[[Dataset, PathLike], None]] = {
    "jsonl": write_jsonl,
    "conll": write_conll,
    "instructuie": write_instructuie,
    **{f"alpaca-{name}": functools.partial(write_alpaca, format_name=name) for name in FORMATS},
}


def write_dataset(dataset: Dataset, path: PathLike, writer: str) -> None:
    """Write `dataset` with the named writer (`WRITERS`)."""
    if writer not in WRITERS:
        raise ValueError(f"unknown writer {writer!r}; choose one of {sorted(WRITERS)}")
    WRITERS[writer](dataset, path)


_CONLL_TAG = re.compile(r"O|[BIESLU]-\S+")


def sentence_layout(keys: set[str]) -> str:
    """Of records with `sentence` and `entities`: ReasoningNER's NER-CoT (`cot`, `schema`, `guid`) or
    InstructUIE's; the one rule for files (`sniff`) and Hub sources (`sources`)."""
    return "nercot" if keys & {"cot", "schema", "guid"} else "instructuie"


def sniff(path: PathLike) -> str:
    """The reader name for a file, from its first record; `hf` for a named source (`hf:...`).

    A file whose first non-blank character is `[` (JSON array) or `{` (JSONL) is a JSON format,
    told apart by the keys of the first record: `sentence` and `entities` -> nercot or instructuie
    (`sentence_layout`); `input` and `output` -> alpaca; `text` -> jsonl. Any other file is CoNLL, as
    is one that is not JSON and whose first line is a token and a BIO tag.
    """
    from reasoningner.sources import is_source

    if is_source(str(path)):
        return "hf"
    text = read_file_text(path)
    start = _WHITESPACE.match(text).end()
    if not text.startswith(("[", "{"), start):
        return "conll"
    columns = text[start:].split("\n", 1)[0].split()
    conll_like = len(columns) > 1 and _CONLL_TAG.fullmatch(columns[-1]) is not None
    try:
        first = next(json_items(path, text, RecordCollector(path, None, "raise", "")), (0, 0, None))[2]
    except DataError:
        if conll_like:
            return "conll"  # a CoNLL file whose first token is `[` or `{`
        raise
    if conll_like and not isinstance(first, dict):
        return "conll"  # ... which JSON may even read: `[1] O` is a list whose first item is 1
    if first is None:
        raise DataError(path, None, "holds no sentences (an empty JSON list)")
    keys = set(first) if isinstance(first, dict) else set()
    if {"sentence", "entities"} <= keys:
        return sentence_layout(keys)
    for reader, needed in (("alpaca", {"input", "output"}), ("jsonl", {"text"})):
        if needed <= keys:
            return reader
    raise DataError(
        path, None, f"cannot tell the format of a JSON file whose first record has keys {sorted(keys)}"
    )


def read_dataset(path: PathLike, reader: str = "auto", **kwargs: Any) -> Dataset:
    """Read `path` with the named reader, or the one `sniff` picks for `reader="auto"`."""
    if reader == "auto":
        reader = sniff(path)
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; choose 'auto' or one of {sorted(READERS)}")
    return READERS[reader](path, **kwargs)

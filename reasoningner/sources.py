"""Data sources by name: a Hugging Face dataset id (or a local stand-in of one), read through `readers`.

A recipe names data as TRL users do, by hub id, so that a fresh clone needs no mounted folder::

    hf:LOCATION[:CONFIG][@SPLIT][?reader=LAYOUT&sets=A,B&streaming=true&revision=COMMIT]

    hf:HuiHuang/NER-CoT@train                           NER-CoT, the paper's stage 1 output
    hf:DFKI-SLT/cross_ner:ai@test                        a config and split of a hub dataset
    hf:OWNER/NAME/NER@train?sets=ACE 2005,CoNLL 2003     an InstructUIE tree: <base>/<set>/{split}.json
    hf:tests/data/hub/ner-cot@train                      a local directory standing in for a hub id
    hf:OWNER/NAME@train?revision=0123abcd                a hub dataset at a commit (branch or tag)

LOCATION is a hub id `OWNER/NAME` (a further `/SUBDIR` is the folder inside the repository) or, when
it exists on disk, a local file or directory. Every form is loaded by `datasets.load_dataset` (cached
under `HF_DATASETS_CACHE`; `streaming=true` iterates without downloading the whole set), so a local
stand-in goes through exactly the code path of the hub id it replaces. SPLIT defaults to `train`.
`revision=` reads a hub dataset at that commit, so that every attempt of a long run (and a later
reproduction) reads the same rows; offline (`HF_DATASETS_OFFLINE`), `datasets` reads the newest cached
copy whatever the revision. A trainer stage also records the rows it reads and refuses a relaunch that
reads others (`tracking.claim_data`), pinned or not.

Layouts (`reader=`, else told from the columns of the first row):

- `nercot`: ReasoningNER's NER-CoT, `{guid, sentence, schema, source, cot, entities: [{text, label}]}`.
  Entities carry no offsets: each is located in the sentence as `spans.place_mentions` places them
  (longer mentions first, each at its first occurrence outside those placed before; case-insensitively
  when the exact text is absent, noted), as the grouped_json parser places a model's. One that cannot
  be located is left out of its example and recorded in `Dataset.notes` with its row; the count is
  logged. `cot` is kept as the rationale (`load_source_sets`), so SFT trains on the teacher's reasoning
  directly.
- `instructuie`: `{sentence, entities: [{name, type, pos}]}`; with `sets=`, one folder per set holding
  `{train,dev,test}.json` and `labels.json` (the InstructUIE NER tree). A `pos` that does not cover
  `name` is located like an NER-CoT mention.
- `tokens`: `tokens` + `ner_tags` columns (`readers.from_hf`).
- `jsonl`: our interchange records (`readers.read_jsonl`).

NER-CoT and InstructUIE labels follow the paper's protocol (`rner/protocol.py`): lower-cased, sorted,
the non-entity labels `na`, `misc`, `else`, `other`, `nan` dropped with their entities (counted in
the notes); a run of whitespace inside a label is one space ("programming language").

`source_keys` says what a source is made of (its files, hub datasets and corpus families), which
`overlaps` compares between training and evaluation data: the contamination check.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasoningner.readers import (
    DataError,
    Dataset,
    OnError,
    RawRecord,
    RecordCollector,
    from_hf,
    json_items,
    jsonl_record,
    read_file_text,
    sentence_layout,
)
from reasoningner.spans import Schema, Span, occurrences, place_mentions

logger = logging.getLogger(__name__)

HUB = "hf:"
LAYOUT_ROWS = 100  # rows of a local JSON file whose fields tell its layout
LAYOUTS = ("auto", "nercot", "instructuie", "tokens", "jsonl")
QUERY_KEYS = ("reader", "sets", "streaming", "revision")
# rner/utils.py `is_valid_label`: labels that mean "no entity" in the InstructUIE files.
NON_ENTITY_LABELS = frozenset({"", "na", "n a", "misc", "else", "other", "nan"})
_SPEC = re.compile(
    r"hf:(?P<location>[^:@?]+)(?::(?P<config>[^@?]+))?(?:@(?P<split>[^?]+))?(?:\?(?P<query>.*))?"
)


@dataclass(frozen=True)
class Source:
    """A parsed `hf:` source (grammar in the module docstring)."""

    spec: str
    location: str
    config: str | None = None
    split: str = "train"
    layout: str = "auto"
    sets: tuple[str, ...] = ()
    streaming: bool = False
    revision: str | None = None  # of a hub dataset

    @property
    def local(self) -> bool:
        """A path on this machine (a stand-in for a hub id, or the user's own copy)."""
        return self.location.startswith((".", "/", "~")) or Path(self.location).expanduser().exists()

    @property
    def repo(self) -> str | None:
        """The hub repository id, None for a local source."""
        return None if self.local else "/".join(self.location.split("/")[:2])

    @property
    def subdir(self) -> str | None:
        """The folder inside a hub repository (`OWNER/NAME/SUBDIR`), None for the whole of it."""
        if self.local:
            return None
        return "/".join(self.location.split("/")[2:]) or None

    @property
    def name(self) -> str:
        """Dataset name for messages and resume keys: the config, else the location's last part (a
        file's stem)."""
        return self.config or Path(self.location.rstrip("/")).stem


def file_source(path: str | Path, layout: str) -> Source:
    """A local file read as a source of `layout` (a path is not parsed: it may hold `@`, `:` or `?`)."""
    if not Path(path).expanduser().is_file():  # not taken for a hub id
        raise DataError(path, None, "no such file")
    return Source(spec=str(path), location=str(path), layout=layout)


def is_source(spec: object) -> bool:
    """Whether a recipe string names a source (`hf:`) rather than a plain file."""
    return isinstance(spec, str) and spec.startswith(HUB)


def parse_source(spec: str) -> Source:
    """The parts of `spec`; a malformed one is an error that shows the grammar."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"{spec!r}: a source is hf:LOCATION[:CONFIG][@SPLIT][?reader=..&sets=..]")
    query: dict[str, str] = {}
    for item in filter(None, (match["query"] or "").split("&")):
        key, _, value = item.partition("=")
        if key not in QUERY_KEYS:
            raise ValueError(f"{spec!r}: unknown option {key!r}; known: {list(QUERY_KEYS)}")
        query[key] = value
    layout = query.get("reader", "auto")
    if layout not in LAYOUTS:
        raise ValueError(f"{spec!r}: reader {layout!r}: choose one of {list(LAYOUTS)}")
    sets = tuple(s.strip() for s in query.get("sets", "").split(",") if s.strip())
    source = Source(
        spec=spec,
        location=match["location"].rstrip("/"),
        config=match["config"],
        split=match["split"] or "train",
        layout="instructuie" if sets and layout == "auto" else layout,
        sets=sets,
        streaming=query.get("streaming", "false").lower() == "true",
        revision=query.get("revision") or None,
    )
    if not source.local and source.location.count("/") < 1:
        raise ValueError(f"{spec!r}: {source.location} is neither a local path nor a hub id OWNER/NAME")
    if source.local and source.revision:
        raise ValueError(f"{spec!r}: revision= is a hub dataset's commit; {source.location} is a local path")
    return source


# --- loading -----------------------------------------------------------------------------------------


def load_source_sets(
    spec: str | Source,
    schema: Schema | None = None,
    on_error: OnError = "raise",
    limit: int | None = None,
    name: str | None = None,
) -> list[tuple[Dataset, list[str | None]]]:
    """Each dataset of a source (one per `sets=` entry, named after it; else one, named `name` or
    `Source.name`) with its rationales (NER-CoT `cot`, None elsewhere), example by example; at most
    `limit` examples each (streamed sources stop there)."""
    source = spec if isinstance(spec, Source) else parse_source(spec)
    if source.sets:
        return [_load_set(source, set_name, schema, on_error, limit) for set_name in source.sets]
    return [_load_dataset(source, schema, on_error, limit, name or source.name)]


def load_source(
    spec: str | Source, schema: Schema | None = None, on_error: OnError = "raise", name: str | None = None
) -> Dataset:
    """All datasets of a source as one `Dataset` (what `readers.read_dataset(spec, "hf")` returns)."""
    parts = [dataset for dataset, _ in load_source_sets(spec, schema, on_error, name=name)]
    if len(parts) == 1:
        return parts[0]
    return Dataset(
        [e for d in parts for e in d.examples],
        Schema.union(d.schema for d in parts),
        name or (spec if isinstance(spec, Source) else parse_source(spec)).name,
        [m for d in parts for m in d.skipped],
        [m for d in parts for m in d.notes],
        list(dict.fromkeys(c for d in parts for c in d.corpora)),
    )


def _set_file(source: Source, name: str, filename: str) -> str:
    """The path here of `filename` of the set `name` of an InstructUIE tree: a hub file through the
    Hugging Face cache (downloaded once, read offline after), as models are."""
    if source.local:
        return str(Path(source.location).expanduser() / name / filename)
    from huggingface_hub import hf_hub_download

    inside = "/".join(part for part in (source.subdir, name, filename) if part)
    return hf_hub_download(source.repo or "", inside, repo_type="dataset", revision=source.revision)


def _load_dataset(
    source: Source, schema: Schema | None, on_error: OnError, limit: int | None, name: str
) -> tuple[Dataset, list[str | None]]:
    import datasets

    location = Path(source.location).expanduser()
    if source.local and location.is_file() and location.suffix in (".json", ".jsonl"):
        # Read here, as its own reader would, so that a bad record is named by its file and line.
        collector = RecordCollector(str(location), schema, on_error, name, numbered=True)
        items = json_items(location, read_file_text(location), collector)
        head = list(itertools.islice(items, LAYOUT_ROWS))  # the rest is parsed as it is read
        columns = set().union(*(row for _, _, row in head if isinstance(row, dict)))
        layout = source.layout if source.layout != "auto" else _layout(columns, source.spec)
        if layout != "tokens":
            return _collect(collector, itertools.islice(itertools.chain(head, items), limit), layout, None)
    if source.local and location.is_file():
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
            location.suffix, "json"
        )
        try:
            hf = datasets.load_dataset(
                builder,
                data_files={source.split: str(location)},
                split=source.split,
                streaming=source.streaming,
            )
        except datasets.exceptions.DatasetGenerationError as error:  # the cause says what and where
            raise DataError(
                location, None, f"not readable as {builder}: {error.__cause__ or error}"
            ) from None
    elif source.local:
        hf = datasets.load_dataset(
            str(location), source.config, split=source.split, streaming=source.streaming
        )
    else:
        hf = _load_hub_dataset(source)
    columns = set(hf.column_names or next(iter(hf)).keys())
    layout = source.layout if source.layout != "auto" else _layout(columns, source.spec)
    if layout == "tokens":
        if limit is not None and not hasattr(hf, "select"):  # streamed: the first rows alone are read
            hf, limit = hf.take(limit), None
        dataset = from_hf(hf, schema=schema, name=name, on_error=on_error, where=source.spec, limit=limit)
        return dataset, [None] * len(dataset.examples)
    rows = itertools.islice(hf, limit)
    collector = RecordCollector(source.spec, schema, on_error, name, numbered=True)
    return _collect(collector, ((index, None, row) for index, row in enumerate(rows)), layout, None)


# The Hub's Parquet export of a dataset that still ships a loading script (e.g. DFKI-SLT/cross_ner's
# cross_ner.py), which `datasets` >= 4 no longer runs.
PARQUET_EXPORT = "refs/convert/parquet"


def _load_hub_dataset(source: Source) -> Any:
    """`datasets.load_dataset` of a hub id; a repository that still has a loading script is read from
    the Hub's Parquet export of it instead, with a warning, and offline from that export's files in the
    hub cache (where `datasets` looks for the script's configs and finds none)."""
    import datasets

    options = {"split": source.split, "data_dir": source.subdir, "streaming": source.streaming}
    if source.revision:
        options["revision"] = source.revision
    try:
        return datasets.load_dataset(source.repo, source.config, **options)
    except RuntimeError as error:
        if "Dataset scripts are no longer supported" not in str(error):
            raise
        if source.revision:
            raise ValueError(
                f"{source.spec}: {source.repo} has a loading script, so it is read from the Hub's Parquet "
                f"export ({PARQUET_EXPORT}), which follows the latest commit: revision= cannot pin it. Leave "
                "it out: a training run still refuses a relaunch whose rows changed"
            ) from None
        logger.warning("%s: %s; reading its Parquet export (%s)", source.repo, error, PARQUET_EXPORT)
        return _parquet_export(source, cached_only=False)
    except (ConnectionError, ValueError) as error:
        if not (datasets_offline() or hub_offline()) or source.revision:  # the hub's blocks datasets' calls
            raise
        try:
            return _parquet_export(source, cached_only=True)
        except Exception:  # noqa: BLE001 - not read before from an export: the error is `datasets`'
            raise error from None


def _parquet_export(source: Source, cached_only: bool) -> Any:
    """A config's split of the Hub's Parquet export (laid out as <config>/<split>/*.parquet), downloaded
    into the hub cache (or, `cached_only`, found there) and read as local Parquet files."""
    import datasets
    from huggingface_hub import snapshot_download

    pattern = f"{source.config or 'default'}/{source.split}/*.parquet"
    folder = snapshot_download(
        source.repo or "",
        repo_type="dataset",
        revision=PARQUET_EXPORT,
        allow_patterns=[pattern],
        local_files_only=cached_only,
    )
    files = sorted(str(path) for path in Path(folder).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{source.repo}: no {pattern} in its Parquet export ({PARQUET_EXPORT})")
    return datasets.load_dataset(
        "parquet", data_files={source.split: files}, split=source.split, streaming=source.streaming
    )


def _load_set(
    source: Source, name: str, schema: Schema | None, on_error: OnError, limit: int | None
) -> tuple[Dataset, list[str | None]]:
    """One folder of an InstructUIE tree: `<base>/<name>/<split>.json` and its `labels.json`."""

    labels_file = _set_file(source, name, "labels.json")
    try:
        labels = json.loads(read_file_text(labels_file))
    except ValueError as error:
        raise DataError(labels_file, None, f"not JSON: {error}") from None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise DataError(labels_file, None, "not a list of labels")
    path = _set_file(source, name, f"{source.split}.json")
    where = path if source.local else f"hf://datasets/{source.location}/{name}/{source.split}.json"
    # Read here (the file is local, or in the Hub cache) so that a bad record is named by its line.
    collector = RecordCollector(where, schema, on_error, name, numbered=True)
    items = json_items(where, read_file_text(path), collector)
    return _collect(collector, itertools.islice(items, limit), source.layout, labels)


def _layout(columns: set[str], where: str) -> str:
    if {"sentence", "entities"} <= columns:
        return sentence_layout(columns)
    if "tokens" in columns:
        return "tokens"
    if {"text", "entities"} <= columns:
        return "jsonl"
    raise DataError(where, None, f"cannot tell the layout of columns {sorted(columns)}; give ?reader=")


def protocol_label(label: str) -> str | None:
    """The paper's label normalisation (lower case, stripped), None for a non-entity label; a run of
    whitespace inside becomes one space ("programming language" stays the type's name)."""
    label = " ".join(label.split()).lower()
    return None if label in NON_ENTITY_LABELS else label


def _collect(
    collector: RecordCollector,
    rows: Iterable[tuple[int, int | None, Any]],
    layout: str,
    labels: list[str] | None,
) -> tuple[Dataset, list[str | None]]:
    """`(index, line, row)` -> examples through the readers' collector (errors and notes name its file,
    the row's line where it has one, and its index: a row skipped as malformed keeps the later rows'
    indices, which pair predictions with gold sentences by position)."""
    where, name = collector.path, collector.name
    if labels is None and collector.schema is not None:  # the label set the caller gave (`--labels`)
        labels = list(collector.schema.labels)
    rationales: dict[int, str | None] = {}  # by row: two rows may share an id
    corpora: dict[str, None] = {}
    unlocated = 0
    for index, line, row in rows:
        try:
            if not isinstance(row, dict):
                raise TypeError(f"a record must be an object, got {type(row).__name__}")
            if layout == "jsonl":
                text, spans, stated, row_id = jsonl_record(row)
                record, missing = RawRecord(line, index, text, spans, stated, row_id), []
            else:
                record, missing = _protocol_record(row, line, index, name, layout, labels)
        except (ValueError, TypeError) as error:
            collector.report(line, str(error), index)
            continue
        if collector.add(record, missing):
            rationales[index] = row.get("cot") if layout == "nercot" else None
            # ReasoningIE's protocol writes `source`; the NER-CoT release on the Hub names it `dataset`.
            corpus = row.get("source") or row.get("dataset")
            if isinstance(corpus, str) and corpus.strip():
                corpora[corpus.strip()] = None
            unlocated += sum(what.endswith("is not in the sentence: left out") for what in missing)
    dataset = collector.dataset()
    dataset.corpora = list(corpora)
    if unlocated:
        logger.warning(
            "%s: %d entities could not be located in their sentence (Dataset.notes)", where, unlocated
        )
    return dataset, [rationales.get(row) for row in dataset.indices]


def _protocol_record(
    row: dict[str, Any], line: int, index: int, name: str, layout: str, labels: list[str] | None
) -> tuple[RawRecord, list[str]]:
    """An NER-CoT or InstructUIE row as a record, and what could not be kept (entities not located,
    labels outside the protocol)."""
    text = row.get("sentence")
    if not isinstance(text, str):
        raise ValueError(f"field 'sentence' must be a str, got {text!r}")
    stated = labels if labels is not None else row.get("schema")
    if not (stated is None or isinstance(stated, list) and all(isinstance(x, str) for x in stated)):
        raise ValueError(f"field 'schema' must be a list of labels, got {stated!r}")
    entities = row.get("entities") or []
    if not isinstance(entities, list):
        raise ValueError(f"field 'entities' must be a list, got {entities!r}")
    key = ("text", "label") if layout == "nercot" else ("name", "type")
    mentions = [(e.get(key[0]), e.get(key[1]), e.get("pos")) for e in entities if isinstance(e, dict)]
    if stated is None:  # the gold entities' own labels would tell the model which types the sentence has
        raise ValueError(
            "no label set: no 'schema' field, and a split file read alone has not its set's labels.json "
            "(name the set instead: hf:<repo>/<path>/NER@<split>?sets=<set>, or give the labels)"
        )
    schema_labels = sorted({lab for lab in map(protocol_label, stated) if lab is not None})
    missing: list[str] = []
    kept: list[tuple[str, str, Any]] = []
    for mention, raw_label, pos in mentions:
        if not isinstance(raw_label, str):
            raise ValueError(f"entity {mention!r}/{raw_label!r}: text and label must be non-empty strings")
        label = protocol_label(raw_label)
        if label is None and mention in ("", None):
            continue  # InstructUIE's sentence without entities: one {"name": "", "type": "NA"}
        if not isinstance(mention, str) or not mention.strip():
            raise ValueError(f"entity {mention!r}/{raw_label!r}: text and label must be non-empty strings")
        if label is None or label not in schema_labels:
            missing.append(f"label {raw_label!r} of {mention!r} is outside the schema: left out")
            continue
        kept.append((mention.strip(), label, pos))
    if not schema_labels:
        raise ValueError("no usable label in the schema")
    guid = row.get("guid")
    record_id = f"{name}-{guid if guid is not None else index}"
    spans = _place(text, kept, missing)
    return RawRecord(line, index, text, spans, Schema(tuple(schema_labels)), record_id), missing


def _place(text: str, mentions: Sequence[tuple[str, str, Any]], missing: list[str]) -> list[Span]:
    """The spans of `(mention, label, pos)`: at `pos` where it covers the mention, else where
    `spans.place_mentions` puts its text (exact, else ignoring case): "Smith" listed after "John Smith"
    is the Smith outside it. A mention found only inside another is placed there (nested), one not found
    is left out, one found only in another case is placed there, a `pos` that does not cover its mention
    is corrected, and a mention stated twice at one `pos` is kept once; each is noted in `missing`."""
    spans: list[Span] = []
    by_text: list[tuple[str, str, Any]] = []
    for mention, label, pos in mentions:
        given = isinstance(pos, list) and len(pos) == 2 and all(type(p) is int for p in pos)
        if given and 0 <= pos[0] < pos[1] <= len(text) and text[pos[0] : pos[1]].strip() == mention:
            start = pos[0] + text[pos[0] : pos[1]].index(mention)
            if (span := Span(start, start + len(mention), label)) not in spans:
                spans.append(span)
            else:
                missing.append(f"entity {mention!r} ({label}) is stated twice at {pos}: kept once")
        else:
            by_text.append((mention, label, pos if given else None))

    def find(mention: str) -> list[tuple[int, int]]:
        starts = occurrences(text, mention) or occurrences(text, mention, ignore_case=True)
        return [(start, start + len(mention)) for start in starts]

    placed = place_mentions([(mention, label) for mention, label, _ in by_text], find, spans)
    for (mention, label, pos), place in zip(by_text, placed, strict=True):
        if place is None:
            why = "listed more times than it occurs" if find(mention) else "not in the sentence"
            missing.append(f"entity {mention!r} ({label}) is {why}: left out")
            continue
        if text[place.span.start : place.span.end] != mention:
            missing.append(
                f"entity {mention!r} ({label}) is in the sentence only in another case: placed there"
            )
        if place.nested:
            missing.append(f"entity {mention!r} ({label}) is only inside another entity: placed there")
        if pos is not None:
            missing.append(f"entity {mention!r}: pos {pos} does not cover it, placed at {place.span.start}")
        spans.append(place.span)
    return spans


# --- what a source is made of: the contamination check -------------------------------------------------

# Corpus families, as prefixes of a normalised name: every CrossNER domain is one family, so training
# on CrossNER music contaminates a zero-shot evaluation on CrossNER AI.
FAMILIES = (
    "crossner", "mitmovie", "mitrestaurant", "conll2003", "conll2002", "ontonotes", "genia", "ace2004",
    "ace2005", "wikiann", "wikineural", "wnut", "ncbi", "bc5cdr", "bc2gm", "bc4chemd", "anatem", "fabner",
    "findvehicle", "harveyner", "multinerd", "polyglotner", "tweetner7", "broadtw", "nercot",
)  # fmt: skip


# A corpus that a stage's training records named (NER-CoT's `source`), among the data sources of a model.
CORPUS = "corpus:"


def corpus_family(name: str) -> str | None:
    """The family a dataset name belongs to (`CrossNER_AI`, `crossner/ai`, `cross_ner` -> crossner)."""
    normal = _normal_name(name)
    return next((family for family in FAMILIES if normal.startswith(family)), None)


def _normal_name(name: str) -> str:
    """A dataset name lower-cased, letters and digits only: how names are compared."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def source_keys(spec: str) -> set[str]:
    """What training on or evaluating `spec` touches: `file:<path>`, `hub:<repo>[:config][/set]` and
    `family:<corpus family>` (the most specific known family of its names; none known: its own name).
    A corpus that training records named (`corpus:<name>`, NER-CoT's `source`) touches its family only."""
    if spec.startswith(CORPUS):
        return {_family_key([spec.removeprefix(CORPUS)])}
    if is_source(spec):
        source = parse_source(spec)
        where = (
            f"file:{Path(source.location).expanduser().resolve()}"
            if source.local
            else f"hub:{source.location}"
        )
        config = f":{source.config}" if source.config else ""
        if source.sets:
            keys = {f"{where}{config}/{name}" for name in source.sets}
            names = [[name] for name in source.sets]
        else:
            keys = {f"{where}{config}"}
            names = [[n for n in (source.config, *reversed(source.location.split("/"))) if n]]
    else:
        path = Path(spec).expanduser()
        keys = {f"file:{path.resolve()}"}
        names = [[path.stem, *reversed(path.parent.parts)]]
    return keys | {_family_key(candidates) for candidates in names}


def _family_key(names: list[str]) -> str:
    """`family:` and the most specific known family of `names`, or the first name, normalised."""
    family = next(filter(None, map(corpus_family, names)), None)
    return f"family:{family or _normal_name(names[0])}"


def overlaps(training: Iterable[str], evaluated: Iterable[str]) -> list[str]:
    """One message per evaluated source that shares a file, hub dataset or corpus family with a
    training source (empty: no contamination found)."""
    trained = {source: source_keys(source) for source in dict.fromkeys(training)}
    found = []
    for source in dict.fromkeys(evaluated):
        for other, keys in trained.items():
            shared = sorted(source_keys(source) & keys)
            if shared:
                found.append(f"{source} overlaps training source {other} ({', '.join(shared)})")
    return found


def resolvable(spec: str) -> tuple[bool, str]:
    """Whether a source can be read here without a surprise, and how: a local path exists, a hub
    dataset is in the cache, or (unless offline) the hub answers for it. Contacts the hub only when
    the dataset is not cached and `datasets` is online (`datasets_offline`)."""
    if not is_source(spec):
        exists = Path(spec).expanduser().exists()
        return exists, "exists" if exists else "no such file or directory"
    source = parse_source(spec)
    if source.local:
        return Path(source.location).expanduser().exists(), f"local {source.location}"
    # A pinned revision is asked of the hub, where it can be: the cache may hold another commit.
    if hub_cached(source.repo or "") and not (source.revision and not datasets_offline()):
        return True, "in the Hugging Face cache"
    if datasets_offline():
        why = "datasets is offline (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)"
        return False, f"not in the Hugging Face cache and {why}"
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(source.repo or "", revision=source.revision, timeout=10)
    except Exception as error:  # any failure to reach or find it is the answer
        # No answer at all (DNS, connection, timeout: the HTTP client's TransportError, whichever httpx
        # huggingface_hub brings) is not an answer that the dataset is missing.
        unreachable = any(
            cls.__name__ in ("TransportError", "ConnectionError") for cls in type(error).__mro__
        )
        why = "cannot reach the hub (offline? a proxy?)" if unreachable else "the hub does not serve it"
        return False, f"{why}: {type(error).__name__}: {str(error)[:120]}"
    return True, "reachable on the hub (downloaded at first use)"


def hub_offline() -> bool:
    """Whether huggingface_hub (models, contracts) works offline, by its own rule: `HF_HUB_OFFLINE`, or
    `TRANSFORMERS_OFFLINE` where that is unset. Read at each call, as tests and launchers set it late."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ENV_VARS_TRUE_VALUES


def datasets_offline() -> bool:
    """Whether `datasets` (Hub sources) works offline, by its own rule: `HF_DATASETS_OFFLINE` when set
    (`0` too), else the hub's. `HF_DATASETS_OFFLINE=1` alone leaves models online."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_DATASETS_OFFLINE")
    return hub_offline() if value is None else value.upper() in ENV_VARS_TRUE_VALUES


def hub_cached(repo: str, kind: str = "datasets") -> bool:
    """Whether the hub cache holds a snapshot of `repo` (`kind`: datasets or models)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    folder = Path(HF_HUB_CACHE) / f"{kind}--{repo.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())

"""Stage 1 records: what `cot` writes and stages 2 and 3 read, one JSON object per line.

Each record is one input sentence with its gold (`text`, `entities`, `labels`, `descriptions`),
the teacher's `rationale` and `answer` in `output_format`, its scores, its `status`, its resume
`key` and the `settings` that shaped it (the full layout: `cot.build_record`). The status is
`accepted` (the `accepted` flag is true), `rejected` (below the thresholds, or an answer that does
not parse: `reason` says so) or `failed` (no usable teacher reply; `reason` says why, and the scores
are null: a failure is not an F1 of 0). Training uses only the accepted records.
This module reads them, so that the training stages depend on the data, not on the stage that made it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reasoningner.spans import Example, Schema, spans_from_dicts

RECORD_KEYS = frozenset({"key", "rationale", "answer", "accepted"})
STATUSES = ("accepted", "rejected", "failed")


def parse_record(line: str | bytes, where: str) -> dict[str, Any]:
    """One line of a stage 1 file; errors name `where` (path:line), not just a JSON column."""
    try:
        record = json.loads(line)
    except ValueError as error:  # also undecodable bytes
        raise ValueError(f"{where}: not a JSON record ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object")
    return record


def numbered_lines(path: str | Path) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """`(path:line, the line as read, record)` for every record of a stage 1 file, in file order.

    Lines end at "\\n" only: `str.splitlines` would also split inside a text holding U+2028 or U+0085,
    which JSON leaves unescaped. A last line without its newline that does not parse is a record whose
    writer was killed mid-line: the error says so (a rerun of that writer repairs the file).
    """
    lines = Path(path).read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if number == len(lines):
            try:
                yield where, line, parse_record(line, where)
            except ValueError:
                raise ValueError(
                    f"{where}: half-written last record (its run was killed while writing it; "
                    "rerunning that run repairs and completes the file)"
                ) from None
        else:
            yield where, line, parse_record(line, where)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a stage 1 file, in file order; a bad line is an error naming path:line."""
    return [record for _, _, record in numbered_lines(path)]


def record_status(record: dict[str, Any]) -> str:
    """accepted, rejected or failed; records written before failures were recorded have no status."""
    return record.get("status") or ("accepted" if record["accepted"] else "rejected")


def is_cot_file(path: str | Path) -> bool:
    """Stage 1 output: JSONL whose records carry a rationale and a key."""
    with open(path, "rb") as handle:  # bytes: a file that is not UTF-8 is for its reader to name
        first = handle.readline()
    try:
        record = json.loads(first)
    except ValueError:  # UnicodeDecodeError included
        return False
    return isinstance(record, dict) and record.keys() >= RECORD_KEYS


def record_example(record: dict[str, Any]) -> Example:
    """The gold example a record was made from."""
    # Loaded through `datasets`, descriptions become a struct over all labels seen, None where unset.
    descriptions = {k: v for k, v in (record.get("descriptions") or {}).items() if v is not None}
    schema = Schema(tuple(record["labels"]), descriptions)
    return Example(record["text"], spans_from_dicts(record["entities"]), schema, record["id"])

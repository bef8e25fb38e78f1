"""Stage 1 records: what `cot` writes and stages 2 and 3 read, one JSON object per line.

Each record is one input sentence with its gold (`text`, `entities`, `labels`, `descriptions`),
the teacher's `rationale` and `answer` in `output_format`, its scores, whether it was `accepted`,
and its resume `key` (the full layout: `cot.build_record`). This module reads them, so that the
training stages depend on the data, not on the stage that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reasoningner.spans import Example, Schema, spans_from_dicts

RECORD_KEYS = frozenset({"key", "rationale", "answer", "accepted"})


def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def is_cot_file(path: str | Path) -> bool:
    """Stage 1 output: JSONL whose records carry a rationale and a key."""
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and record.keys() >= RECORD_KEYS


def record_example(record: dict[str, Any]) -> Example:
    """The gold example a record was made from."""
    # Loaded through `datasets`, descriptions become a struct over all labels seen, None where unset.
    descriptions = {k: v for k, v in (record.get("descriptions") or {}).items() if v is not None}
    schema = Schema(tuple(record["labels"]), descriptions)
    return Example(record["text"], spans_from_dicts(record["entities"]), schema, record["id"])

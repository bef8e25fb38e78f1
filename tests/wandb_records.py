"""Read what an offline W&B run wrote, to check it in tests without a W&B server.

wandb 0.31 has no Python reader for its `.wandb` files: they are a LevelDB-style log (a 7-byte
`:W&B` header, then 32 KiB blocks of records with 7-byte headers: crc32, length, type) holding
`wandb_internal_pb2.Record` protobufs, which this module decodes.
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _records(data: bytes) -> list[bytes]:
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under `wandb_dir`, oldest first."""
    runs = []
    for path in sorted(Path(wandb_dir).rglob("run-*.wandb")):
        run = OfflineRun()
        for raw in _records(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.group, run.job_type = record.run.run_group, record.run.job_type
                run.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "summary":
                run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "history":
                run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        runs.append(run)
    return runs

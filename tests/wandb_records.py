"""Read what an offline W&B run wrote, to check it in tests without a W&B server.

wandb 0.31 has no Python reader for its `.wandb` files: they are a LevelDB-style log (a 7-byte
`:W&B` header, then 32 KiB blocks of records with 7-byte headers: crc32, length, type) holding
`wandb_internal_pb2.Record` protobufs, which this module decodes.

Artifacts come as `artifact` records: an output (`log_artifact`), or an input when `use_after_commit` is
set (what `use_artifact` of a new artifact logs, and all an offline run can record of an input; the
`use_artifact` record is only for artifacts already on a server). A logged table is a `table-file`
entry in the summary pointing to its JSON under the run's `files/`, which `tables` loads.
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
class OfflineArtifact:
    name: str
    type: str
    digest: str
    used: bool  # an input of the run, not an output
    files: dict[str, str]  # path in the artifact -> the reference it points to ("" when uploaded)
    metadata: dict[str, Any]


@dataclass
class OfflineRun:
    id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    exit_code: int | None = None  # None: the run has not ended (or was killed)
    tables: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # key -> {"columns": [...], "data": [...]}

    @property
    def inputs(self) -> list[OfflineArtifact]:
        return [a for a in self.artifacts if a.used]

    @property
    def outputs(self) -> list[OfflineArtifact]:
        """Logged artifacts, without the `run_table` ones W&B makes for each logged table."""
        return [a for a in self.artifacts if not a.used and a.type != "run_table"]


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
                run.id, run.group, run.job_type = record.run.run_id, record.run.run_group, record.run.job_type
                run.name = record.run.display_name
                run.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "summary":
                run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "history":
                run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "artifact":
                run.artifacts.append(_artifact(record.artifact))
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        run.tables = _tables(path.parent, run.summary)
        runs.append(run)
    return runs


def _artifact(record: Any) -> OfflineArtifact:
    return OfflineArtifact(
        name=record.name,
        type=record.type,
        digest=record.digest,
        used=record.use_after_commit,
        files={entry.path: entry.ref for entry in record.manifest.contents},
        metadata=json.loads(record.metadata or "{}"),
    )


def _tables(run_dir: Path, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The last version of every table the run logged, by key."""
    keys = [
        k.removesuffix("/_type") for k, v in summary.items() if k.endswith("/_type") and v == "table-file"
    ]
    return {
        key: json.loads((run_dir / "files" / summary[f"{key}/path"]).read_text(encoding="utf-8"))
        for key in keys
    }

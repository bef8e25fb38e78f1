"""Lineage and experiment tracking shared by every stage.

Lineage: each stage writes `manifest.json` beside its output: the stage, its full config, the
hash of every input file, the manifests of the stages it consumed (found beside its inputs), the
library versions and the git commit. A model or dataset can then be traced back to the exact
data and code that made it.

W&B: all stages of one pipeline run share a group (default: the parent of the output directory,
`outputs/<run>/<stage>` -> `<run>`; `WANDB_RUN_GROUP` overrides it), each stage is a job type, and
each run carries the manifest in its config. Trainer stages log through `report_to`; the others
through `wandb_run`. W&B stays optional: with `report_to: none` nothing is imported. Without a
network, set `WANDB_MODE=offline`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PACKAGES = (
    "reasoningner",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "deepspeed",
    "vllm",
)


FULL_HASH_LIMIT = 64 << 20  # bytes; larger files (model weights) get a sampled fingerprint


def fingerprint(path: str | Path) -> str:
    """sha256 of a file, or of every file below a directory (relative names included).

    Files up to `FULL_HASH_LIMIT` are hashed whole; larger ones (weights) by size plus their first
    and last MiB, so that fingerprinting an 8B checkpoint does not read 16 GB on every launch.
    """
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        size = file.stat().st_size
        with file.open("rb") as handle:
            if size <= FULL_HASH_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(str(size).encode())
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def git_commit() -> dict[str, Any]:
    """The commit of the code that ran, and whether the working tree had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def config_dict(*configs: Any) -> dict[str, Any]:
    """Dataclass configs merged into one JSON-able dict (later ones win on shared keys)."""
    merged: dict[str, Any] = {}
    for config in configs:
        values = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
        merged.update(values)
    return json.loads(json.dumps(merged, default=str))


def upstream_manifest(path: str | Path) -> Path | None:
    """The manifest of the stage that produced `path` (a file or a model directory), if any."""
    path = Path(path)
    for folder in (path, path.parent) if path.is_dir() else (path.parent,):
        if (folder / MANIFEST).is_file():
            return folder / MANIFEST
    return None


def build_manifest(stage: str, config: dict[str, Any], inputs: Iterable[str | Path]) -> dict[str, Any]:
    """What went into a stage's output: config, hashed inputs, consumed manifests, versions, commit."""
    entries = []
    for item in inputs:
        path = Path(item)
        if not path.exists():  # a hub name: nothing local to hash
            entries.append({"path": str(item), "sha256": None})
            continue
        entry: dict[str, Any] = {"path": str(item), "sha256": fingerprint(path)}
        upstream = upstream_manifest(path)
        if upstream is not None:
            manifest = json.loads(upstream.read_text(encoding="utf-8"))
            entry["manifest"] = {
                "path": str(upstream),
                "sha256": fingerprint(upstream),
                "stage": manifest["stage"],
            }
        entries.append(entry)
    return {
        "stage": stage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "inputs": entries,
        "versions": versions(),
        "git": git_commit(),
    }


def write_manifest(
    output_dir: str | Path, manifest: dict[str, Any], summary: dict[str, Any] | None = None
) -> Path:
    """Write `manifest.json` (with the stage's summary, when it has one) into `output_dir`.

    A manifest already there (an earlier attempt of a resumed run) is kept, whole, in `history`:
    the past is never rewritten.
    """
    path = Path(output_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        history = [*previous.pop("history", []), previous]
    payload = manifest | ({"summary": summary} if summary is not None else {}) | {"history": history}
    _write_json(path, payload)
    return path


def _write_json(path: Path, payload: Any) -> None:
    """Written whole or not at all (a kill mid-write leaves the previous file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)


# --- a run's identity: its settings ------------------------------------------------------------------

RUN_SETTINGS = "run_settings.json"
# Settings that may change between the attempts of one run: where and how it logs, saves, evaluates and
# reports, how long it goes on, and how it is launched. Every other setting is part of the run.
OPERATIONAL_PREFIXES = ("logging_", "log_", "save_", "eval_", "dataloader_", "hub_", "ddp_", "vllm_")
OPERATIONAL = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "local_rank", "report_to",
        "run_name", "disable_tqdm", "push_to_hub", "max_steps", "num_train_epochs", "deepspeed",
        "per_device_eval_batch_size", "num_completions_to_print", "skip_memory_metrics", "use_cpu",
    }
)  # fmt: skip


def run_settings(config: dict[str, Any], also_operational: Iterable[str] = ()) -> dict[str, Any]:
    """The settings that make a run what it is: `config` without the operational ones."""
    skip = OPERATIONAL | set(also_operational)
    return {k: v for k, v in config.items() if k not in skip and not k.startswith(OPERATIONAL_PREFIXES)}


def claim_output_dir(
    output_dir: str | Path,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    stale: Iterable[str],
    write: bool = True,
) -> bool:
    """Check that `output_dir` is free or holds an earlier attempt of this very run; True to resume.

    The first attempt records its `settings` (`run_settings`) in `run_settings.json`. A later one
    with the same settings resumes; with other settings it is an error saying what differs, unless
    `overwrite`: then the files matching the `stale` patterns (checkpoints, annotations) are removed
    and the run starts afresh. `write=False` (the other ranks of a distributed run) only checks.
    """
    output_dir = Path(output_dir)
    path = output_dir / RUN_SETTINGS
    settings = json.loads(json.dumps(settings, default=str))
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    leftovers = [p for pattern in stale for p in output_dir.glob(pattern)]
    if overwrite:
        if write:
            for leftover in leftovers:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            _write_json(path, settings)
        return False
    if earlier is None:
        if leftovers:
            logger.warning("%s has no %s: resuming without checking its settings", output_dir, RUN_SETTINGS)
        elif write:
            output_dir.mkdir(parents=True, exist_ok=True)
            _write_json(path, settings)
        return bool(leftovers)
    differences = [
        f"{key}: {earlier.get(key, '<unset>')!r} -> {settings.get(key, '<unset>')!r}"
        for key in sorted(earlier.keys() | settings.keys())
        if earlier.get(key) != settings.get(key)
    ]
    if differences:
        raise ValueError(
            f"{output_dir} holds a run with other settings ({'; '.join(differences)}): "
            "rerun with --overwrite_output_dir true to start afresh there, or choose another output_dir"
        )
    return True


# --- secrets -------------------------------------------------------------------------------------------

SECRET_ARGUMENTS = ("hub_token",)


def keep_secrets_out(config: Any) -> None:
    """Move secrets given as arguments (`--hub_token`) into the environment, where the Hub client reads
    them, so that no config dump (W&B, `training_args.bin`, manifests, logs) or recorded command line
    holds them."""
    for name in SECRET_ARGUMENTS:
        value = getattr(config, name, None)
        if value:
            os.environ["HF_TOKEN"] = value
            setattr(config, name, None)
    redacted, hide_next = [], False
    for arg in sys.argv:
        flag, _, inline = arg.partition("=")
        if hide_next:
            redacted.append("<redacted>")
        elif flag.lstrip("-") in SECRET_ARGUMENTS and inline:
            redacted.append(f"{flag}=<redacted>")
        else:
            redacted.append(arg)
        hide_next = arg.lstrip("-") in SECRET_ARGUMENTS
    sys.argv[:] = redacted


def run_group(output_dir: str | Path) -> str:
    return os.environ.get("WANDB_RUN_GROUP") or Path(output_dir).resolve().parent.name


def wants_wandb(report_to: str | list[str] | None) -> bool:
    if report_to is None:
        return False
    targets = [report_to] if isinstance(report_to, str) else list(report_to)
    return "wandb" in targets or "all" in targets


def set_trainer_run(stage: str, output_dir: str | Path) -> None:
    """Make the Trainer's W&B callback join the pipeline's group with this stage as job type."""
    os.environ.setdefault("WANDB_PROJECT", "reasoningner")
    os.environ["WANDB_RUN_GROUP"] = run_group(output_dir)
    os.environ["WANDB_JOB_TYPE"] = stage


@contextmanager
def wandb_run(stage: str, output_dir: str | Path, manifest: dict[str, Any], enabled: bool) -> Iterator[Any]:
    """A W&B run for a stage without a Trainer (CoT, eval); yields None when W&B is off."""
    if not enabled:
        yield None
        return
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "reasoningner"),
        group=run_group(output_dir),
        job_type=stage,
        config={"manifest": manifest, **manifest["config"]},
        dir=os.environ.get("WANDB_DIR"),
    )
    try:
        yield run
    finally:
        run.finish()


def record_trainer_stage(
    stage: str, trainer: Any, configs: Iterable[Any], inputs: Iterable[str | Path]
) -> None:
    """After training: the manifest (with the last logged metrics) beside the model, and in W&B."""
    if not trainer.accelerator.is_main_process:
        return
    manifest = build_manifest(stage, config_dict(*configs), inputs)
    history = trainer.state.log_history
    write_manifest(trainer.args.output_dir, manifest, history[-1] if history else {})
    if wants_wandb(trainer.args.report_to):
        import wandb

        if wandb.run is not None:
            wandb.run.config.update({"manifest": manifest}, allow_val_change=True)

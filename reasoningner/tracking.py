"""Lineage and experiment tracking shared by every stage.

Lineage: each stage writes `manifest.json` beside its output: the stage, its full config, the
hash of every input file, the manifests of the stages it consumed (found beside its inputs), the
library versions and the git commit. A model or dataset can then be traced back to the exact
data and code that made it.

W&B: every stage of one pipeline run logs to one group, the pipeline id (`pipeline_id`: given,
inherited from the manifests of the inputs, or made by the first stage) that every manifest records;
each stage is a job type and each run carries its manifest in its config. Each stage uses its inputs
and logs its outputs as artifacts named so that one stage's output is the next one's input (data ->
annotations -> SFT model -> RL model -> evaluation): the lineage graph. Trainer stages log through
`report_to` (`set_trainer_run`, `record_trainer_stage`); the others through `wandb_run`. W&B stays
optional: with `report_to: none` nothing of it is imported. Without a network, `WANDB_MODE=offline`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reasoningner.files import write_whole
from reasoningner.sources import CORPUS

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


CHECKOUT = Path(__file__).resolve().parents[1]  # the repository this package runs from


def git_commit(root: Path = CHECKOUT) -> dict[str, Any]:
    """The commit of the code that ran, and whether the working tree had uncommitted changes: asked of the
    repository that tracks this code at `root` (the checkout, or one holding it as a folder); elsewhere the
    commit the docker image was built from (`REASONINGNER_GIT_COMMIT`), or None: a repository around an
    untracked copy is not its code."""
    run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, check=True)
    try:
        run(["git", "ls-files", "--error-unmatch", "reasoningner/tracking.py"])
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        # This code's folder only: a monorepo's changes elsewhere are not this code's.
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("REASONINGNER_GIT_COMMIT") or None, "dirty": None}
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
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "inputs": entries,
        "versions": versions(),
        "git": git_commit(),
    }


def data_sources(manifest: dict[str, Any]) -> list[str]:
    """Every data source that went into a stage's output: its training files (`train_files`, `datasets`)
    and the corpora its records named (`corpus:<name>`), then those of the stages it was built from,
    through the manifests recorded beside its inputs. Trainer stages record the result in their manifest
    (`data_sources`), so that a published model carries its lineage without the files it came from."""
    sources: list[str] = []
    pending, seen = [manifest], set()
    while pending:
        current = pending.pop()
        if "data_sources" in current:
            sources += current["data_sources"]
            continue
        config = current.get("config", {})
        for key in ("train_files", "datasets"):
            sources += [s for s in config.get(key) or [] if isinstance(s, str)]
        sources += [f"{CORPUS}{name}" for name in current.get("corpora", [])]
        for entry in current.get("inputs", []):
            path = Path(entry["manifest"]["path"]) if entry.get("manifest") else None
            if path is not None and path not in seen and path.is_file():
                seen.add(path)
                pending.append(json.loads(path.read_text(encoding="utf-8")))
    return list(dict.fromkeys(sources))


def write_manifest(
    output_dir: str | Path, manifest: dict[str, Any], summary: dict[str, Any] | None = None
) -> Path:
    """Write `manifest.json` (with the stage's summary, when it has one) into `output_dir`, recording the
    pipeline run it belongs to (`pipeline_id`), which the stages that read this output take on.

    A manifest already there (an earlier attempt of a resumed run) is kept, whole, in `history`:
    the past is never rewritten. A provisional one (`record_trainer_start`) is replaced: it stood for
    the run this manifest completes.
    """
    path = Path(output_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        history = previous.pop("history", [])
        if not previous.get("provisional"):
            history.append(previous)
    head = {"stage": manifest["stage"], "pipeline": _manifest_pipeline(output_dir, manifest)}  # first keys
    payload = head | manifest | ({"summary": summary} if summary is not None else {}) | {"history": history}
    _write_json(path, payload)
    return path


def _write_json(path: Path, payload: Any) -> None:
    write_whole(path, json.dumps(payload, indent=2, default=str) + "\n")


# --- a run's identity: its settings ------------------------------------------------------------------

RUN_SETTINGS = "run_settings.json"
# Settings that may change between the attempts of one run: where and how it logs, saves, evaluates and
# reports, how long it goes on, and how it is launched. Every other setting is part of the run.
# Not the vLLM settings that change what GRPO samples or how its loss weighs it (structured outputs,
# importance sampling), nor dataloader_drop_last.
OPERATIONAL_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "ddp_", "vllm_server_")
OPERATIONAL = frozenset(
    {
        "output_dir", "overwrite_output_dir", "stop_before_job_end", "resume_from_checkpoint", "local_rank",
        "report_to", "run_name", "disable_tqdm", "push_to_hub", "max_steps", "num_train_epochs", "deepspeed",
        "per_device_eval_batch_size", "num_completions_to_print", "skip_memory_metrics", "use_cpu",
        "num_generations_eval",  # held-out evaluation leaves training as it is (`HeldOutGRPOTrainer`)
        "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_group_port",
        "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    }
)  # fmt: skip


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that make a run what it is: `config` without the operational ones."""
    return {
        k: v for k, v in config.items() if k not in OPERATIONAL and not k.startswith(OPERATIONAL_PREFIXES)
    }


def claim_output_dir(
    output_dir: str | Path,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    stale: Iterable[str],
    write: bool = True,
) -> bool:
    """Check that `output_dir` is free or holds an earlier attempt of this very run; True to resume.

    Each attempt records its `settings` (`run_settings`) in `run_settings.json`. When outputs of an
    earlier attempt are there (files matching the `stale` patterns: checkpoints, a final model), one
    with the same settings resumes and one with other settings is an error saying what differs,
    unless `overwrite`: then those outputs are removed and the run starts afresh. An earlier attempt
    that left no output claims nothing. `write=False` only checks (the other ranks of a distributed run,
    and the main process before it makes the run's Hub repository).
    """
    output_dir = Path(output_dir)
    path = output_dir / RUN_SETTINGS
    settings = json.loads(json.dumps(settings, default=str))
    earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    leftovers = [p for pattern in stale for p in output_dir.glob(pattern)]
    if overwrite and write:
        for leftover in leftovers:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    if leftovers and not overwrite:
        if earlier is None:
            logger.warning("%s has no %s: resuming without checking its settings", output_dir, RUN_SETTINGS)
        else:
            changed = differences(earlier, settings)
            if changed:
                raise ValueError(
                    f"{output_dir} holds a run with other settings ({'; '.join(changed)}): rerun with "
                    "--overwrite_output_dir true to start afresh there, or choose another output_dir"
                )
    if write:  # an earlier attempt that left nothing (it failed before training) claims nothing
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)
    return bool(leftovers) and not overwrite


RUN_DATA = "run_data.json"


def claim_data(output_dir: str | Path, rows: dict[str, str], *, resuming: bool) -> None:
    """Check that a resumed run trains on the rows it started on (`rows`: name -> digest), else record
    them. Its data order resumes by position: a relaunch that reads other rows under the same names (a
    Hub dataset updated, its Parquet export rewritten, a stage-1 file grown, prompts a new version words
    otherwise) would go on with other examples, training some twice and others never."""
    path = Path(output_dir) / RUN_DATA
    if resuming and path.is_file():
        changed = differences(json.loads(path.read_text(encoding="utf-8")), rows)
        if changed:
            raise ValueError(
                f"{output_dir} holds a run that started on other training data ({'; '.join(changed)}): a "
                "Hub dataset updated, a file rewritten, or prompts this version builds otherwise; restore "
                "the data, or delete the folder (or choose another output_dir) to start afresh: "
                "overwrite_output_dir keeps a run of the same settings"
            )
        return
    if resuming:
        logger.warning(
            "%s has no %s (an earlier version's run): its rows are recorded now, unchecked",
            output_dir,
            RUN_DATA,
        )
    _write_json(path, rows)


def recorded_run(output_dir: str | Path, settings: dict[str, Any]) -> bool:
    """Whether `output_dir` records an attempt of this very run (its `run_settings.json`, the same
    settings), even one killed before it saved anything: read before `claim_output_dir` rewrites it."""
    path = Path(output_dir) / RUN_SETTINGS
    if not path.is_file():
        return False
    earlier = json.loads(path.read_text(encoding="utf-8"))
    return not differences(earlier, json.loads(json.dumps(settings, default=str)))


# Settings recorded since later versions (how a trainer run is launched, from 2026-12-04; what its inputs
# hold, from 2026-12-05): an attempt recorded before, which lacks them, is not refused for them (a run in
# flight stays resumable across the upgrade).
LATER_SETTINGS = frozenset({"world_size", "zero_stage", "input_contents"})
# What a model folder's weights are: its other files (card, manifest, checkpoints) change without it.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")  # not training_args.bin


def input_contents(paths: Iterable[str | Path]) -> list[list[str]]:
    """`[path, fingerprint]` of each local input a run reads (`fingerprint`, the first 16 hex digits; of a
    model folder, of its weight files only): a relaunch on inputs changed under the same names would
    train on something else. Pairs, not a mapping, so that a path spelled otherwise is the same input."""
    contents = []
    for path in map(Path, paths):
        if path.is_dir():
            weights = sorted(p for pattern in WEIGHT_FILES for p in path.glob(pattern))
            digest = hashlib.sha256("".join(p.name + fingerprint(p) for p in weights).encode()).hexdigest()
        elif path.is_file():
            digest = fingerprint(path)
        else:
            continue  # a Hub id: its revision is a setting of its own
        contents.append([str(path), digest[:16]])
    return contents


def differences(earlier: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """`key: before -> now` for each setting that changed."""
    return [
        f"{key}: {earlier.get(key, '<unset>')!r} -> {settings.get(key, '<unset>')!r}"
        for key in sorted(earlier.keys() | settings.keys())
        if not _same_setting(earlier.get(key), settings.get(key))
        and not (key in LATER_SETTINGS and key not in earlier)
    ]


def _same_setting(earlier: Any, now: Any) -> bool:
    """Equal, or the same local files and folders named another way (`outputs/sft`, `./outputs/sft`, its
    absolute path): a requeue script that spells a path otherwise than the first launch resumes the run
    instead of being told to start afresh."""
    if earlier == now:
        return True
    if isinstance(earlier, list) and isinstance(now, list):
        return len(earlier) == len(now) and all(map(_same_setting, earlier, now))
    if isinstance(earlier, dict) and isinstance(now, dict):
        return earlier.keys() == now.keys() and all(_same_setting(earlier[k], now[k]) for k in earlier)
    if isinstance(earlier, str) and isinstance(now, str):
        try:
            return os.path.samefile(earlier, now)
        except (OSError, ValueError):  # not both existing paths
            return False
    return False


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


# --- the pipeline run: one W&B story -----------------------------------------------------------------

PIPELINE_ENV = "REASONINGNER_PIPELINE"
UPLOAD_LIMIT = FULL_HASH_LIMIT  # bytes; a larger data file becomes a reference artifact, not an upload


def pipeline_id(output_dir: str | Path, inputs: Iterable[str | Path]) -> str:
    """The pipeline run a stage's output belongs to: its W&B group and the prefix of its artifacts' names.

    Given: W&B's own `WANDB_RUN_GROUP` (it keeps winning), else `REASONINGNER_PIPELINE`. Else inherited:
    the `pipeline` of the first input whose upstream manifest records one, so that SFT joins its CoT,
    RL its SFT model and eval its model. Else this stage starts a pipeline named after its absolute
    output_dir (`<run>-<stage>-<hash>`): the same at every relaunch and for every shard, with nothing
    stored (`run_settings.json` is compared between attempts), and another for another folder.
    """
    given = os.environ.get("WANDB_RUN_GROUP") or os.environ.get(PIPELINE_ENV)
    if given:
        return given
    inherited = list(dict.fromkeys(p for p in map(_recorded_pipeline, inputs) if p))
    if len(inherited) > 1:
        logger.warning(
            "inputs of %d pipelines %s: this stage joins %s", len(inherited), inherited, inherited[0]
        )
    if inherited:
        return inherited[0]
    folder = Path(output_dir).resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return f"{_safe_name(f'{folder.parent.name}-{folder.name}')[:80]}-{digest}"


def _recorded_pipeline(path: str | Path) -> str | None:
    """The `pipeline` recorded by the manifest of the stage that produced `path` (None: raw data, a base
    model, a Hub id, or a manifest from before pipelines were recorded)."""
    upstream = upstream_manifest(path) if Path(path).exists() else None
    return json.loads(upstream.read_text(encoding="utf-8")).get("pipeline") if upstream else None


def _manifest_pipeline(output_dir: str | Path, manifest: dict[str, Any]) -> str:
    """`pipeline_id` of a built manifest (before or after `write_manifest` recorded it)."""
    return manifest.get("pipeline") or pipeline_id(
        output_dir, [entry["path"] for entry in manifest["inputs"]]
    )


def _safe_name(text: str) -> str:
    """`text` as a W&B artifact name: letters, digits, `_`, `.` and `-` only, at most 128 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:128]


def wants_wandb(report_to: str | list[str] | None) -> bool:
    if report_to is None:
        return False
    targets = [report_to] if isinstance(report_to, str) else list(report_to)
    return "wandb" in targets or "all" in targets


def set_trainer_run(stage: str, output_dir: str | Path, inputs: Iterable[str | Path]) -> None:
    """Make the Trainer's W&B callback join the pipeline's group, with this stage as job type and the
    output folder as run name (`--run_name` wins)."""
    os.environ.setdefault("WANDB_PROJECT", "reasoningner")
    os.environ["WANDB_RUN_GROUP"] = pipeline_id(output_dir, inputs)
    os.environ["WANDB_JOB_TYPE"] = stage
    os.environ["WANDB_NAME"] = Path(output_dir).resolve().name


WANDB_RUN_ID = "wandb_run_id"
_RUN_IDS_SET_HERE: set[str] = set()  # not the user's: a later stage in this process sets its own


def continue_wandb_run(output_dir: str | Path, resuming: bool, id_file: str = WANDB_RUN_ID) -> None:
    """One W&B run per training run (or stage 1 shard) however often it is relaunched: a relaunch of
    the same run (from its checkpoints, or killed before its first) logs into the W&B run of its first
    attempt (its id kept in the output folder, in `id_file`), a fresh start (`overwrite_output_dir` over
    another run's outputs) opens a new one. A `WANDB_RUN_ID` the user set wins, except for a stage 1
    shard (an `id_file` of its own), where every shard of the run would log into that one run at once."""
    given = os.environ.get("WANDB_RUN_ID")
    if given and given not in _RUN_IDS_SET_HERE:
        if id_file != WANDB_RUN_ID:
            raise ValueError(
                f"WANDB_RUN_ID={given} is set: every shard would log into that one W&B run at once; unset "
                f"it (each shard continues a run of its own, its id in {Path(output_dir) / id_file})"
            )
        return
    path = Path(output_dir) / id_file
    run_id = path.read_text(encoding="utf-8").strip() if resuming and path.is_file() else ""
    if not run_id:
        run_id = uuid.uuid4().hex[:12]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, run_id + "\n")
    _RUN_IDS_SET_HERE.add(run_id)
    os.environ["WANDB_RUN_ID"] = run_id
    os.environ["WANDB_RESUME"] = "allow"


@contextmanager
def wandb_run(
    stage: str, output_dir: str | Path, manifest: dict[str, Any], enabled: bool, name: str | None = None
) -> Iterator[Any]:
    """A W&B run for a stage without a Trainer (CoT, eval): in its pipeline's group, named after its
    output folder (or `name`), the manifest in its config and its inputs used as artifacts. Yields None
    when W&B is off; the stage logs its outputs (`log_outputs`, `log_results`) inside."""
    if not enabled:
        yield None
        return
    import wandb

    pipeline = _manifest_pipeline(output_dir, manifest)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "reasoningner"),
        group=pipeline,
        job_type=stage,
        name=name or Path(output_dir).resolve().name,
        config={"manifest": manifest | {"pipeline": pipeline}, **manifest["config"]},
        dir=os.environ.get("WANDB_DIR"),
    )
    try:
        use_inputs(run, manifest)
        yield run
    except BaseException:
        run.finish(exit_code=1)  # a failed stage is no finished run (a requeue has ended it already)
        raise
    run.finish()


def trainer_manifest(
    stage: str,
    configs: Iterable[Any],
    inputs: Iterable[str | Path],
    corpora: Iterable[str],
    upstream: Iterable[str] = (),
) -> dict[str, Any]:
    """A trainer stage's manifest, with the `corpora` its training records named and the `data_sources`
    of the whole lineage (the contamination check), `upstream` (those of a Hub model it started from,
    whose manifest is not beside it) included."""
    manifest = build_manifest(stage, config_dict(*configs), inputs)
    manifest["corpora"] = list(dict.fromkeys(corpora))  # once each, in first-read order
    manifest["data_sources"] = list(dict.fromkeys([*data_sources(manifest), *upstream]))
    return manifest


def record_trainer_start(
    stage: str,
    output_dir: str | Path,
    configs: Iterable[Any],
    inputs: Iterable[str | Path],
    corpora: Iterable[str],
    upstream: Iterable[str] = (),
) -> None:
    """Before training, a provisional manifest (`"provisional": true`; `record_trainer_stage` replaces it):
    a checkpoint evaluated, trained further or published before the run ends carries its lineage too."""
    manifest = trainer_manifest(stage, configs, inputs, corpora, upstream)
    write_manifest(output_dir, manifest | {"provisional": True})


def record_trainer_stage(
    stage: str,
    trainer: Any,
    configs: Iterable[Any],
    inputs: Iterable[str | Path],
    before_logging: Callable[[], None] = lambda: None,
    corpora: Iterable[str] = (),
    upstream: Iterable[str] = (),
) -> None:
    """After training: the manifest beside the model (`trainer_manifest`), with the last logged metrics;
    in W&B, the manifest, the inputs used as artifacts and the model logged as the artifact the next
    stage uses. `before_logging` completes the model folder (its card) first: the artifact's digest
    covers it."""
    if not trainer.accelerator.is_main_process:
        return
    output_dir = trainer.args.output_dir
    manifest = trainer_manifest(stage, configs, inputs, corpora, upstream)
    history = trainer.state.log_history
    write_manifest(output_dir, manifest, history[-1] if history else {})
    before_logging()
    if wants_wandb(trainer.args.report_to):
        import wandb

        if wandb.run is not None:
            pipeline = _manifest_pipeline(output_dir, manifest)
            wandb.run.config.update({"manifest": manifest | {"pipeline": pipeline}}, allow_val_change=True)
            use_inputs(wandb.run, manifest)
            log_outputs(wandb.run, [output_dir])


# --- artifacts: the lineage graph ----------------------------------------------------------------------


def artifact_name(path: Path) -> str:
    """The artifact name of a local path, the same whichever stage asks: `<pipeline>-<file stem>` for a
    file a stage wrote (`<pipeline>-annotations`), `<pipeline>-<folder>` for a model folder
    (`<pipeline>-sft`; a checkpoint or `merged` below it adds its own name), and for raw data and base
    models, which no stage wrote, `<folder>-<file>` and the folder's name."""
    upstream = upstream_manifest(path)
    pipeline = json.loads(upstream.read_text(encoding="utf-8")).get("pipeline") if upstream else None
    if upstream is None or not pipeline:
        return _safe_name(path.name if path.is_dir() else f"{path.parent.name}-{path.name}")
    if not path.is_dir():
        return _safe_name(f"{pipeline}-{path.stem}")
    # A checkpoint or merged model carries a copy of its run's manifest: still named below its run.
    below_run = upstream.parent != path or path.name == "merged" or path.name.startswith("checkpoint-")
    own = f"{path.parent.name}-{path.name}" if below_run else path.name
    return _safe_name(f"{pipeline}-{own}")


def path_artifact(path: str | Path) -> Any:
    """The W&B artifact of a stage's input or output, built alike by the stage that writes it and by those
    that read it, so that W&B links them (same name, same content, same digest).

    A file (data, stage 1 annotations) is a `dataset`, uploaded (one over `UPLOAD_LIMIT` by reference). A
    folder is a `model` by reference with `checksum=False`: W&B records its files' paths and never reads,
    hashes or uploads the weights; its `manifest.json`, uploaded, makes every training a new version. A
    name that is not a local path is a Hub id, recorded as a reference that is never fetched: a data
    source `hf:OWNER/NAME[:CONFIG][@SPLIT]` (`sources`) to `https://huggingface.co/datasets/OWNER/NAME`,
    any other name (a model) to `https://huggingface.co/<id>`.
    """
    import wandb

    local = Path(path)
    if not local.exists():
        spec = str(path)
        kind = "dataset" if spec.startswith("hf:") else "model"
        hub = wandb.Artifact(_safe_name(spec.replace("/", "--")), type=kind, metadata={"hub_id": spec})
        repository = re.split(r"[:@?]", spec.removeprefix("hf:"))[0]
        folder = "datasets/" if kind == "dataset" else ""
        hub.add_reference(f"https://huggingface.co/{folder}{repository}", checksum=False)
        return hub
    local = local.resolve()
    if local.is_file():
        data = wandb.Artifact(artifact_name(local), type="dataset", metadata={"path": str(local)})
        if local.stat().st_size > UPLOAD_LIMIT:
            data.add_reference(local.as_uri(), checksum=False)
        else:
            data.add_file(str(local))
        return data
    model = wandb.Artifact(artifact_name(local), type="model", metadata={"path": str(local)})
    model.add_reference(local.as_uri(), name="model", checksum=False)
    if (local / MANIFEST).is_file():
        model.add_file(str(local / MANIFEST))
    return model


def use_inputs(run: Any, manifest: dict[str, Any]) -> None:
    """Declare the manifest's inputs as the run's input artifacts.

    `run.use_artifact` refuses offline runs (wandb 0.31: TypeError); online, for an artifact not yet on the
    server, it logs it with `use_after_commit`, which an offline run records and `wandb sync` replays:
    offline, that is done directly.
    """
    for entry in manifest["inputs"]:
        artifact = path_artifact(entry["path"])
        if run.offline:
            run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
        else:
            run.use_artifact(artifact)


def log_outputs(run: Any, paths: Iterable[str | Path]) -> None:
    """Log what a later stage reads (stage 1's annotations, a model folder) as the run's output artifacts."""
    for path in paths:
        run.log_artifact(path_artifact(path))


def log_results(run: Any, manifest: dict[str, Any], output_dir: str | Path, files: Iterable[str]) -> None:
    """Log a stage's report `files` (in `output_dir`) as its `evaluation` artifact, `<pipeline>-<folder>`."""
    import wandb

    folder = Path(output_dir).resolve()
    name = _safe_name(f"{_manifest_pipeline(folder, manifest)}-{folder.name}")
    artifact = wandb.Artifact(name, type="evaluation", metadata={"path": str(folder)})
    for file in files:
        artifact.add_file(str(folder / file))
    run.log_artifact(artifact)


# --- tables ---------------------------------------------------------------------------------------------


def mentions(entities: Iterable[Mapping[str, Any]]) -> str:
    """Entity dicts (`text`, `label`) as one readable table cell: `EU (organisation); German (misc)`."""
    return "; ".join(f"{entity['text']} ({entity['label']})" for entity in entities)


def with_gold_column(reward_funcs: Sequence[Callable[..., Any]]) -> list[Callable[..., Any]]:
    """The reward functions, the first also adding each row's gold entities to TRL's completions table.

    With `log_completions`, GRPOTrainer logs the prompt, completion, one column per reward function and
    the advantage of every completion (W&B table, `completions/*.parquet`, console sample) and hands each
    reward function `log_extra(column, values)` for more columns: with the gold beside it, a completion's
    rewards can be read. The wrapper keeps the function's name, which names its reward column.
    """
    first, *others = reward_funcs

    @functools.wraps(first)
    def first_with_gold(*args: Any, **kwargs: Any) -> Any:
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("gold", [mentions(row) for row in kwargs["entities"]])
        return first(*args, **kwargs)

    return [first_with_gold, *others]

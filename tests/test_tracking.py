"""Lineage manifests and W&B runs (offline) across the stages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasoningner.tracking import MANIFEST, build_manifest, fingerprint, run_group, write_manifest
from tests.wandb_records import read_offline_runs

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
GOLD = ["--backend", "gold-template"]  # stage 1 without a teacher model


def stage(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, **(env or {})},
    )


def test_fingerprint_changes_with_content_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    first = fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("y")
    second = fingerprint(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, fingerprint(tmp_path)}) == 3


def test_a_manifest_records_inputs_and_the_manifest_it_consumed(tmp_path):
    upstream = tmp_path / "run" / "cot"
    data = upstream / "annotations.jsonl"
    upstream.mkdir(parents=True)
    data.write_text("{}\n")
    write_manifest(upstream, build_manifest("cot", {"x": 1}, [DATA / "conll2003_mini.txt"]))
    manifest = build_manifest("sft", {"lr": 0.1}, [data, "Qwen/Qwen3-8B"])
    assert manifest["inputs"][0]["sha256"] == fingerprint(data)
    assert manifest["inputs"][0]["manifest"]["stage"] == "cot"
    assert manifest["inputs"][1] == {"path": "Qwen/Qwen3-8B", "sha256": None}
    assert manifest["versions"]["trl"] and manifest["git"].keys() == {"commit", "dirty"}
    assert run_group(upstream) == "run"


@pytest.fixture()
def offline_wandb(tmp_path):
    wandb_dir = tmp_path / "wandb-runs"
    wandb_dir.mkdir()
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_RUN_GROUP": ""}


def test_cot_logs_its_report_and_manifest_to_an_offline_wandb_run(tmp_path, offline_wandb):
    out = tmp_path / "pipeline-7" / "cot"
    args = ["--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(out), "--report_to", "wandb"]
    stage("cot", *args, *GOLD, env=offline_wandb)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["stage"] == "cot" and manifest["summary"]["sentences"] == 4
    (run,) = read_offline_runs(Path(offline_wandb["WANDB_DIR"]))
    assert (run.group, run.job_type) == ("pipeline-7", "cot")
    assert run.config["manifest"]["inputs"][0]["sha256"] == fingerprint(DATA / "conll2003_mini.txt")
    assert run.summary["acceptance_rate"] == 1.0 and run.summary["teacher_f1_mean"] == 1.0


def test_sft_joins_the_group_logs_curves_and_records_the_cot_manifest(
    tmp_path, offline_wandb, tiny_model_dir
):
    run_dir = tmp_path / "pipeline-8"
    stage("cot", "--datasets", str(DATA / "conll2003_mini.txt"), "--output_dir", str(run_dir / "cot"), *GOLD)
    stage(
        "sft", "--config", str(ROOT / "recipes/tiny-cpu/sft.yaml"),
        "--model_name_or_path", str(tiny_model_dir),
        "--train_files", str(run_dir / "cot" / "annotations.jsonl"),
        "--output_dir", str(run_dir / "sft"),
        "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2",
        "--report_to", "wandb",
        env=offline_wandb,
    )  # fmt: skip
    manifest = json.loads((run_dir / "sft" / MANIFEST).read_text())
    assert manifest["inputs"][0]["manifest"]["stage"] == "cot"
    assert manifest["summary"]["train_loss"] > 0
    (run,) = read_offline_runs(Path(offline_wandb["WANDB_DIR"]))
    assert (run.group, run.job_type) == ("pipeline-8", "sft")
    assert run.config["manifest"]["stage"] == "sft"
    assert any("train/loss" in row for row in run.history)


def test_eval_logs_a_results_table_and_writes_its_manifest(tmp_path, offline_wandb, tiny_model_dir):
    out = tmp_path / "pipeline-9" / "eval"
    stage(
        "eval", "--config", str(ROOT / "recipes/tiny-cpu/eval.yaml"),
        "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(out), "--limit", "2", "--max_new_tokens", "8", "--report_to", "wandb",
        env=offline_wandb,
    )  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["stage"] == "eval" and set(manifest["summary"]) == {"text", "exact"}
    (run,) = read_offline_runs(Path(offline_wandb["WANDB_DIR"]))
    assert (run.group, run.job_type) == ("pipeline-9", "eval")
    assert {"text/avg_f1", "exact/avg_f1"} <= run.summary.keys()
    assert run.summary["results/_type"] == "table-file"
    assert run.summary["results/nrows"] == 2 * 3  # modes x datasets

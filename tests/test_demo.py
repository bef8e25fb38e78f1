"""The CPU demo end to end, shortened (`--quick`): every stage runs and the report is complete."""

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reasoningner.metrics import Counts
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]


def pinned_numerics(**environment: str) -> list[str]:
    """ATEN_CPU_CAPABILITY, MKL_CBWR, ONEDNN_MAX_CPU_ISA and torch's kernel path in a process that loaded
    the demo with this environment (none of the three set otherwise)."""
    keys = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
    env = {k: v for k, v in os.environ.items() if k not in keys} | environment
    code = (
        f"import os, runpy; runpy.run_path({str(ROOT / 'stages' / 'demo.py')!r}, run_name='loaded'); "
        f"import torch; print(*(os.environ[k] for k in {keys!r}), torch.backends.cpu.get_cpu_capability())"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_the_demo_computes_on_the_avx2_path_unless_the_environment_says_otherwise():
    assert pinned_numerics()[:3] == ["avx2", "AVX2,STRICT", "AVX2"]
    if platform.machine() in ("x86_64", "AMD64"):  # torch's kernel path: AVX2 even on an AVX-512 CPU
        assert pinned_numerics()[3] == "AVX2"
        assert pinned_numerics(ATEN_CPU_CAPABILITY="default")[::3] == ["default", "DEFAULT"]


@pytest.mark.slow
def test_the_quick_demo_runs_every_stage_and_writes_report_and_plots(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "demo.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in (
        "stage 1 (CoT",
        "dev F1 before training",
        "stage 2 (SFT)",
        "stage 3 (GRPO)",
        "held-out mean reward",
        "outputs that parse strictly",
        "GRPO reward on the recipe's held-out prompts",
    ):
        assert line in result.stdout
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert set(summary["evals"]) == {"before", "sft", "grpo"}
    assert set(summary["rewards"]["grpo"]) == {"format", "f1", "consistency", "schema", "grounding", "total"}
    assert summary["reward_errors"]["grpo"].keys() == summary["rewards"]["grpo"].keys()
    assert list(summary["held_out_during_training"]) == ["0", "1", "2"]  # on start, then every step
    demo = load_stage("demo")
    for stage in ("sft", "grpo"):  # the bootstrap's sentences add up to the evaluation's micro counts
        micro = json.loads((tmp_path / f"eval-{stage}" / "results.json").read_text())["scores"]["text"]
        (dataset,) = micro["datasets"].values()
        total = sum(demo.sentence_counts(tmp_path / f"eval-{stage}" / "generations.jsonl"), Counts())
        assert [total.tp, total.fp, total.fn] == [dataset["micro"][k] for k in ("tp", "fp", "fn")]
    gain = summary["f1_gain"]
    assert gain["low"] <= gain["gain"] <= gain["high"]
    f1 = {stage: summary["evals"][stage]["f1"] for stage in ("sft", "grpo")}
    assert gain["gain"] == pytest.approx(f1["grpo"] - f1["sft"])
    assert "GRPO - SFT:" in result.stdout
    report = (tmp_path / "demo.md").read_text()
    assert set(summary["strict_parse"]) == {"before", "sft", "grpo"}
    assert all(0.0 <= share <= 1.0 for share in summary["strict_parse"].values())
    calibrated = summary["calibration"]
    assert list(calibrated["at_least"]) == ["0.25", "0.50", "0.75", "1.00"] and calibrated["samples"] == 4
    counts = [row["entities"] for row in calibrated["at_least"].values()]
    assert counts == sorted(counts, reverse=True)  # a higher threshold keeps a subset
    assert sum(row["entities"] for row in calibrated["exactly"].values()) == counts[0]
    for image in (
        "sft_loss.png",
        "rl_rewards.png",
        "held_out_reward.png",
        "f1_per_label.png",
        "calibration.png",
    ):
        assert (tmp_path / image).stat().st_size > 1000
        assert f"]({image})" in report
    for stage in ("cot", "sft", "rl", "eval-grpo"):
        assert (tmp_path / stage / "manifest.json").is_file()


def fake_run(f1_sft: float, f1_grpo: float, reward_sft: float, reward_grpo: float) -> dict[str, Any]:
    """What `demo.train` returns, reduced to what the seed study reads."""
    return {
        "evals": {"sft": {"f1": f1_sft}, "grpo": {"f1": f1_grpo}},
        "rewards": {"sft": {"total": reward_sft}, "grpo": {"total": reward_grpo}},
        "strict_parse": {"sft": 0.9, "grpo": 0.95},
        "train_reward": {"first_quarter": 8.0, "last_quarter": 9.0},
    }


def test_the_seed_study_reports_mean_std_and_whether_every_seed_gained(tmp_path, monkeypatch):
    demo = load_stage("demo")
    runs = {  # (reasoning, seed) -> the run: reasoning gains on every seed, answer-only loses on seed 1
        (True, 0): fake_run(0.40, 0.42, 9.0, 9.2),
        (True, 1): fake_run(0.41, 0.44, 9.1, 9.4),
        (True, 2): fake_run(0.39, 0.415, 8.9, 9.15),
        (False, 0): fake_run(0.30, 0.31, 8.0, 8.1),
        (False, 1): fake_run(0.32, 0.31, 8.2, 8.1),
        (False, 2): fake_run(0.31, 0.33, 8.1, 8.3),
    }
    trained: list[tuple[Path, int, bool]] = []

    def train(_demo, _model, _annotations, folder, seed, reasoning):
        trained.append((folder, seed, reasoning))
        return runs[reasoning, seed]

    monkeypatch.setattr(demo, "prepare", lambda d: (tmp_path / "model", tmp_path / "cot.jsonl", {}))
    monkeypatch.setattr(demo, "train", train)
    assert demo.main(["--seeds", "0", "1", "2", "--jobs", "2", "--out", str(tmp_path)]) == 0

    assert sorted((f.relative_to(tmp_path).as_posix(), s, r) for f, s, r in trained) == sorted(
        (f"seed-{s}/{'reasoning' if r else 'answer-only'}", s, r) for r, s in runs
    )
    summary = json.loads((tmp_path / "seeds.json").read_text())
    reasoning, answer_only = summary["spread"]["reasoning"], summary["spread"]["answer-only"]
    gains = [2.0, 3.0, 2.5]
    assert reasoning["F1 gain"]["mean"] == pytest.approx(statistics.fmean(gains))
    assert reasoning["F1 gain"]["std"] == pytest.approx(statistics.stdev(gains))
    assert reasoning["F1 gain"]["every_seed"] and reasoning["F1 gain"]["beyond_2_std"]
    assert not answer_only["F1 gain"]["every_seed"] and not answer_only["F1 gain"]["beyond_2_std"]
    assert reasoning["reward gain"]["mean"] == pytest.approx(0.25)
    assert summary["versions"]["python"] == platform.python_version() and "trl" in summary["versions"]
    report = (tmp_path / "seeds.md").read_text()
    assert "| F1 gain | 2.50 ± 0.50 |" in report
    assert "answer-only, F1 gain: positive on every seed: no" in report


def test_dev_rows_keep_a_record_holding_a_line_separator_and_come_in_dev_file_order(tmp_path):
    """An untrained model may write U+2028, which generations.jsonl keeps raw: str.splitlines cut it."""
    demo = load_stage("demo")
    first, second = list(demo.dev_positions())[:2]
    generations = tmp_path / "generations.jsonl"
    records = [{"id": i, "variant": "normal", "output": "a\u2028b"} for i in (second, first)]
    records.append({"id": first, "variant": "opaque", "output": ""})
    generations.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    assert [(r["id"], r["output"]) for r in demo.dev_rows(generations)] == [
        (first, "a\u2028b"),
        (second, "a\u2028b"),
    ]

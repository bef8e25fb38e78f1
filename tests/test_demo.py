"""The CPU demo end to end, shortened (`--quick`): every stage runs and the report is complete."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


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
    ):
        assert line in result.stdout
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert set(summary["evals"]) == {"before", "sft", "grpo"}
    assert set(summary["rewards"]["grpo"]) == {"format", "f1", "consistency", "schema", "grounding", "total"}
    assert summary["reward_errors"]["grpo"].keys() == summary["rewards"]["grpo"].keys()
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

"""The reward benchmark still runs and its two rewards score what they should (figures are not tested)."""

from __future__ import annotations

from tests.scripts import load_script


def test_the_reward_benchmark_runs_and_pays_right_answers_most(tmp_path) -> None:
    bench = load_script("benchmarks/bench_rewards.py")
    results = bench.main(
        ["--n", "400", "--repeats", "1", "--generations", "4", "--json", str(tmp_path / "r.json")]
    )
    assert (tmp_path / "r.json").exists()
    assert results["composite_per_s"] > 0 and results["baseline_per_s"] > 0
    by_kind = results["mean_reward_by_kind"]
    assert by_kind["right"] == 14.0  # every component at 1, weights 1 + 10 + 1 + 1 + 1
    assert by_kind["unclosed"] == 0.0  # no answer, no closed rationale: nothing
    assert max(by_kind.values()) == by_kind["right"]


def test_the_baseline_is_reasoningner_f1_plus_schema() -> None:
    bench = load_script("benchmarks/bench_rewards.py")
    completion = [
        {"role": "assistant", "content": '<think>x</think>```json\n{"entities": {"person": ["Ann"]}}\n```'}
    ]
    columns = {
        "completions": [completion, completion],
        "text": ["ann ran .", "Nobody ran ."],
        "entities": [[{"start": 0, "end": 3, "label": "person"}], []],
        "labels": [["person"]] * 2,
    }
    # Right after normalisation (case), in the schema: 1 + 1; against empty gold F1 is 0, schema still 1.
    assert bench.baseline_rewards(columns, batch_size=2) == [2.0, 1.0]

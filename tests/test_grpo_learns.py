"""GRPO's wiring, checked by what it must do to a reward: raise an easy one, lower it when its sign flips.

A noisy F1 cannot tell a working stage 3 from one with a sign error, reward columns that do not line up
with their completions or an optimizer that never steps: all of them look like "no gain". An easy reward
can: the stage script (`stages/rl.py main`, the reward registry, TRL's weighting, the policy update) runs
from a random tiny model whose sampled completions differ in how many of their letters are vowels. Raised
with weight +1 and lowered with weight -1 means the reward reaches the advantages with its sign, and
the update moves the policy along them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from reasoningner import rewards
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
CONLL_MINI = ROOT / "tests" / "data" / "conll2003_mini.txt"
STEPS = 24
VOWELS = frozenset("aeiouAEIOU")


def vowel_share(completions: list[Any], **columns: Any) -> list[float]:
    """The share of the completion's letters that are vowels: easy to move, different in every sample."""
    shares = []
    for completion in completions:
        letters = [c for c in completion[0]["content"] if c.isalpha()]
        shares.append(sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0)
    return shares


def grpo_reward_curve(model: Path, out: Path, weight: float) -> list[float]:
    """The mean easy reward of each step's samples over `STEPS` GRPO steps of the stage script."""
    stage = load_stage("rl")
    args = ["--config", str(ROOT / "recipes" / "tiny-cpu" / "rl.yaml"), "--model_name_or_path", str(model),
            "--train_files", str(CONLL_MINI), "--output_dir", str(out), "--total", "16",
            "--reward_funcs", "vowels", "--reward_weights", str(weight), "--max_steps", str(STEPS),
            "--num_generations", "8", "--per_device_train_batch_size", "16",
            "--gradient_accumulation_steps", "1", "--max_completion_length", "12", "--learning_rate", "1e-2",
            "--beta", "0", "--save_strategy", "no", "--log_completions", "false"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(rewards.REWARDS, "vowels", vowel_share)
        stage.main(*stage.make_parser().parse_args_and_config(args=args))
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [row["rewards/vowel_share/mean"] for row in log if "reward" in row]


def quarters(curve: list[float]) -> tuple[float, float]:
    quarter = len(curve) // 4
    return statistics.fmean(curve[:quarter]), statistics.fmean(curve[-quarter:])


@pytest.mark.slow
@pytest.mark.parametrize("weight", [1.0, -1.0], ids=["reward", "sign-flipped"])
def test_grpo_moves_an_easy_reward_the_way_its_sign_says(
    weight: float, tiny_model_factory: Any, tmp_path: Path
) -> None:
    curve = grpo_reward_curve(tiny_model_factory(seed=1), tmp_path / "rl", weight)
    assert len(curve) == STEPS
    first, last = quarters(curve)
    assert (last - first) * weight > 0.1, (
        f"vowel share over the first and last quarter: {first:.3f} -> {last:.3f}"
    )


def test_held_out_evaluation_is_logged_and_leaves_training_as_it_is(
    tiny_model_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPO's held-out evaluation samples from the generator training samples from: the run with it must
    end with the very weights of the run without it (and does not with TRL's own GRPOTrainer), and log
    the held-out reward when asked."""
    import torch
    import trl
    from safetensors.torch import load_file

    stage = load_stage("rl")
    monkeypatch.setitem(rewards.REWARDS, "vowels", vowel_share)
    args = ["--config", str(ROOT / "recipes" / "tiny-cpu" / "rl.yaml"),
            "--model_name_or_path", str(tiny_model_factory(seed=1)), "--train_files", str(CONLL_MINI),
            "--total", "8", "--reward_funcs", "vowels", "--reward_weights", "1", "--max_steps", "2",
            "--num_generations", "4", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps",
            "1", "--max_completion_length", "12", "--learning_rate", "1e-2", "--save_strategy", "no",
            "--log_completions", "false", "--eval_files", str(CONLL_MINI), "--eval_total", "4",
            "--eval_steps", "1", "--num_generations_eval", "1",
            "--per_device_eval_batch_size", "4"]  # fmt: skip

    def weights(name: str, *extra: str) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        stage.main(*stage.make_parser().parse_args_and_config(args=[*args, *extra, "--output_dir", str(out)]))
        return load_file(out / "model.safetensors")

    plain = weights("plain", "--eval_strategy", "no", "--eval_on_start", "false")
    evaluated = weights("evaluated", "--eval_strategy", "steps", "--eval_on_start", "true")
    log = json.loads((tmp_path / "evaluated" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in log if "eval_reward" in row] == [0, 1, 2]
    assert all(torch.equal(plain[key], evaluated[key]) for key in plain)
    monkeypatch.setattr(stage, "HeldOutGRPOTrainer", trl.GRPOTrainer)
    unguarded = weights("unguarded", "--eval_strategy", "steps", "--eval_on_start", "true")
    assert any(not torch.equal(plain[key], unguarded[key]) for key in plain)

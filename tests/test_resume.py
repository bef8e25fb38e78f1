"""Trainer stages on a preemptible cluster: a kill while saving a checkpoint, reruns with the same or
other settings, values and paths that would fail late, and secrets that must not be recorded."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reasoningner import jobs, training
from reasoningner.configs import (
    CoTArguments,
    GenerationArguments,
    PromptArguments,
    PromptContract,
    TrainerScriptArguments,
    training_sources,
)
from reasoningner.cot import annotate, output_path
from reasoningner.prompts import wording
from reasoningner.tracking import (
    MANIFEST,
    RUN_SETTINGS,
    build_manifest,
    claim_output_dir,
    run_settings,
    write_manifest,
)
from reasoningner.training import last_checkpoint
from tests.scripts import load_stage

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
SFT_RECIPE = str(ROOT / "recipes" / "tiny-cpu" / "sft.yaml")
RL_RECIPE = str(ROOT / "recipes" / "tiny-cpu" / "rl.yaml")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
# `python stages/sft.py ...` whose process kills itself (SIGKILL, as a preempted node) in the middle of
# saving the checkpoint of step KILL_AT_STEP: after the weights and optimizer, before trainer_state.json.
KILL_WHILE_SAVING = """
import os, runpy, signal, sys
from transformers import Trainer
save_rng_state = Trainer._save_rng_state
def killed(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)
Trainer._save_rng_state = killed
sys.argv = ["stages/sft.py", *sys.argv[1:]]
runpy.run_path("stages/sft.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    args = CoTArguments(
        datasets=[str(DATA / "conll2003_mini.txt")], output_dir=str(tmp_path_factory.mktemp("cot"))
    )
    prompt = PromptArguments(descriptions=False, compact_prompt=True)
    annotate(args, prompt, GenerationArguments(backend="gold-template"))
    return output_path(args)


def sft_args(model: Path, annotations: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", SFT_RECIPE, "--model_name_or_path", str(model), "--train_files", str(annotations),
        "--output_dir", str(out), "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3", "--logging_steps", "1",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def sft_in_process(model: Path, annotations: Path, out: Path) -> Callable[..., None]:
    """The SFT stage run in this process on `sft_args`, given further arguments."""
    stage = load_stage("sft")

    def sft(*extra: str) -> None:
        stage.main(*stage.make_parser().parse_args_and_config(args=sft_args(model, annotations, out, *extra)))

    return sft


def grpo_args(model: Path, out: Path, *extra: str) -> list[str]:
    """Six GRPO steps of the tiny model on the mini sentences, 2 prompts a step, no evaluation."""
    return [
        "--config", RL_RECIPE, "--model_name_or_path", str(model), "--train_files",
        str(DATA / "conll2003_mini.txt"), "--total", "8", "--num_generations", "4",
        "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--max_completion_length", "8", "--max_steps", "6", "--eval_on_start", "false",
        "--eval_strategy", "no", "--log_completions", "false", "--disable_tqdm", "true",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=ENV | env, capture_output=True, text=True, timeout=600)


def test_a_kill_while_saving_a_checkpoint_resumes_from_the_one_before(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sft"
    # 4 steps an epoch: the run ends inside its second epoch, where transformers would resume a finished
    # run by one more step.
    batch_of_one = ["--per_device_train_batch_size", "1"]
    args = sft_args(tiny_model_dir, annotations, out, "--max_steps", "6", *batch_of_one)
    killed = run([sys.executable, "-c", KILL_WHILE_SAVING, *args], KILL_AT_STEP="4")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "checkpoint-4" / "model.safetensors").is_file()  # written, then cut short
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert last_checkpoint(str(out)) == str(out / "checkpoint-2")

    resumed = run([sys.executable, "stages/sft.py", *args])
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert f"skipping {out / 'checkpoint-4'}: no trainer_state.json (cut short while saving)" in log
    assert f"sft: resuming from {out / 'checkpoint-2'} in {out}" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [row["step"] for row in state["log_history"] if "loss" in row] == [1, 2, 3, 4, 5, 6]

    # Relaunched when finished, as after a kill that followed its last checkpoint: not one step more
    # (transformers would take step 7 from checkpoint-6), the same model.
    weights = (out / "model.safetensors").read_bytes()
    again = run([sys.executable, "stages/sft.py", *args])
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert f"sft: {out / 'checkpoint-6'} is the run's last step; nothing left to train" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [row["step"] for row in state["log_history"] if "loss" in row] == [1, 2, 3, 4, 5, 6]
    assert (out / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (["model-00001-of-00002.safetensors", "model.safetensors.index.json"], None),
        (["pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"], None),  # save_safetensors off
        (["adapter_model.bin"], None),
        (["training_args.bin", "optimizer.pt"], "no model weights"),
    ],
)
def test_a_checkpoint_is_complete_with_its_weights_in_any_form_transformers_saves(
    tmp_path: Path, files: list[str], problem: str | None
) -> None:
    from reasoningner.training import checkpoint_problem

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    for name in files:
        (checkpoint / name).write_bytes(b"x")
    assert checkpoint_problem(checkpoint) == problem


def steps(out: Path) -> list[dict]:
    """Each step's training log row (TRL's token count included), without the timings."""
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: v for k, v in row.items() if k != "step_time"} for row in log if "train_loss" not in row]


class Preempted(Exception):
    """Stands for a kill in `interrupted`: in this process, so that each relaunch costs no start-up."""


def interrupted(stage_name: str, args: list[str], *kills: int, saved: bool = False) -> None:
    """Run a stage in this process, stopping it while it saves step `kill` (before trainer_state.json,
    as `KILL_WHILE_SAVING`) for each of `kills` in turn, relaunching it each time; then let it finish.
    With `saved`, it stops just after the checkpoint is written (and the one before deleted), before
    the callbacks hear of it. Each relaunch starts as a new process would: seeded anew, with new samplers."""
    from transformers import Trainer

    stage = load_stage(stage_name)
    method = "_save_checkpoint" if saved else "_save_rng_state"
    save = getattr(Trainer, method)
    for kill in kills:

        def killed(self: Trainer, *args: Any, at: int = kill) -> None:
            if self.state.global_step == at and not saved:
                raise Preempted
            save(self, *args)
            if self.state.global_step == at:
                raise Preempted

        with pytest.MonkeyPatch.context() as patch, pytest.raises(Preempted):
            patch.setattr(Trainer, method, killed)
            stage.main(*stage.make_parser().parse_args_and_config(args=args))
    stage.main(*stage.make_parser().parse_args_and_config(args=args))


def test_sft_resumed_inside_a_later_epoch_trains_that_epoch_in_its_order(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path
) -> None:
    """Length-grouped batches are drawn from the random state of the epoch's start, which a new process
    does not have: without the saved order, epoch 2 resumed would repeat some sentences and skip others."""
    # 4 steps an epoch
    batch_of_one = ["--max_steps", "8", "--per_device_train_batch_size", "1", "--save_steps", "1"]
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    interrupted("sft", sft_args(tiny_model_dir, annotations, reference, *batch_of_one))
    interrupted("sft", sft_args(tiny_model_dir, annotations, resumed, *batch_of_one), 7)  # from step 6 of 5-8
    assert steps(resumed) == steps(reference)
    assert (resumed / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()

    # Killed once step 6's checkpoint is complete and step 5's deleted (save_total_limit 1), before the
    # callbacks run: that checkpoint must hold the epoch's order too.
    last_only = tmp_path / "last-only"
    last_only_args = sft_args(
        tiny_model_dir, annotations, last_only, *batch_of_one, "--save_total_limit", "1"
    )
    interrupted("sft", last_only_args, 6, saved=True)
    assert steps(last_only) == steps(reference)
    assert (last_only / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_sft_resumed_after_an_epoch_s_last_checkpoint_trains_as_if_its_evaluation_had_run(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path
) -> None:
    """The epoch-end evaluation comes after the step's checkpoint; the next epoch's order must not depend
    on whether it ran (a run resumed from that checkpoint does not run it)."""
    epochs_evaluated = ["--max_steps", "8", "--per_device_train_batch_size", "1", "--save_steps", "4",
                        "--eval_strategy", "epoch", "--eval_files", str(annotations)]  # fmt: skip
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    interrupted("sft", sft_args(tiny_model_dir, annotations, reference, *epochs_evaluated))
    interrupted("sft", sft_args(tiny_model_dir, annotations, resumed, *epochs_evaluated), 4, saved=True)
    train_rows = lambda out: [row for row in steps(out) if "loss" in row]  # noqa: E731
    assert train_rows(resumed) == train_rows(reference)
    assert (resumed / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_a_finished_run_relaunched_ends_with_its_best_checkpoint_and_the_end_of_training(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relaunch after the last checkpoint (a kill during the final save) takes no step, yet ends as the
    run would have: `load_best_model_at_end` loads the best checkpoint, and the callbacks (W&B's model
    artifact) see the end of training."""
    from transformers.trainer_callback import CallbackHandler

    out = tmp_path / "sft"
    # The highest eval loss counts as best: an early checkpoint, not the last one.
    best_is_first = ["--eval_strategy", "steps", "--eval_steps", "2", "--eval_files", str(annotations),
                     "--load_best_model_at_end", "true", "--metric_for_best_model", "loss",
                     "--greater_is_better", "true", "--max_steps", "6",
                     "--per_device_train_batch_size", "1"]  # fmt: skip
    args = sft_args(tiny_model_dir, annotations, out, *best_is_first)
    interrupted("sft", args)
    best = json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert Path(best).name != "checkpoint-6"
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").unlink()

    ended = []
    on_train_end = CallbackHandler.on_train_end
    monkeypatch.setattr(
        CallbackHandler,
        "on_train_end",
        lambda self, *a: ended.append(a[1].global_step) or on_train_end(self, *a),
    )
    interrupted("sft", args)
    assert (out / "model.safetensors").read_bytes() == weights
    assert ended == [6]


def test_grpo_resumed_in_a_later_epoch_draws_its_prompts_in_the_uninterrupted_order(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """TRL's sampler draws each epoch's prompt order from its own generator, seeded once per process and
    saved with no checkpoint: a run resumed in a later epoch would draw the first epoch's order again."""

    def grpo(out: Path) -> list[str]:
        return grpo_args(tiny_model_dir, out, "--save_steps", "1", "--save_total_limit", "3")

    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    interrupted("rl", grpo(reference))
    # 2 steps an epoch (the 4 sentences, 2 a step): resumed at the end of epoch 2 (step 4), then inside
    # epoch 3 (step 5).
    interrupted("rl", grpo(resumed), 5, 6)
    assert steps(resumed) == steps(reference)


def test_a_relaunch_on_hub_data_that_changed_under_its_name_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A Hub id has no file to fingerprint at start: the rows it read are recorded, and a relaunch that
    reads others (the dataset updated between attempts) would resume its data order on other examples."""
    hub = tmp_path / "hub" / "NER-CoT"
    shutil.copytree(DATA / "hub" / "NER-CoT", hub)
    stage, out = load_stage("rl"), tmp_path / "rl"

    def grpo(max_steps: str) -> None:
        args = grpo_args(tiny_model_dir, out, "--train_files", f"hf:{hub}@train", "--max_steps", max_steps,
                         "--save_steps", "2")  # fmt: skip
        stage.main(*stage.make_parser().parse_args_and_config(args))

    grpo("2")
    grpo("4")  # the same rows: resumed
    assert last_checkpoint(str(out)) == str(out / "checkpoint-4")
    rows = (hub / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (hub / "train.jsonl").write_text("".join(rows[1:]), encoding="utf-8")  # updated upstream
    refused = r"holds a run that started on other training data \(train: '\d+:.*delete the folder"
    with pytest.raises(ValueError, match=refused):
        grpo("6")
    assert last_checkpoint(str(out)) == str(out / "checkpoint-4")
    shutil.rmtree(out)  # as the refusal says: the same settings resume even with overwrite_output_dir
    grpo("2")  # afresh, recorded anew
    grpo("4")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the failing finish
def test_a_stop_ends_the_w_and_b_run_before_slurm_ends_the_attempt(
    slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scontrol requeue` has SLURM signal the attempt: W&B, still running then, would end "crashed".
    (A stand-in W&B: a real run started in this process would leave its service to the later tests'
    stage processes.)"""
    finished: list[int] = []
    wandb = types.SimpleNamespace(run=object(), finish=lambda exit_code: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    finished_at_requeue = []
    requeue = jobs.requeue
    monkeypatch.setattr(jobs, "requeue", lambda: finished_at_requeue.append(list(finished)) or requeue())
    with pytest.raises(SystemExit) as ended:
        jobs.stop("sft: stopped at checkpoint-4")
    assert ended.value.code == jobs.STOPPED
    assert finished_at_requeue == [[jobs.STOPPED]]
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    # A finish that hangs (a cluster's network) or fails must not keep the job from being requeued.
    monkeypatch.setattr(jobs, "WANDB_FINISH_SECONDS", 0.2)
    for finish in (lambda exit_code: time.sleep(30), lambda exit_code: 1 / 0):
        monkeypatch.setattr(wandb, "finish", finish)
        with pytest.raises(SystemExit):
            jobs.stop("sft: stopped at checkpoint-4")
    assert slurm_job.read_text().split() == ["requeue", "4242"] * 3


# Six SFT steps of one sentence, saving every fourth: a run stopped between saves must end as this one.
EVERY_FOURTH = ["--max_steps", "6", "--per_device_train_batch_size", "1", "--save_steps", "4"]


@pytest.fixture(scope="module")
def never_stopped(tiny_model_dir: Path, annotations: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of the `EVERY_FOURTH` run, uninterrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    stage = load_stage("sft")
    stage.main(
        *stage.make_parser().parse_args_and_config(sft_args(tiny_model_dir, annotations, out, *EVERY_FOURTH))
    )
    return out


def test_a_run_near_its_job_s_time_limit_stops_at_a_checkpoint_and_its_requeued_job_ends_as_one_never_stopped(
    tiny_model_dir: Path,
    annotations: Path,
    never_stopped: Path,
    tmp_path: Path,
    slurm_job: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job killed at its time limit is not requeued and loses the steps since its last checkpoint: the
    stage saves and stops in time and requeues the job, whose next attempt repeats the first command
    line, `--overwrite_output_dir true` included, and must resume, not start afresh."""
    stage = load_stage("sft")
    reference, stopped = never_stopped, tmp_path / "stopped"
    command = sft_args(tiny_model_dir, annotations, stopped, *EVERY_FOURTH, "--overwrite_output_dir", "true")
    # 600 s left, under the default 900 s: step 1 ends the attempt.
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 600))
    # The requeue has SLURM end the attempt with SIGTERM, which must not cut the stop short.
    scontrol = slurm_job.parent / "slurm-bin" / "scontrol"
    scontrol.write_text(scontrol.read_text() + 'kill -TERM "$PPID"\n')
    with default_sigterm() as reached, pytest.raises(SystemExit) as ended:
        stage.main(*stage.make_parser().parse_args_and_config(command))
    assert not reached  # the stage noted it
    assert ended.value.code == jobs.STOPPED  # a job SLURM cannot requeue fails: it is not finished
    out = capsys.readouterr().out
    assert "sft: stopped at checkpoint-1" in out and "job 4242 requeued" in out
    assert slurm_job.read_text() == "requeue 4242\n"
    assert last_checkpoint(str(stopped)) == str(stopped / "checkpoint-1")
    assert not (stopped / "model.safetensors").exists()  # not a finished model

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_JOB_END_TIME")  # a limit far off
    stage.main(*stage.make_parser().parse_args_and_config(command))
    assert f"sft: resuming from {stopped / 'checkpoint-1'}" in capsys.readouterr().out
    assert steps(stopped) == steps(reference)
    assert (stopped / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert slurm_job.read_text() == "requeue 4242\n"  # asked once


@contextlib.contextmanager
def default_sigterm() -> Iterator[list[int]]:
    """SIGTERM's default action, the end of the process, recorded instead of taken: a signal that reaches
    it was not handled by the stage."""
    reached: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: reached.append(signum))
    try:
        yield reached
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_at_step(patch: pytest.MonkeyPatch, step: int) -> None:
    """This process gets SIGTERM as the step after `step` begins."""
    from transformers.trainer_callback import CallbackHandler

    on_step_begin = CallbackHandler.on_step_begin

    def preempted(self: CallbackHandler, args: Any, state: Any, control: Any) -> Any:
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return on_step_begin(self, args, state, control)

    patch.setattr(CallbackHandler, "on_step_begin", preempted)


@pytest.mark.parametrize(
    ("signalled_at", "saved", "said"),
    [(1, 2, ": stopped at checkpoint-2"), (5, 6, " at the end of training")],  # 6: the last step's save
)
def test_sigterm_while_training_saves_at_the_next_resume_point_and_the_relaunch_ends_as_one_never_stopped(
    signalled_at: int,
    saved: int,
    said: str,
    tiny_model_dir: Path,
    annotations: Path,
    never_stopped: Path,
    tmp_path: Path,
    slurm_job: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A preemption or `scancel` sends SIGTERM, and SIGKILL after SLURM's grace: the run saves where it
    resumes from exactly instead of losing the steps since its last checkpoint, and ends with 143 without
    asking a requeue (SLURM requeues a preempted job itself; a cancelled one must stay cancelled)."""
    stage = load_stage("sft")
    reference, signalled = never_stopped, tmp_path / "signalled"
    command = sft_args(tiny_model_dir, annotations, signalled, *EVERY_FOURTH)
    with default_sigterm() as reached, monkeypatch.context() as patch, pytest.raises(SystemExit) as ended:
        sigterm_at_step(patch, signalled_at)
        stage.main(*stage.make_parser().parse_args_and_config(command))
    assert not reached
    assert ended.value.code == jobs.TERMINATED
    assert f"sft: SIGTERM (a preemption, scancel){said}" in capsys.readouterr().out
    assert not slurm_job.exists()  # no requeue asked
    # The step after the signal's (not 4), or the last: a relaunch writes the final model from it.
    assert last_checkpoint(str(signalled)) == str(signalled / f"checkpoint-{saved}")
    assert not (signalled / "model.safetensors").exists()  # not a finished model

    stage.main(*stage.make_parser().parse_args_and_config(command))
    assert f"sft: resuming from {signalled / f'checkpoint-{saved}'}" in capsys.readouterr().out
    assert steps(signalled) == steps(reference)
    assert (signalled / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


def test_sigterm_at_the_end_of_a_run_that_saves_no_checkpoint_still_saves_its_final_model(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Without a checkpoint of the last step (save_strategy no), the final save is all a relaunch would
    have: it goes on."""
    stage = load_stage("sft")
    out = tmp_path / "sft"
    command = sft_args(tiny_model_dir, annotations, out, "--max_steps", "3", "--save_strategy", "no")
    with default_sigterm() as reached, pytest.MonkeyPatch.context() as patch:
        sigterm_at_step(patch, 2)
        stage.main(*stage.make_parser().parse_args_and_config(command))
    assert not reached
    assert "sft: SIGTERM at the end of training: saving the final model" in capsys.readouterr().out
    assert (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize("why", ["time limit", "SIGTERM"])
def test_grpo_stopped_by_its_job_s_limit_or_sigterm_stops_where_its_generation_cycle_ends_and_resumes_exactly(
    why: str, tiny_model_dir: Path, tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each generation serves two optimizer steps (num_iterations 2): a stop inside that cycle would
    resume on generations of its own; at its end the relaunched run trains as one never stopped."""
    stage = load_stage("rl")

    def grpo(out: Path) -> list[str]:
        return grpo_args(tiny_model_dir, out, "--num_iterations", "2", "--save_steps", "4")

    reference, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    stage.main(*stage.make_parser().parse_args_and_config(grpo(reference)))
    with monkeypatch.context() as patch, default_sigterm() as reached, pytest.raises(SystemExit) as ended:
        if why == "SIGTERM":
            sigterm_at_step(patch, 0)
        else:
            patch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 600))  # near from the start
        stage.main(*stage.make_parser().parse_args_and_config(grpo(stopped)))
    assert not reached
    assert ended.value.code == (jobs.TERMINATED if why == "SIGTERM" else jobs.STOPPED)
    assert last_checkpoint(str(stopped)) == str(stopped / "checkpoint-2")  # not step 1, inside the cycle
    stage.main(*stage.make_parser().parse_args_and_config(grpo(stopped)))
    assert steps(stopped) == steps(reference)


SCHEDULE = {"eval_strategy": "no", "save_strategy": "steps", "logging_strategy": "steps"}


@pytest.mark.parametrize("why", ["time limit", "SIGTERM"])
@pytest.mark.parametrize(
    ("per_generation", "iterations", "accumulation", "every"),
    [(1, 1, 1, 1), (2, 1, 2, 1), (2, 4, 2, 4), (4, 1, 2, 2), (3, 2, 4, 3)],
)
def test_a_grpo_run_stops_for_its_job_s_end_or_sigterm_only_where_a_generation_cycle_ends(
    per_generation: int,
    iterations: int,
    accumulation: int,
    every: int,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from transformers import TrainerControl

    from reasoningner.training import _JobEnding, _StopBeforeJobEnd, resume_points

    args = SimpleNamespace(
        steps_per_generation=per_generation,
        num_iterations=iterations,
        gradient_accumulation_steps=accumulation,
        **SCHEDULE,
    )
    assert resume_points(args) == every
    assert resume_points(SimpleNamespace(gradient_accumulation_steps=accumulation)) == 1  # SFT
    termination = jobs.Termination()
    if why == "SIGTERM":
        termination.signal = "SIGTERM"  # from the start
    else:
        monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 60))  # near from the start
    callback = _StopBeforeJobEnd(TrainerScriptArguments(train_files=["x"]), every, termination)
    saved_at = []
    for step in range(1, 13):
        control = TrainerControl(should_evaluate=True)  # due at every step
        state = SimpleNamespace(global_step=step, max_steps=12, epoch=0.5)
        callback.on_step_end(args, state, control)
        # SLURM's grace after SIGTERM is short: the save, not the evaluation.
        assert control.should_evaluate is not (why == "SIGTERM" and control.should_save)
        if control.should_save:
            saved_at.append(step)
            with pytest.raises(_JobEnding) as ending:  # once saved: the attempt ends
                callback.on_save(args, state, control)
            assert ending.value.args == (termination.signal,)  # a signal's stop asks no requeue
        else:
            callback.on_save(args, state, control)  # another save (a strategy's) goes on
    assert saved_at == list(range(every, 12, every))


def test_the_time_a_run_stops_before_its_job_s_limit(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Its margin (0: never), the interval to the next point it may stop, an evaluation due there; and a
    job no longer than the margin, which would stop at once in every attempt, does not stop at all."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from reasoningner.training import _StopBeforeJobEnd

    now = int(time.time())
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(now + 3600))
    args, state = SimpleNamespace(**SCHEDULE), SimpleNamespace(global_step=1, max_steps=12, epoch=0.5)
    for margin, stops in ((900, False), (3600, True), (0, False)):
        control = TrainerControl()
        job = TrainerScriptArguments(train_files=["x"], stop_before_job_end=margin)
        _StopBeforeJobEnd(job, 1).on_step_end(args, state, control)
        assert control.should_save is stops
    job = TrainerScriptArguments(train_files=["x"], stop_before_job_end=900)
    assert job.job_ending(interval=3000) and not job.job_ending(interval=2000)
    for due_now, due_next in ((True, False), (False, True), (False, False)):
        callback = _StopBeforeJobEnd(job, 2)
        callback.evaluation = 3000.0  # the last evaluation took that long
        evaluated = SimpleNamespace(**{**SCHEDULE, "eval_strategy": "steps"})
        at = SimpleNamespace(
            global_step=2, max_steps=12, epoch=0.5, eval_steps=2 if due_now else 4 if due_next else 5
        )
        control = TrainerControl(should_evaluate=due_now)
        callback.on_step_end(evaluated, at, control)
        assert control.should_save is (due_now or due_next), (due_now, due_next)
    # An epoch's last step evaluates, logs or saves after the step under an epoch strategy: not there.
    control, by_epoch = TrainerControl(), SimpleNamespace(**{**SCHEDULE, "save_strategy": "epoch"})
    stopping = TrainerScriptArguments(train_files=["x"], stop_before_job_end=3600)
    _StopBeforeJobEnd(stopping, 1).on_step_end(
        by_epoch, SimpleNamespace(global_step=4, max_steps=12, epoch=1.0), control
    )
    assert not control.should_save
    monkeypatch.setenv("SLURM_JOB_START_TIME", str(now + 3600 - 600))  # a 10-minute job
    with caplog.at_level(logging.WARNING, logger="reasoningner.jobs"):
        assert not TrainerScriptArguments(train_files=["x"]).job_ending(interval=10_000)
    assert "no longer than stop_before_job_end" in caplog.text


@pytest.mark.parametrize(
    ("gathered", "lora", "refused"), [(False, False, True), (True, False, False), (False, True, False)]
)
def test_full_fine_tuning_under_zero3_must_gather_its_weights_to_save_them(
    gathered: bool, lora: bool, refused: bool
) -> None:
    """Else every checkpoint holds DeepSpeed's shards only: skipped as cut short, each relaunch would
    start at step 0, and the final model would hold no weights to load."""
    from types import SimpleNamespace

    from reasoningner.training import check_saved_weights

    plugin = SimpleNamespace(zero_stage=3, zero3_save_16bit_model=gathered)
    model = SimpleNamespace(use_peft=lora, model_name_or_path="Qwen/Qwen3-8B")
    with (
        pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save")
        if refused
        else contextlib.nullcontext()
    ):
        check_saved_weights(SimpleNamespace(deepspeed_plugin=plugin), model)
    check_saved_weights(
        SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2, zero3_save_16bit_model=False)), model
    )


def test_a_rerun_with_other_settings_is_refused_and_overwrite_starts_afresh_only_over_another_run(
    tiny_model_dir: Path,
    annotations: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "sft"
    data = Path(shutil.copy2(annotations, tmp_path / "annotations.jsonl"))
    sft = sft_in_process(tiny_model_dir, data, out)

    sft("--max_steps", "2")
    # The batch a step trains on, which a launch on more processes than a recipe was written for changes.
    assert "sft: starting at step 0" in (said := capsys.readouterr().out)
    assert "; 4 sequences an optimizer step (1 processes x 4 x 1 accumulated)" in said
    sft("--max_steps", "4", "--logging_steps", "2")  # longer, logged otherwise: the same run
    assert f"sft: resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    with pytest.raises(ValueError) as refused:
        sft("--max_steps", "6", "--learning_rate", "2e-3")
    assert "learning_rate: 0.001 -> 0.002" in str(refused.value)
    assert "--overwrite_output_dir true" in str(refused.value)
    assert (out / "checkpoint-4").is_dir()  # nothing was touched
    import transformers

    with monkeypatch.context() as patch, pytest.raises(ValueError, match=r"world_size: 1 -> 4"):
        patch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 4))
        patch.setattr(
            transformers.TrainingArguments, "main_process_first", lambda self, **_: contextlib.nullcontext()
        )
        sft("--max_steps", "6")  # requeued on 4 processes: its data position would be another
    with pytest.raises(ValueError, match=r"zero_stage: None -> 2"):  # its optimizer state is DDP's
        sft("--max_steps", "6", "--deepspeed", "recipes/accelerate/ds_zero2.json")
    original = data.read_text()
    data.write_text("".join(original.splitlines(keepends=True)[:-1]))  # rewritten under the same name
    with pytest.raises(
        ValueError, match=rf"input_contents: \[\['{re.escape(str(data))}', '[0-9a-f]{{16}}'\]"
    ):
        sft("--max_steps", "6")
    data.write_text(original)
    recorded = json.loads((out / RUN_SETTINGS).read_text())
    older = {k: v for k, v in recorded.items() if k not in ("world_size", "zero_stage", "input_contents")}
    (out / RUN_SETTINGS).write_text(json.dumps(older))  # an attempt recorded before they were
    sft("--max_steps", "4", "--logging_steps", "2")  # resumes: not refused for what it did not record
    assert "sft: resuming from" in capsys.readouterr().out
    sft("--max_steps", "2", "--learning_rate", "2e-3", "--overwrite_output_dir", "true")
    assert "sft: starting at step 0" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / RUN_SETTINGS).read_text())["learning_rate"] == 2e-3
    manifest = json.loads((out / MANIFEST).read_text())
    assert [attempt["config"]["learning_rate"] for attempt in manifest["history"]] == [1e-3] * 3
    # The same command line again (a job submitted again after a cancel or a failed node, not a requeue):
    # this very run resumes, where it used to be deleted.
    sft("--max_steps", "2", "--learning_rate", "2e-3", "--overwrite_output_dir", "true")
    assert f"sft: resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out


def test_a_second_launch_on_a_training_run_s_folder_fails_before_it_changes_anything(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path, held_elsewhere
) -> None:
    """A job submitted twice, or requeued while a lost node's ranks still write: both resumed, wrote the
    same checkpoints and rotated each other's away (and one with other settings deleted the run)."""
    out = tmp_path / "sft"
    sft = sft_in_process(tiny_model_dir, annotations, out)

    sft("--max_steps", "2")
    other_settings = ["--max_steps", "4", "--learning_rate", "2e-3"]
    for command in (["--max_steps", "2"], [*other_settings, "--overwrite_output_dir", "true"]):
        with held_elsewhere(out / "training"), pytest.raises(RuntimeError, match="being written by another"):
            sft(*command)  # the same command submitted twice; another run over it
    assert (out / "checkpoint-2").is_dir() and json.loads((out / RUN_SETTINGS).read_text())[
        "learning_rate"
    ] == 1e-3
    with pytest.raises(ValueError, match="holds a run with other settings"):
        sft(*other_settings)
    with held_elsewhere(out / "training"):
        pass  # a refused start holds no lock (a later launch in the same process, a notebook)
    sft("--max_steps", "4")  # the other writer gone: the run resumes
    assert (out / "checkpoint-4").is_dir()


@pytest.mark.parametrize(
    ("dtype", "changes", "refused"),
    [("bfloat16", {}, True), ("float16", {}, True), ("auto", {}, True), (None, {}, True),
     ("float32", {}, False), ("bfloat16", {"use_peft": True}, False),
     ("bfloat16", {"use_peft": True, "lora_modules_to_save": ["lm_head"]}, True),
     ("bfloat16", {"use_peft": True, "load_in_4bit": True}, False),
     ("bfloat16", {"deepspeed": 2}, False), ("bfloat16", {"ACCELERATE_USE_FSDP": "true"}, False)],
)  # fmt: skip
def test_full_fine_tuning_of_half_precision_weights_needs_deepspeed_s_master_weights(
    dtype: str | None, changes: dict[str, Any], refused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under DDP, torch's AdamW updates bf16 weights in place, and an update of 2e-5 of a weight of 0.02
    rounds away: such a run barely trains, silently. `auto` (and unset) take the checkpoint's dtype
    (Qwen3's bf16); LoRA's adapters are float32, not the whole modules it also trains."""
    from trl import ModelConfig, SFTConfig

    from reasoningner.training import check_trained_precision

    weight = torch.tensor(0.02, dtype=torch.bfloat16)
    assert weight - 2e-5 == weight  # what the refusal is for
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    changes = dict(changes)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    if fsdp := changes.pop("ACCELERATE_USE_FSDP", None):
        monkeypatch.setenv("ACCELERATE_USE_FSDP", fsdp)  # as accelerate launch with an FSDP config
    stage = changes.pop("deepspeed", None)
    training_args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True)
    if stage is not None:
        training_args.deepspeed_plugin = types.SimpleNamespace(zero_stage=stage)
    model_args = ModelConfig(model_name_or_path=str(tmp_path), dtype=dtype, **changes)
    expected = f"full fine-tuning of {dtype if dtype in ('bfloat16', 'float16') else 'bfloat16'} weights"
    with pytest.raises(ValueError, match=expected) if refused else contextlib.nullcontext():
        check_trained_precision(training_args, model_args)


@pytest.mark.parametrize(
    ("setting", "refused"),
    [({"sync_ref_model": True, "beta": 0.04}, "sync_ref_model: the reference model it updates is in no"),
     ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs: GRPO would render its")],
)  # fmt: skip
def test_grpo_settings_a_run_could_not_resume_with_or_a_user_could_not_ask_with_are_refused(
    setting: dict[str, Any], refused: str, tmp_path: Path
) -> None:
    from trl import GRPOConfig

    from reasoningner.training import check_resumable

    with pytest.raises(ValueError, match=refused):
        check_resumable(GRPOConfig(output_dir=str(tmp_path), use_cpu=True, **setting))
    check_resumable(GRPOConfig(output_dir=str(tmp_path), use_cpu=True))  # TRL's defaults pass


def test_adaptive_entropy_s_state_is_in_a_checkpoint_before_it_looks_complete(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL writes entropy_ctrl_state.json after trainer_state.json: a kill between left a checkpoint that
    resumed with the entropy coefficient restarted, silently."""
    from transformers import TrainerState

    seen: dict[str, bool] = {}
    save_to_json = TrainerState.save_to_json

    def noting(self: TrainerState, path: str) -> None:
        if Path(path).parent.name.startswith("checkpoint-"):
            seen[Path(path).parent.name] = (Path(path).parent / "entropy_ctrl_state.json").is_file()
        save_to_json(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", noting)
    stage = load_stage("rl")
    args = grpo_args(tiny_model_dir, tmp_path / "rl", "--max_steps", "2", "--save_steps", "1",
                     "--use_adaptive_entropy", "true")  # fmt: skip
    stage.main(*stage.make_parser().parse_args_and_config(args))
    assert seen == {"checkpoint-1": True, "checkpoint-2": True}


@pytest.mark.parametrize(
    ("overwrite", "this_run", "restarts", "fresh"),
    [(False, False, "", False), (True, False, "", True), (True, True, "", False), (True, False, "1", False)],
)
def test_overwrite_starts_afresh_only_over_another_run_and_never_in_a_requeue(
    overwrite: bool, this_run: bool, restarts: str, fresh: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reasoningner.configs import ResumableArguments

    monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    assert ResumableArguments(overwrite_output_dir=overwrite).fresh_start(this_run=this_run) is fresh


def test_only_a_folder_with_outputs_of_other_settings_is_refused(tmp_path: Path) -> None:
    settings = {"learning_rate": 1e-3, "seed": 0}
    assert (
        claim_output_dir(tmp_path, {**settings, "seed": 9}, overwrite=False, stale=["checkpoint-*"]) is False
    )
    # That attempt failed before it saved anything: it claims nothing.
    assert claim_output_dir(tmp_path, settings, overwrite=False, stale=["checkpoint-*"]) is False
    (tmp_path / "checkpoint-2").mkdir()
    assert claim_output_dir(tmp_path, settings, overwrite=False, stale=["checkpoint-*"]) is True
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        claim_output_dir(tmp_path, {**settings, "seed": 1}, overwrite=False, stale=["checkpoint-*"])
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):  # the other ranks check too, and write nothing
        claim_output_dir(
            tmp_path, {**settings, "seed": 1}, overwrite=False, stale=["checkpoint-*"], write=False
        )
    assert json.loads((tmp_path / RUN_SETTINGS).read_text()) == settings


@pytest.mark.parametrize(
    ("key", "operational"),
    [
        ("vllm_importance_sampling_correction", False),
        ("vllm_structured_outputs_regex", False),
        ("dataloader_drop_last", False),
        ("vllm_server_port", True),
        ("vllm_gpu_memory_utilization", True),
        ("dataloader_num_workers", True),
        ("logging_steps", True),
    ],
)
def test_a_relaunch_may_change_how_a_run_is_served_but_not_what_it_trains(
    tmp_path: Path, key: str, operational: bool
) -> None:
    settings = {"seed": 0, key: 1}
    assert (key in run_settings(settings)) is not operational
    claim_output_dir(tmp_path, run_settings(settings), overwrite=False, stale=["checkpoint-*"])
    (tmp_path / "checkpoint-2").mkdir()
    changed = run_settings({**settings, key: 2})
    if operational:
        assert claim_output_dir(tmp_path, changed, overwrite=False, stale=["checkpoint-*"]) is True
    else:
        with pytest.raises(ValueError, match=f"{key}: 1 -> 2"):
            claim_output_dir(tmp_path, changed, overwrite=False, stale=["checkpoint-*"])


def test_a_relaunch_naming_the_same_files_otherwise_resumes(tmp_path: Path, monkeypatch) -> None:
    """A requeue script may spell the model and data paths otherwise than the first launch did."""
    monkeypatch.chdir(tmp_path)
    for folder in ("outputs/sft", "outputs/other", "data"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "train.txt").write_text("EU\tB-ORG\n", encoding="utf-8")
    (tmp_path / "data" / "dev.txt").write_text("EU\tB-ORG\n", encoding="utf-8")
    first = {"model_name_or_path": "outputs/sft", "train_files": ["data/train.txt", "hf:org/ner"], "seed": 0}
    run_dir = tmp_path / "run"
    assert claim_output_dir(run_dir, first, overwrite=False, stale=["checkpoint-*"]) is False
    (run_dir / "checkpoint-2").mkdir()
    relaunch = {
        "model_name_or_path": str(tmp_path / "outputs" / "sft"),
        "train_files": ["./data/../data/train.txt", "hf:org/ner"],
        "seed": 0,
    }
    assert claim_output_dir(run_dir, relaunch, overwrite=False, stale=["checkpoint-*"]) is True
    for key, other in [
        ("model_name_or_path", "outputs/other"),
        ("train_files", ["data/dev.txt", "hf:org/ner"]),
        ("train_files", ["data/train.txt", "hf:org/ner-v2"]),
        ("train_files", ["data/train.txt"]),
        ("model_name_or_path", "outputs/missing"),
    ]:
        with pytest.raises(ValueError, match=f"{key}: "):
            claim_output_dir(run_dir, {**relaunch, key: other}, overwrite=False, stale=["checkpoint-*"])


def test_a_checkpoint_of_a_run_not_yet_finished_carries_its_training_data(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path
) -> None:
    """Evaluating `checkpoint-N` mid-run (or after a preemption) checks it for contamination as the final
    model is checked, from the provisional manifest the run writes at its start (the final one replaces
    it); a checkpoint copied away from its run folder still carries that and its prompt contract."""
    from transformers import Trainer

    out = tmp_path / "sft"
    args = sft_args(tiny_model_dir, annotations, out, "--max_steps", "4")
    save = Trainer._save_checkpoint

    def preempted_after_the_first_checkpoint(self: Trainer, *args: Any) -> None:
        save(self, *args)
        raise Preempted

    stage = load_stage("sft")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Preempted):
        patch.setattr(Trainer, "_save_checkpoint", preempted_after_the_first_checkpoint)
        stage.main(*stage.make_parser().parse_args_and_config(args=args))
    assert json.loads((out / MANIFEST).read_text())["provisional"] is True
    assert str(annotations) in training_sources(out / "checkpoint-2")
    copied = shutil.copytree(out / "checkpoint-2", tmp_path / "elsewhere" / "checkpoint-2")  # or uploaded
    contract, trained = PromptContract.load(copied), PromptContract.load(out)
    assert contract is not None and trained is not None
    assert (contract.prompt, contract.labels) == (trained.prompt, trained.labels)
    assert contract.wording == trained.wording == wording(trained.prompt)  # how it was asked, in code
    assert contract.source == str(copied / "prompt_contract.json")  # its own copy
    assert str(annotations) in training_sources(copied)
    stage.main(*stage.make_parser().parse_args_and_config(args=args))
    manifest = json.loads((out / MANIFEST).read_text())
    assert "provisional" not in manifest and manifest["history"] == []  # replaced, not kept as an attempt
    assert str(annotations) in training_sources(out)


def test_a_manifest_keeps_the_earlier_attempts_in_its_history(tmp_path: Path) -> None:
    for attempt in range(3):
        write_manifest(tmp_path, build_manifest("sft", {"attempt": attempt}, []), {"loss": attempt})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["config"] == {"attempt": 2}
    assert [(m["config"]["attempt"], m["summary"]["loss"]) for m in manifest["history"]] == [(0, 0), (1, 1)]
    assert all("history" not in m for m in manifest["history"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("loss_type", "drgrpo"),
        ("scale_rewards", "grup"),
        ("vllm_mode", "colocated"),
        ("vllm_importance_sampling_mode", "sequence_masked"),  # else: at the first generation
    ],
)
def test_trl_values_with_fixed_choices_fail_when_the_recipe_is_read(key: str, value: str) -> None:
    """Before any model loads: GRPO itself would only fail in its first step."""
    parser = load_stage("rl").make_parser()
    with pytest.raises(ValueError, match=f"{key} '{value}': choose one of"):
        parser.parse_args_and_config(args=["--config", RL_RECIPE, f"--{key}", value])


def test_user_mistakes_end_in_one_line_without_a_traceback(tmp_path: Path, annotations: Path) -> None:
    no_sft = run([sys.executable, "stages/rl.py", "--config", RL_RECIPE, "--model_name_or_path",
                  str(tmp_path / "outputs" / "sft"), "--output_dir", str(tmp_path / "rl")])  # fmt: skip
    assert no_sft.returncode == 2
    assert "Traceback" not in no_sft.stderr
    assert f"error: model {tmp_path / 'outputs' / 'sft'} does not exist: run the stage that writes it" in (
        no_sft.stderr
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("EU\tB-ORG\nrejects\tO\n\nGerman\tI-MISC\tX\tY\n", encoding="utf-8")
    bad_data = run([sys.executable, "stages/sft.py", *sft_args(tmp_path, bad, tmp_path / "sft"),
                    "--reasoning", "false", "--model_name_or_path", str(ROOT / "recipes")])  # fmt: skip
    assert bad_data.returncode == 2 and "Traceback" not in bad_data.stderr
    assert f"{bad}:4:" in bad_data.stderr
    debug = run([sys.executable, "stages/rl.py", "--config", RL_RECIPE, "--model_name_or_path",
                 str(tmp_path / "nowhere")], REASONINGNER_DEBUG="1")  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    # Evaluation and a local stage 1 teacher load the model too: the same one line, before anything else.
    for stage, recipe in (("eval", "eval.yaml"), ("cot", "cot-transformers.yaml")):
        missing = run([sys.executable, f"stages/{stage}.py", "--config", f"recipes/tiny-cpu/{recipe}",
                       "--model_name_or_path", str(tmp_path / "outputs" / "sft"), "--output_dir",
                       str(tmp_path / stage)])  # fmt: skip
        assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
        assert f"error: model {tmp_path / 'outputs' / 'sft'} does not exist" in missing.stderr


def test_a_hub_token_given_as_an_argument_is_recorded_nowhere(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path
) -> None:
    secret = "hf_SecretTokenThatMustNotLeak"
    out, wandb_dir = tmp_path / "sft", tmp_path / "wandb"
    wandb_dir.mkdir()
    args = sft_args(
        tiny_model_dir, annotations, out, "--max_steps", "1", "--hub_token", secret, "--report_to", "wandb"
    )
    result = run([sys.executable, "stages/sft.py", *args], WANDB_MODE="offline", WANDB_DIR=str(wandb_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    written = [p for folder in (out, wandb_dir) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written) and any(p.suffix == ".wandb" for p in written)
    assert [p for p in written if secret.encode() in p.read_bytes()] == []


def test_a_run_killed_before_its_first_checkpoint_keeps_its_wandb_run(
    tiny_model_dir: Path, annotations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requeue before the first save is the same run: one W&B run, not a second one beside a crashed one,
    also with overwrite_output_dir. Other settings open a new one."""
    from reasoningner.training import start_trainer_stage

    parser = load_stage("sft").make_parser()
    out = tmp_path / "sft"

    def start(*extra: str) -> str:
        monkeypatch.setenv("WANDB_RUN_ID", "")  # each launch is a new process; unset again after the test
        parsed = parser.parse_args_and_config(
            args=sft_args(tiny_model_dir, annotations, out, "--report_to", "wandb", *extra)
        )
        start_trainer_stage("sft", *parsed)
        return os.environ["WANDB_RUN_ID"]

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_RESUME", "")  # restored (unset) after the test, as WANDB_RUN_ID
    first = start()
    assert not list(out.glob("checkpoint-*"))  # killed here, before anything was saved
    assert start() == first
    other = start("--learning_rate", "2e-3")
    assert other != first
    assert start("--learning_rate", "2e-3", "--overwrite_output_dir", "true") == other
    assert start("--overwrite_output_dir", "true") != other


def test_a_relaunch_saves_at_its_own_save_steps_and_a_best_model_run_keeps_its_last_checkpoint(
    tiny_model_dir: Path,
    annotations: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transformers resumes with the checkpoint's save, eval and logging steps: a relaunch that changes
    them (allowed) kept the old ones. And with load_best_model_at_end, save_total_limit 1 deletes the
    last checkpoint at the end, so that the finished run, relaunched, trained again: refused, as are
    checkpoints without optimizer state (save_only_model), node-local ones (save_on_each_node) and
    transformers' own save at SIGTERM."""
    out = tmp_path / "sft"
    sft = sft_in_process(tiny_model_dir, annotations, out)

    sft("--max_steps", "2")
    with caplog.at_level(logging.WARNING, logger="reasoningner.training"):
        sft("--max_steps", "6", "--save_steps", "3")  # longer: a schedule over 6 steps from here
    assert "this launch trains 6 steps, the run's checkpoints 2: from step 2 the learning rate" in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-6",
    ]
    with pytest.raises(ValueError, match="save_only_model: checkpoints without the optimizer, scheduler"):
        sft("--max_steps", "6", "--save_only_model", "true")
    created: list[str] = []
    monkeypatch.setattr(training, "hub_repository", lambda name, *_: created.append(name) or name)
    with pytest.raises(ValueError, match="save_on_each_node: runs resume from the main process's"):
        sft(
            "--max_steps",
            "6",
            "--save_on_each_node",
            "true",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/x",
        )
    assert created == []  # refused before it made a Hub repository
    # Full fine-tuning of bf16 weights without DeepSpeed's fp32 master weights.
    with pytest.raises(ValueError, match="full fine-tuning of bfloat16 weights without DeepSpeed"):
        sft_in_process(tiny_model_dir, annotations, tmp_path / "bf16")(
            "--max_steps", "1", "--dtype", "bfloat16"
        )
    assert not (tmp_path / "bf16").exists()  # refused before the folder is claimed or a model loads
    # transformers' own save at SIGTERM: per process, inside a step or a GRPO cycle.
    with pytest.raises(ValueError, match="enable_jit_checkpoint: SFT and GRPO save a checkpoint at SIGTERM"):
        sft("--max_steps", "6", "--enable_jit_checkpoint", "true")
    with pytest.raises(ValueError, match="save_total_limit 1 with load_best_model_at_end"):
        sft("--max_steps", "6", "--save_total_limit", "1", "--load_best_model_at_end", "true",
            "--eval_strategy", "steps", "--eval_steps", "2", "--overwrite_output_dir", "true")  # fmt: skip

"""The SLURM job a stage runs in: whether this attempt is a requeued one, how long the job has left,
and ending an attempt so that SLURM runs the job again. Outside a SLURM job none of it applies and a
stage runs as it would.

A job killed at its time limit ends as TIMEOUT, which SLURM never requeues, and loses the steps since
its last checkpoint; so a stage stops a little before the limit, at a point it resumes from exactly,
and ends the attempt with `stop`. A requeued job runs its first command line again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

# The exit status of a stage that stopped before its job's time limit (sysexits' EX_TEMPFAIL: try
# again): a job SLURM cannot requeue then ends failed, and nothing waiting on it takes an unfinished
# output for a finished one.
STOPPED = 75


def in_job() -> bool:
    """Whether this process runs in a SLURM job, which `stop` can queue again."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def requeued() -> bool:
    """Whether this is a requeued attempt of a job (preempted, a node that failed, `stop`): SLURM counts
    them in `SLURM_RESTART_COUNT`, which every task of the job inherits."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def _unix_time(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def seconds_left(margin: float) -> float | None:
    """Seconds until the job's time limit (`SLURM_JOB_END_TIME`, a Unix time SLURM sets in a job's
    environment); None outside a job, without a limit, or with a limit no longer than `margin` (a
    stage stopping that far ahead would stop at once in every attempt: it runs on, with a warning)."""
    end = _unix_time("SLURM_JOB_END_TIME")
    if end is None:
        return None
    start = _unix_time("SLURM_JOB_START_TIME")
    if start is not None and end - start <= margin:
        _too_short(end - start, margin)
        return None
    return end - time.time()


@functools.cache
def _too_short(limit: int, margin: float) -> None:
    logger.warning(
        "the job's time limit (%d s) is no longer than stop_before_job_end (%g s): the stage will not "
        "stop before it, and a kill at the limit loses the steps since the last checkpoint",
        limit,
        margin,
    )


def stop(message: str, main_process: bool = True, barrier: Callable[[], Any] | None = None) -> NoReturn:
    """End this attempt: say why, ask SLURM (from the main process) to queue the job again, wait for the
    other processes (`barrier`), exit with `STOPPED`. A W&B run ends first, with that status: the requeue
    has SLURM signal this attempt, which would cut W&B's own end at exit short (a "crashed" run, its
    last metrics unsent)."""
    if main_process:
        _end_wandb_run(STOPPED, WANDB_FINISH_SECONDS)
        # Said before the requeue is asked: under srun, SLURM's SIGTERM to srun kills the tasks at once.
        print(message, flush=True)
        print(requeue(), flush=True)
    if barrier is not None:
        barrier()
    sys.exit(STOPPED)


# How long W&B may take to end its run before the requeue is asked regardless: a finish that hangs (a
# cluster's network) must not let the job run into its time limit, where SLURM would not requeue it.
WANDB_FINISH_SECONDS = 120.0


def _end_wandb_run(status: int, seconds: float) -> None:
    """End this process's W&B run, if any, with `status`, waiting at most `seconds`; a failure is W&B's
    own message (threading prints it), never the end of the requeue."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    ending = threading.Thread(target=wandb.finish, kwargs={"exit_code": status}, daemon=True)
    ending.start()
    ending.join(seconds)
    if ending.is_alive():
        logger.warning("W&B did not end its run in %g s: going on without it", seconds)


# Set by recipes/slurm's scripts: where a stage that could not requeue its job (a container without
# SLURM's client) leaves word for the job's script, which asks from the host once the stage has ended.
REQUEUE_MARK = "REASONINGNER_REQUEUE_MARK"


def requeue() -> str:
    """Ask SLURM to queue this job again (`scontrol requeue`): what happened, in words. SLURM ends this
    attempt and starts the job's script anew once it schedules it. Where it cannot be asked from here,
    the job's script is told to (`REQUEUE_MARK`), if it listens."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job: relaunch the same command to resume"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        failed = f"scontrol requeue {job} failed ({error})"
    else:
        if not done.returncode:
            return f"job {job} requeued: it resumes from here when SLURM starts it again"
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        failed = f"scontrol requeue {job} refused ({why})"
    mark = os.environ.get(REQUEUE_MARK)
    if mark:
        try:
            Path(mark).write_text(failed + "\n", encoding="utf-8")
            return f"{failed}: the job's script requeues it once this stage has ended"
        except OSError as error:
            failed += f"; {mark} could not be written ({error})"
    return f"{failed}: resubmit the same command to resume"


# The exit status of a stage that SIGTERM ended (as the signal would have: 128 + its number).
TERMINATED = 128 + signal.SIGTERM


class Terminated(Exception):
    """SIGTERM arrived during a `terminating` block."""


class Termination:
    """What `terminating` yields: whether SIGTERM came (`signal`), and whether it raises (`raising`).
    SIGTERM raises `Terminated` where the main thread is, until a stage turns `raising` off to record
    what it holds and end; from then on it only sets `signal`. Where the raise was lost (an asyncio
    callback logs and drops exceptions), `check` raises it at the next chance."""

    def __init__(self, raising: bool = True) -> None:
        self.signal: str | None = None
        self.raising = raising

    def check(self) -> None:
        if self.signal is not None and self.raising:
            raise Terminated(self.signal)


@contextlib.contextmanager
def terminating(raising: bool = True) -> Iterator[Termination]:
    """During the block, SIGTERM raises `Terminated` (or, once `raising` is off, is only noted) instead of
    ending the process at once: the stage records what it holds (stage 1: the sentences waiting for a
    retry, its progress; SFT and GRPO: a checkpoint at their next resume point) and ends with
    `terminated`, or with `stop`, whose requeue has SLURM send SIGTERM to this attempt. SLURM sends it at
    a preemption and at `scancel`, and SIGKILL after its GraceTime or KillWait (30 s by default). Outside
    the main thread, which signals never reach, nothing changes."""
    termination = Termination(raising)
    if threading.current_thread() is not threading.main_thread():
        yield termination
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        termination.signal = signal.Signals(signum).name
        termination.check()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield termination
    finally:  # None: a handler installed outside Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# How long W&B may take to end its run after SIGTERM: within SLURM's default KillWait (30 s).
TERMINATED_WANDB_SECONDS = 20.0


def terminated(message: str, main_process: bool = True, barrier: Callable[[], Any] | None = None) -> NoReturn:
    """End this process after SIGTERM: say so and end its W&B run (from the main process), wait for the
    other processes (`barrier`), exit with `TERMINATED`. No requeue is asked: a cancelled job must stay
    cancelled, and SLURM requeues a preempted one itself."""
    if main_process:
        print(f"{message}; relaunch the same command to resume", flush=True)
        _end_wandb_run(TERMINATED, TERMINATED_WANDB_SECONDS)
    if barrier is not None:
        barrier()
    sys.exit(TERMINATED)

"""The SLURM job a stage runs in: whether this attempt is a requeued one, how long the job has left,
and asking SLURM to run it again. Outside a SLURM job none of it applies and a stage runs as it would.

A job killed at its time limit ends as TIMEOUT, which SLURM never requeues, and loses the steps since
its last checkpoint; so a stage stops a little before the limit, at a point it resumes from exactly,
and asks for the job to be queued again (`requeue`). A requeued job runs its first command line again.
"""

from __future__ import annotations

import os
import subprocess
import time


def requeued() -> bool:
    """Whether this is a requeued attempt of a job (preempted, a node that failed, `requeue`): SLURM
    counts them in `SLURM_RESTART_COUNT`, which every task of the job inherits."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def seconds_left() -> float | None:
    """Seconds until the job's time limit (`SLURM_JOB_END_TIME`, a Unix time SLURM sets in every job's
    environment), or None outside a job or without a limit."""
    end = os.environ.get("SLURM_JOB_END_TIME", "")
    return int(end) - time.time() if end.isdigit() and int(end) > 0 else None


def requeue() -> str:
    """Ask SLURM to queue this job again (`scontrol requeue`): what happened, in words. It ends this
    attempt and starts the job's script anew once SLURM schedules it."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job: relaunch the same command to resume"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job} failed ({error}): resubmit the same command to resume"
    if done.returncode:
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        return f"scontrol requeue {job} refused ({why}): resubmit the same command to resume"
    return f"job {job} requeued: it resumes from here when SLURM starts it again"

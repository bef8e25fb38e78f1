"""Output files that a kill at any moment leaves usable: written whole or not at all, written by one run
at a time, and line files read up to their last complete line (what stage 1 and evaluation resume from)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from reasoningner.jobs import requeued

logger = logging.getLogger(__name__)


# How JSON text is encoded: a lone surrogate, which strict UTF-8 refuses, becomes its \uXXXX escape;
# inside a JSON string that is the same character again when read.
JSONL_ERRORS = "backslashreplace"


def write_whole(path: Path, data: bytes | str) -> None:
    """Write `path` whole or not at all: a kill mid-write leaves the previous file. A lone surrogate
    in `data` (from a JSON escape such as "\\ud83d" in a dataset) is written as that escape, which a
    JSON reader gives back as it was (`JSONL_ERRORS`)."""
    if isinstance(data, str):
        data = data.encode("utf-8", JSONL_ERRORS)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# How long a requeued SLURM job waits for a lock its earlier attempt held: a lock on shared storage
# (NFS, Lustre) outlives a node that died holding it until the server lets it go (NFSv4's lease, 90 s by
# default; a Lustre client's eviction, minutes).
REQUEUED_LOCK_WAIT = 600.0
LOCK_RETRY_SECONDS = 10.0


def write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """`write_whole` of JSONL lines given without their newline (as `complete_lines` reads them)."""
    write_whole(path, b"".join(line + b"\n" for line in lines))


_HELD: dict[Path, int] = {}  # the locks this process holds (`exclusive`), and the thread holding each


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` while writing `path`: a second run on it fails at once, instead of writing
    every record a second time. An flock is released by the OS when its process dies, however it dies,
    so a killed run never leaves a stale lock behind; on shared storage, a node that died holding it
    does until the server releases it, for which a requeued job waits (`REQUEUED_LOCK_WAIT`).
    Re-entrant in one thread: a stage holds it around a library call that takes it too (stage 1's
    W&B run is opened only once the file is its own); another thread is another writer."""
    lock = path.with_name(path.name + ".lock").resolve()
    if _HELD.get(lock) == threading.get_ident():
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+", encoding="utf-8") as handle:
        try:
            _lock(handle, wait=REQUEUED_LOCK_WAIT if requeued() else 0.0, path=path)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(
                f"{path} is being written by another run ({holder}; it holds {lock.name}): a second "
                "writer would write its records twice. Wait for that run to end, or stop it"
            ) from None
        except OSError as error:  # e.g. Lustre mounted without flock support
            logger.warning("cannot lock %s (%s): make sure no other run writes %s", lock, error, path.name)
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        holder = _HELD[lock] = threading.get_ident()
        try:
            yield
        finally:
            if _HELD.get(lock) == holder:  # unlocked (no flock), another thread may have taken it since
                del _HELD[lock]


def _lock(handle: IO[str], wait: float, path: Path) -> None:
    """flock `handle`, trying again for `wait` seconds while another holds it (BlockingIOError after)."""
    deadline, warned = time.monotonic() + wait, False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if not warned:
                warned = True
                logger.warning(
                    "%s is locked, maybe by a node of this job's earlier attempt: trying again for %.0f s",
                    path,
                    wait,
                )
            time.sleep(min(LOCK_RETRY_SECONDS, left))


def complete_lines(path: Path) -> tuple[list[tuple[str, bytes]], bool]:
    """The non-blank complete lines of `path` as `(path:line, line)`, and whether a half-written last
    line (a kill mid-write) follows them."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    lines = [
        (f"{path}:{number}", line)
        for number, line in enumerate(complete.split(b"\n")[:-1], 1)
        if line.strip()
    ]
    return lines, len(complete) != len(data)

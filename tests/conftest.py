"""Shared fixtures: the mini CoNLL sentences and the project's tiny random-init model built from them.

Building a tiny model takes a second or two; the tests that only run a stage or a CLI on some tiny model
share `tiny_model_dir`, built once per session. Tests that need another corpus, size or seed, or that
change the weights, ask `tiny_model_factory` for a model of their own.

Imports of torch and transformers stay inside the fixtures, so that collecting tests that need no
model stays fast.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The suite tests the CPU paths, on any machine: a GPU node's GPUs are hidden from it and from the stages
# it starts (set before anything imports torch); `make smoke` runs the recipes on a node's GPU. Nor does
# it reach the Hub where there is internet: tests that need the Hub's answers fake them.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
# datasets then follows the hub, whatever the shell says; and the fake servers on loopback are asked
# directly, not through a proxy the shell names (httpx would).
for _name in ("TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)
# Nor is it a SLURM job when run inside one: a stage near the job's time limit would stop and requeue the
# job it runs in (`jobs`). The tests that need a job say so (`slurm_job`).
for _name in ("SLURM_JOB_ID", "SLURM_JOB_END_TIME", "SLURM_JOB_START_TIME", "SLURM_RESTART_COUNT"):
    os.environ.pop(_name, None)

CONLL_MINI = Path(__file__).parent / "data" / "conll2003_mini.txt"

# The smallest model the stages run end to end on: one layer, a vocabulary of at most 400 tokens (the
# mini CoNLL sentences give 354). Overridden per call of `tiny_model_factory`.
TINY_SIZES: dict[str, Any] = dict(
    vocab_size=400,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
)


@pytest.fixture(scope="session")
def conll_mini_texts() -> tuple[str, ...]:
    """The sentences of `tests/data/conll2003_mini.txt`, in file order."""
    from reasoningner.readers import read_dataset

    return tuple(example.text for example in read_dataset(CONLL_MINI).examples)


@pytest.fixture(scope="session")
def tiny_model_factory(
    tmp_path_factory: pytest.TempPathFactory, conll_mini_texts: tuple[str, ...]
) -> Callable[..., Path]:
    """`make(corpus=None, **options)`: a new tiny model in a new folder, its tokenizer trained on `corpus`
    (default: the mini CoNLL sentences); `options` (sizes, `seed`, ...) override `TINY_SIZES` and go to
    `build_tiny_model`. Each call builds afresh, so the caller may change the model it gets."""
    from reasoningner.tiny_model import build_tiny_model

    def make(corpus: Iterable[str] | None = None, **options: Any) -> Path:
        texts = conll_mini_texts if corpus is None else corpus
        return build_tiny_model(tmp_path_factory.mktemp("tiny"), texts, **{**TINY_SIZES, **options})

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_factory: Callable[..., Path]) -> Path:
    """The default tiny model (`TINY_SIZES`, mini CoNLL sentences, seed 0), shared by the whole session:
    use it read-only."""
    return tiny_model_factory()


@pytest.fixture(scope="session")
def gold_cot_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make(prompt)`: stage 1 output for the mini CoNLL sentences from the gold-template teacher, with
    the answers in `prompt`'s format (a `configs.PromptArguments`), in a new folder."""
    from reasoningner.configs import CoTArguments, GenerationArguments
    from reasoningner.cot import ANNOTATIONS, annotate

    def make(prompt: Any) -> Path:
        out = tmp_path_factory.mktemp("cot")
        annotate(
            CoTArguments(datasets=[str(CONLL_MINI)], output_dir=str(out)),
            prompt,
            GenerationArguments(backend="gold-template"),
        )
        return out / ANNOTATIONS

    return make


@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as a task of SLURM job 4242, whose `scontrol` (first on PATH) records each call it gets
    as a line of the file returned, and accepts it."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return calls


# `held_elsewhere(path)`: `files.exclusive(path)` held by another process (a run elsewhere: the lock is
# re-entrant in one) until the block ends, or until its stdin is closed.
HeldElsewhere = Callable[[Path], contextlib.AbstractContextManager[subprocess.Popen]]


@contextlib.contextmanager
def _held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    code = "import sys; from pathlib import Path; from reasoningner.files import exclusive\n"
    code += "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)


@pytest.fixture
def held_elsewhere() -> HeldElsewhere:
    return _held_elsewhere

"""What the processes of one multi-process run must agree on, with real workers: `torchrun
--nproc_per_node 2` on CPU (gloo), this file being each worker's launcher.

A run whose processes read different data (a stage-1 file still being appended, a Hub dataset updated
between their reads, node-local copies) would draw each process's batches from its own rows; one whose
processes see different checkpoints would resume them at different steps. The agreeing runs themselves
are test_deepspeed_cpu's.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "tests" / "data" / "conll2003_mini.txt"
# The launcher's wait for workers it passed SIGTERM to: torch's 30 s may be short on a loaded 2-core machine.
ENV = {
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300",
}


def worker(argv: list[str]) -> None:
    """`broadcast <out>`: write what `from_main_process` gives this rank. `<stage> <per-rank flags as JSON>
    <args...>`: run stages/<stage>.py with `args`, this rank's flags replacing theirs."""
    rank = int(os.environ["RANK"])
    if argv[0] == "broadcast":
        import torch

        from reasoningner.training import from_main_process

        torch.distributed.init_process_group("gloo")
        Path(argv[1], f"rank{rank}.json").write_text(json.dumps(from_main_process({"rank": rank})))
        torch.distributed.destroy_process_group()
        return
    if argv[0] == "preempted":  # `preempted <report dir> <stage> <args...>`
        preempted(rank, Path(argv[1]), argv[2], argv[3:])
        return
    stage, flags, args = argv[0], json.loads(argv[1]), argv[2:]
    for flag, value in flags.get(str(rank), {}).items():
        args[args.index(flag) + 1] = value
    sys.argv = [f"stages/{stage}.py", *args]
    runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")


def preempted(rank: int, report: Path, stage: str, args: list[str]) -> None:
    """Run stages/<stage>.py with `args`; as step 2 begins, rank 0 sends SIGTERM to torchrun's agent, which
    passes it to every worker (as SLURM's preemption would), and waits for it to arrive. Each rank writes
    its exit status to `report`/rank<r>."""
    import time

    from transformers.trainer_callback import CallbackHandler

    on_step_begin = CallbackHandler.on_step_begin

    def signalled(self: CallbackHandler, args: Any, state: Any, control: Any) -> Any:
        if rank == 0 and state.global_step == 1:
            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(5)  # the agent passes it on in milliseconds
        return on_step_begin(self, args, state, control)

    CallbackHandler.on_step_begin = signalled  # type: ignore[method-assign]
    sys.argv = [f"stages/{stage}.py", *args]
    try:
        runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")
    except SystemExit as ended:
        (report / f"rank{rank}").write_text(str(ended.code))
        raise
    (report / f"rank{rank}").write_text("0")


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*launch, __file__, *args],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_process_gets_the_main_process_value(tmp_path: Path) -> None:
    result = torchrun("broadcast", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [{"rank": 0}] * 2


def test_processes_that_read_other_data_are_refused_before_the_model_loads(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    other = tmp_path / "other.txt"  # the same file, a sentence short: as read while still being written
    sentences = CONLL.read_text(encoding="utf-8").strip().split("\n\n")
    other.write_text("\n\n".join(sentences[:-1]) + "\n", encoding="utf-8")
    for stage in ("sft", "rl"):
        result = torchrun(
            stage,
            json.dumps({"1": {"--train_files": str(other)}}),
            "--config", f"recipes/tiny-cpu/{stage}.yaml",
            "--model_name_or_path", str(tiny_model_dir),
            "--train_files", str(CONLL),
            "--output_dir", str(tmp_path / stage),
            "--max_steps", "1",
            *(["--reasoning", "false"] if stage == "sft" else []),  # plain NER data: answer-only SFT
        )  # fmt: skip
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "processes [1] read other train or eval data than the main process" in output, output[-3000:]
        assert not list((tmp_path / stage).glob("checkpoint-*"))


def test_sigterm_to_the_launcher_has_every_process_save_the_same_step_and_end(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """SLURM's SIGTERM (a preemption, `scancel --signal=TERM`) reaches every process of the step; the
    launcher passes it on to its workers too, and kills them after its shutdown timeout. Each saves its
    part of one checkpoint, the step rank 0 chose, then all end with 143, the main process saying so once.
    (Here the launcher alone is signalled.)"""
    from reasoningner.training import last_checkpoint

    report, out = tmp_path / "report", tmp_path / "sft"
    report.mkdir()
    result = torchrun(
        "preempted", str(report), "sft",
        "--config", "recipes/tiny-cpu/sft.yaml",
        "--model_name_or_path", str(tiny_model_dir),
        "--train_files", str(CONLL),
        "--reasoning", "false",
        "--output_dir", str(out),
        "--max_steps", "6", "--save_steps", "4", "--per_device_train_batch_size", "1",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0  # the launcher ends as signalled
    assert [(report / f"rank{r}").read_text() for r in (0, 1)] == ["143", "143"], output[-3000:]
    assert output.count("sft: SIGTERM (a preemption, scancel): stopped at checkpoint-2") == 1, output[-3000:]
    assert last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert not (out / "model.safetensors").exists()


if __name__ == "__main__":
    worker(sys.argv[1:])

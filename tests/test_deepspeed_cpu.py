"""DeepSpeed ZeRO-2 and ZeRO-3 with real worker processes: the stage scripts, the project's DeepSpeed
configs and the tiny-cpu recipes, run by `torchrun --nproc_per_node 2` on CPU.

Each rank runs `stages/<stage>.py` unchanged, this file being its launcher: after the stage's final
save, every rank writes what it holds. The tests then check that the run really was DeepSpeed with two
ranks at the asked ZeRO stage, with torch's AdamW; that ZeRO-3 partitioned the model while loading it
(transformers' zero.Init, counted from its log) and kept only a shard per rank; and that both ranks'
full weights (gathered under ZeRO-3) are bit-identical to each other, to the saved checkpoint, and
different from the starting model in every tensor (training happened and reached every rank).

GRPO starts from the SFT model of the same ZeRO stage, so a checkpoint saved under ZeRO-3 is also
checked to load back as stage 3's policy. A random tiny model earns no reward, so the GRPO runs add a
small entropy bonus: without a gradient, agreement between ranks would prove nothing.

CPU specifics (`ENV`): `use_cpu: true` (the tiny-cpu recipes) with gloo; `DS_ACCELERATOR=cpu`; no CUDA
device. `accelerate launch` with a DEEPSPEED config cannot run on CPU (its processes disagree on the
world size), hence torchrun with `--deepspeed <json>`. DeepSpeed JIT-compiles its shared-memory
collective (`deepspeed_shm_comm`) once per machine (about 40 s, cached under TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "tests" / "data" / "conll2003_mini.txt"
RECIPES = ROOT / "recipes"
ENV = {
    "CUDA_VISIBLE_DEVICES": "",
    "DS_ACCELERATOR": "cpu",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
}
STEPS = 2
ZERO_INIT_MESSAGE = "activating zero.init()"


# --- what runs in each torchrun worker ----------------------------------------------------------------


class ZeroInitLoads(logging.Handler):
    """Counts the models transformers loaded under ZeRO-3's zero.Init (partitioned while loading)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += ZERO_INIT_MESSAGE in record.getMessage()


def parameter_hashes(model: Any) -> dict[str, str]:
    """sha256 of every full parameter as float32 bytes; under ZeRO-3 the shards are gathered first."""
    import deepspeed
    import torch

    named = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(named.values()), modifier_rank=None):
        return {
            name: hashlib.sha256(
                p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
            ).hexdigest()
            for name, p in sorted(named.items())
        }


def rank_record(trainer: Any, zero_init_loads: int) -> dict[str, Any]:
    engine = trainer.deepspeed
    model = engine.module
    parameters = list(model.parameters())
    return {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": trainer.accelerator.distributed_type.value,
        "zero_stage": engine.zero_optimization_stage(),
        "optimizer": type(engine.basic_optimizer).__name__,
        "zero_init_loads": zero_init_loads,
        "local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in parameters),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in parameters),
        "global_step": trainer.state.global_step,
        "hashes": parameter_hashes(model),
    }


def run_worker(stage: str, dump_dir: Path, argv: list[str]) -> None:
    """Run `stages/<stage>.py argv` in this torchrun worker; after its final save, dump this rank's state."""
    import reasoningner.training as training

    loads = ZeroInitLoads()
    loader_log = logging.getLogger("transformers.modeling_utils")
    loader_log.setLevel(logging.INFO)
    loader_log.addHandler(loads)
    save_final = training.save_final

    def save_and_dump(trainer: Any, output_dir: str, merge_lora: bool, contract: Any) -> Path | None:
        saved = save_final(trainer, output_dir, merge_lora, contract)
        record = rank_record(trainer, loads.count)
        (dump_dir / f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
        return saved

    script = ROOT / "stages" / f"{stage}.py"
    with (
        mock.patch.object(training, "save_final", save_and_dump),
        mock.patch.object(sys, "argv", [str(script), *argv]),
    ):
        runpy.run_path(str(script), run_name="__main__")


# --- the tests ---------------------------------------------------------------------------------------


class Run(NamedTuple):
    output_dir: Path
    ranks: list[dict[str, Any]]


def torchrun(stage: str, zero: int, out: Path, *args: str) -> Run:
    """`torchrun --nproc_per_node 2` of a stage under `recipes/accelerate/ds_zero<zero>.json`."""
    dump_dir = out / "ranks"
    dump_dir.mkdir(parents=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        __file__, stage, str(dump_dir),
        "--config", str(RECIPES / "tiny-cpu" / f"{stage}.yaml"),
        "--deepspeed", str(RECIPES / "accelerate" / f"ds_zero{zero}.json"),
        "--output_dir", str(out / "model"),
        "--max_steps", str(STEPS),
        "--save_strategy", "no",
        *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [json.loads((dump_dir / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
    return Run(out / "model", ranks)


def saved_hashes(path: Path) -> dict[str, str]:
    """The same hashes, of a checkpoint loaded in this (single, non-DeepSpeed) process."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {
        name: hashlib.sha256(p.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()
        for name, p in sorted(model.named_parameters())
    }


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory: Callable[..., Path]) -> Path:
    """conftest's tiny model (mini CoNLL sentences, vocabulary of at most 400) with two layers."""
    return tiny_model_factory(num_layers=2)


@pytest.fixture(scope="module")
def annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reasoningner.configs import CoTArguments, GenerationArguments, PromptArguments
    from reasoningner.cot import annotate, output_path

    args = CoTArguments(datasets=[str(CONLL)], output_dir=str(tmp_path_factory.mktemp("cot")))
    annotate(args, PromptArguments(descriptions=False), GenerationArguments(backend="gold-template"))
    return output_path(args)


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture(scope="module")
def sft_run(zero: int, tiny_model: Path, annotations: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return torchrun(
        "sft", zero, tmp_path_factory.mktemp(f"sft-zero{zero}"),
        "--model_name_or_path", str(tiny_model),
        "--train_files", str(annotations),
        "--per_device_train_batch_size", "2",
        "--max_length", "1024",
        "--warmup_steps", "0",
    )  # fmt: skip


@pytest.fixture(scope="module")
def rl_run(zero: int, sft_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return torchrun(
        "rl", zero, tmp_path_factory.mktemp(f"rl-zero{zero}"),
        "--model_name_or_path", str(sft_run.output_dir),
        "--train_files", str(CONLL),
        "--total", "4",
        "--num_generations", "2",
        "--per_device_train_batch_size", "2",
        "--max_completion_length", "16",
        "--entropy_coef", "0.1",
        "--beta", "0.04",  # a reference model too (the tiny-cpu recipe has none), as the GPU recipes have
        "--log_completions", "false",
    )  # fmt: skip


def check_deepspeed_run(run: Run, zero: int, zero_init_loads: int, start: dict[str, str]) -> None:
    for rank, record in enumerate(run.ranks):
        assert record["rank"] == rank
        assert record["world_size"] == 2
        assert record["distributed_type"] == "DEEPSPEED"
        assert record["zero_stage"] == zero
        assert record["optimizer"] == "AdamW"
        assert record["global_step"] == STEPS
        assert record["zero_init_loads"] == (zero_init_loads if zero == 3 else 0)
        if zero == 3:
            assert record["local_numel"] < record["full_numel"]
        else:
            assert record["local_numel"] == record["full_numel"]
    if zero == 3:
        assert sum(r["local_numel"] for r in run.ranks) >= run.ranks[0]["full_numel"]
    first, second = (record["hashes"] for record in run.ranks)
    assert first == second, "the ranks hold different weights"
    assert saved_hashes(run.output_dir) == first, "the saved model is not what the ranks hold"
    assert all(first[name] != start[name] for name in start), "some weights never changed"


def test_sft_under_deepspeed_gives_every_rank_and_the_checkpoint_the_same_weights(
    sft_run: Run, zero: int, tiny_model: Path
) -> None:
    check_deepspeed_run(sft_run, zero, zero_init_loads=1, start=saved_hashes(tiny_model))


def test_grpo_under_deepspeed_continues_from_the_sft_model_on_every_rank(
    rl_run: Run, sft_run: Run, zero: int
) -> None:
    """Under ZeRO-3 both the policy and the reference model (beta > 0) load partitioned."""
    check_deepspeed_run(rl_run, zero, zero_init_loads=2, start=saved_hashes(sft_run.output_dir))


if __name__ == "__main__":
    run_worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])

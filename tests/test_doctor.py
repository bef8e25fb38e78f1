"""`reasoningner doctor`: one line per check, exit status 1 on a failure; each check shown to pass and to
fail. Nothing contacts the hub (HF_HUB_OFFLINE), and the GPU checks see no GPU (conftest hides them)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from reasoningner import doctor
from reasoningner.cli import main
from reasoningner.configs import CoTArguments
from reasoningner.cot import output_path

ROOT = Path(__file__).resolve().parents[1]
HUB = Path(__file__).parent / "data" / "hub"
GPU_RL = ROOT / "recipes" / "reasoningner" / "qwen3-8b" / "rl.yaml"
TINY_SFT = ROOT / "recipes" / "tiny-cpu" / "sft.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # an empty cache
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in ("WANDB_BASE_URL", "NETRC", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    # No build lock a killed DeepSpeed compile left in this machine's cache, and disk enough: the tests
    # that want either say so.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch-extensions"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**45, 0, 2**45))


def statuses(checks: list[doctor.Check]) -> dict[str, str]:
    return {check.name: check.status for check in checks}


def test_the_paper_gpu_recipe_reports_the_missing_gpus_vllm_and_data_here(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else find_spec(name))
    assert main(["doctor", str(GPU_RL), "--num-gpus", "7"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ok    settings: read as stages/rl.py reads them"
    assert lines[1].startswith("FAIL  gpus: 7 needed, 0 visible")
    assert any(line.startswith('FAIL  vllm: use_vllm: True needs it: pip install "vllm') for line in lines)
    assert any(
        "FAIL  data: hf:ZWK/InstructUIE_data" in line and "datasets is offline" in line for line in lines
    )
    assert any(line.startswith("FAIL  wandb: report_to: wandb without credentials") for line in lines)
    assert lines[-1].startswith(f"doctor: {GPU_RL}:") and "failed" in lines[-1]


def test_a_gpu_recipe_needs_a_cuda_build_of_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Either build may be installed here: PyPI's Linux torch is the CUDA build, which runs on CPU too."""
    import torch

    def torch_check() -> doctor.Check:
        return next(c for c in doctor.check_gpus({}, "rl", num_gpus=7) if c.name == "torch")

    monkeypatch.setattr(torch.version, "cuda", None)
    cpu = torch_check()
    assert cpu.status == "FAIL" and cpu.message.startswith(f"torch {torch.__version__} is a CPU build: ")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert torch_check() == doctor.Check("torch", "ok", f"torch {torch.__version__}, CUDA 13.0")


def test_a_tiny_recipe_passes_with_its_inputs_in_place(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = f"--model_name_or_path {tiny_model_dir} --output_dir {tmp_path / 'sft'}"
    overrides += f" --train_files hf:{HUB / 'NER-CoT'}@train"
    assert main(["doctor", str(TINY_SFT), "--args", overrides]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "ok    chat template:" in out and "ok    gpus: 0 visible, 0 needed" in out
    assert out.splitlines()[-1] == f"doctor: {TINY_SFT}: ok"


def test_each_check_fails_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec  # flash-attn is not installed (the image may build it)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "flash_attn" else find_spec(name, package),
    )
    recipe = tmp_path / "sft.yaml"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    recipe.write_text(
        f"model_name_or_path: {model}\ntrain_files: [{tmp_path / 'missing.jsonl'}, hf:OWNER/NAME@train]\n"
        f"output_dir: {out}\nuse_cpu: true\nreport_to: wandb\nattn_implementation: flash_attention_2\n"
    )
    checks = doctor.diagnose(recipe)
    assert [(c.name, c.status) for c in checks] == [
        ("settings", "ok"), ("gpus", "ok"), ("torch", "ok"), ("flash_attn", "FAIL"), ("wandb", "FAIL"),
        ("data", "FAIL"), ("data", "FAIL"), ("model", "ok"), ("output_dir", "FAIL"), ("disk", "ok"),
        ("extension builds", "ok"),
    ]  # fmt: skip
    data = [c.message for c in checks if c.name == "data"]
    assert data == [
        f"{tmp_path / 'missing.jsonl'}: no such file or directory",
        "hf:OWNER/NAME@train: not in the Hugging Face cache and datasets is offline (HF_DATASETS_OFFLINE, "
        "HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)",
    ]
    # W&B offline needs no credentials; a cached hub dataset resolves offline; a run's folder resumes.
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "hub-cache" / "datasets--OWNER--NAME" / "snapshots" / "abc").mkdir(parents=True)
    (out / "notes.txt").unlink()
    (out / "run_settings.json").write_text(json.dumps({}))
    again = statuses(doctor.diagnose(recipe, overrides=["--attn_implementation", "sdpa"]))
    assert (again["wandb"], again["output_dir"]) == ("ok", "ok") and "flash_attn" not in again
    assert [c.status for c in doctor.diagnose(recipe) if c.name == "data"] == ["FAIL", "ok"]
    # Too little disk for the run.
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 2**29))
    assert statuses(doctor.diagnose(recipe))["disk"] == "FAIL"


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="Liger is installed here")
def test_liger_is_checked_on_gpu_and_skipped_on_cpu(tmp_path: Path) -> None:
    """The paper's SFT recipe asks for Liger's kernels: not installed here, doctor says how to install it;
    with use_cpu, where the kernels are turned off, it skips the check."""
    recipe = ROOT / "recipes" / "reasoningner" / "qwen3-8b" / "sft.yaml"
    gpu = [c for c in doctor.diagnose(recipe) if c.name == "liger_kernel"]
    assert [(c.status, c.message) for c in gpu] == [
        ("FAIL", 'use_liger_kernel: True needs it: pip install -e ".[liger]"  (liger-kernel; docker/ has it)')
    ]
    cpu = [c for c in doctor.diagnose(recipe, overrides=["--use_cpu", "true"]) if c.name == "liger_kernel"]
    assert [c.status for c in cpu] == ["skip"]


def test_a_model_without_a_usable_chat_template_fails_before_sft(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"model_name_or_path: {model}\ntrain_files: []\noutput_dir: {tmp_path / 'o'}\nuse_cpu: true\n"
        "assistant_only_loss: true\n"
    )
    [check] = [c for c in doctor.diagnose(recipe) if c.name == "chat template"]
    assert check.status == "FAIL" and "no chat template" in check.message


def test_the_makefile_runs_doctor_before_every_stage() -> None:
    import subprocess

    for stage in ("cot", "sft", "rl", "eval"):
        dry = subprocess.run(
            ["make", "-n", "-o", "install", stage, f"RECIPE=recipes/tiny-cpu/{stage}.yaml", "ARGS=--limit 2"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        doctor_at, stage_at = dry.find("reasoningner doctor"), dry.find(f"stages/{stage}.py")
        assert 0 <= doctor_at < stage_at, dry
        assert f"doctor recipes/tiny-cpu/{stage}.yaml --stage {stage} --args='--limit 2' && " in dry


def test_doctor_gets_the_stage_arguments_whole_even_with_quotes(tmp_path: Path) -> None:
    """The recipes' README passes JSON in single quotes: doctor and the stage both get it as written."""
    import subprocess

    echo = tmp_path / "echo"
    echo.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    echo.chmod(0o755)
    (tmp_path / "python").symlink_to(echo)  # the stage: $(BIN)/python stages/eval.py ...
    args = """--backend_options '{"batch_size": 16}' --limit 2"""
    make = ["make", "-s", "-o", "install", "eval", "RECIPE=r.yaml", f"DOCTOR={echo}", f"BIN={tmp_path}"]
    run = subprocess.run([*make, f"ARGS={args}"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    stage = [
        "stages/eval.py",
        "--config",
        "r.yaml",
        "--backend_options",
        '{"batch_size": 16}',
        "--limit",
        "2",
    ]
    assert run.stdout.splitlines() == ["r.yaml", "--stage", "eval", f"--args={args}", *stage]


@pytest.mark.parametrize("root", ["TORCH_EXTENSIONS_DIR", "default"])
def test_a_dead_extension_build_lock_fails_doctor_and_the_trainer_stages(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """A kill while DeepSpeed compiles an op leaves torch's build lock (its FileBaton, up to torch 2.13),
    and every later run waits on it in silence: doctor and SFT/GRPO name it instead. A lock of a build
    running now is left alone, and so is one of another torch or Python, which this one never waits on."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "FileBaton", object, raising=False)  # torch <= 2.13's builds
    extensions = tmp_path / "extensions"
    if root == "TORCH_EXTENSIONS_DIR":  # builds go right under it
        monkeypatch.setenv(root, str(extensions))
        lock = extensions / "deepspeed_shm_comm" / "lock"
    else:  # under the default root, in a folder per Python and accelerator build
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        monkeypatch.setattr(cpp_extension, "get_default_build_root", lambda: str(extensions))
        accelerator = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        lock = (
            extensions
            / f"py{sys.version_info.major}{sys.version_info.minor}_{accelerator}"
            / "cpu_adam"
            / "lock"
        )
        other = extensions / "py30_cu999" / "cpu_adam" / "lock"
        other.parent.mkdir(parents=True)
        other.touch()
        os.utime(other, (time.time() - 3600,) * 2)
    lock.parent.mkdir(parents=True)
    lock.touch()
    assert statuses(doctor.diagnose(TINY_SFT))["extension builds"] == "ok"  # a build running now
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    [check] = [c for c in doctor.diagnose(TINY_SFT) if c.name == "extension builds"]
    assert check.status == "FAIL"
    assert check.message.startswith(f"{lock} is 60 min old: a build killed midway left it")

    from tests.scripts import load_stage

    sft = load_stage("sft")
    args = ["--config", str(TINY_SFT), "--model_name_or_path", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "sft")]  # fmt: skip
    with pytest.raises(ValueError, match=f"{lock} is 60 min old"):
        sft.main(*sft.make_parser().parse_args_and_config(args=args))
    assert not (tmp_path / "sft").exists()  # refused before it claimed anything

    # From torch 2.14 a build holds an OS lock that a kill releases; the file it leaves blocks nothing.
    monkeypatch.delattr(cpp_extension, "FileBaton")
    assert statuses(doctor.diagnose(TINY_SFT))["extension builds"] == "ok"


def test_several_gpus_for_one_training_process_fail_with_how_to_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make sft` without NUM_GPUS on an 8-GPU node: TRL refuses nn.DataParallel after the model loaded."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    [alone] = [c for c in doctor.check_gpus({}, "sft", None) if c.name == "gpus"]
    assert alone.status == "FAIL" and "NUM_GPUS=8 trains on all of them" in alone.message
    [launched] = [c for c in doctor.check_gpus({}, "sft", 8) if c.name == "gpus"]
    assert launched.status == "ok"
    [evaluation] = [c for c in doctor.check_gpus({"backend": "vllm"}, "eval", None) if c.name == "gpus"]
    assert evaluation.status == "ok"  # vLLM's tensor parallelism uses them


@pytest.mark.parametrize("shard", ["0/1", "2/4"])
def test_a_folder_holding_a_stage_1_run_is_resumable_not_foreign(tmp_path: Path, shard: str) -> None:
    """A cot run killed before its merge leaves only a shard's annotations: doctor must not call the
    folder foreign (users would move it away and lose the run)."""
    args = CoTArguments(output_dir=str(tmp_path / "cot"), shard=shard)
    path = output_path(args)
    path.parent.mkdir()
    path.write_text("{}\n")
    [check] = doctor.check_output_dir({"output_dir": args.output_dir})
    assert check.status == "ok" and "holds a run" in check.message
    path.rename(path.with_name("notes.jsonl"))
    assert doctor.check_output_dir({"output_dir": args.output_dir})[0].status == "FAIL"


def test_a_folder_holding_a_killed_evaluation_is_resumable_not_foreign(tmp_path: Path) -> None:
    """A kill mid-evaluation leaves only generations.jsonl: `make eval` must relaunch it."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "generations.jsonl").write_text("{}\n")
    (out / "generations.jsonl.lock").write_text("")
    [check] = doctor.check_output_dir({"output_dir": str(out)})
    assert check.status == "ok" and "holds a run" in check.message


def test_wandb_credentials_are_looked_up_for_the_server_wandb_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-hosted server's login is in the netrc file under its own host, which wandb reads."""
    recipe = {"report_to": ["wandb"]}
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine wandb.corp.example\n  login user\n  password key\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert doctor.check_wandb(recipe)[0].status == "FAIL"  # api.wandb.ai has no login there
    assert doctor.check_wandb({"report_to": "all"})[0].status == "FAIL"  # `all` reports to W&B too
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.corp.example")
    [check] = doctor.check_wandb(recipe)
    assert check.status == "ok" and "wandb.corp.example" in check.message
    monkeypatch.delenv("NETRC")
    assert doctor.check_wandb(recipe)[0].status == "FAIL"  # ~/.netrc (HOME is empty here)
    (tmp_path / ".netrc").write_text(netrc_file.read_text())
    (tmp_path / ".netrc").chmod(0o600)
    assert doctor.check_wandb(recipe)[0].status == "ok"


def test_vllm_in_stage_1_or_evaluation_needs_its_tensor_parallel_gpus() -> None:
    """`make cot`/`make eval` run one process; its vLLM engine takes tensor_parallel_size GPUs."""
    offline_teacher = doctor.load_recipe(ROOT / "recipes" / "teacher" / "cot-offline.yaml", [])
    assert doctor.check_gpus(offline_teacher, "cot", None)[0].message.startswith("8 needed, 0 visible")
    overridden = offline_teacher | {"backend_options": '{"tensor_parallel_size": 2}'}  # as --backend_options
    assert doctor.check_gpus(overridden, "cot", None)[0].message.startswith("2 needed, 0 visible")
    pipelined = offline_teacher | {
        "backend_options": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}
    }
    assert doctor.check_gpus(pipelined, "cot", None)[0].message.startswith("8 needed, 0 visible")
    unset = offline_teacher | {"backend_options": {"tensor_parallel_size": None}}
    assert doctor.check_gpus(unset, "cot", None)[0].message.startswith("1 needed, 0 visible")
    served = {"backend": "openai", "backend_options": {"base_url": "http://node:8000/v1"}}
    assert doctor.check_gpus(served, "cot", None)[0].status == "ok"


def test_an_evaluation_budget_that_fills_vllm_s_context_fails_before_the_model_loads(tmp_path: Path) -> None:
    """Unset in the recipe, the budget is the local model's contract's (GRPO's max_completion_length)."""
    from reasoningner.configs import PromptArguments, PromptContract

    recipe = doctor.load_recipe(ROOT / "recipes" / "eval" / "crossner-zero-shot.yaml", [])
    PromptContract(PromptArguments(), ["person"], max_new_tokens=8000).save(tmp_path / "rl")
    trained = recipe | {"model_name_or_path": str(tmp_path / "rl")}
    [check] = doctor.check_budget(trained, "eval")
    assert check.status == "FAIL" and check.message.startswith(
        f"max_new_tokens=8000 (the prompt contract of {tmp_path / 'rl'}) leaves 192 of max_model_len=8192"
    )
    assert doctor.check_budget(trained | {"max_new_tokens": 4096}, "eval")[0].status == "ok"
    assert doctor.check_budget(recipe, "eval")[0].message.startswith("max_new_tokens=1024 leaves 7168")
    assert doctor.check_budget(trained | {"backend": "transformers"}, "eval") == []  # its own context
    hub = doctor.check_budget(recipe | {"model_name_or_path": "me/ner"}, "eval")
    assert [(c.status, c.message) for c in hub] == [
        ("skip", "me/ner: its prompt contract's budget is read from the Hub at start")
    ]
    (tmp_path / "rl" / "prompt_contract.json").write_text("{}")
    [broken] = doctor.check_budget(trained, "eval")
    assert broken.status == "FAIL" and "not a prompt contract" in broken.message


def test_doctor_reads_the_recipe_as_the_stage_does(tmp_path: Path) -> None:
    """What the stage would refuse at start (another stage's recipe, a misspelled key, a bad value or
    override) fails doctor's first line, which every `make` stage runs first."""

    def settings(recipe: Path, stage: str | None = None, overrides: tuple[str, ...] = ()) -> doctor.Check:
        [check] = doctor.check_settings(
            recipe, stage or doctor.stage_of(doctor.load_recipe(recipe)), overrides
        )
        return check

    assert settings(TINY_SFT) == doctor.Check("settings", "ok", "read as stages/sft.py reads them")
    wrong_stage = settings(TINY_SFT, "eval")
    assert wrong_stage.status == "FAIL" and "stages/eval.py refuses them" in wrong_stage.message
    typo = tmp_path / "sft.yaml"
    typo.write_text(TINY_SFT.read_text().replace("learning_rate:", "learnig_rate:"))
    assert "did you mean 'learning_rate'" in settings(typo).message
    bad = settings(TINY_SFT, overrides=("--learning_rate", "2.0e-3x"))
    assert bad.status == "FAIL" and "invalid float value: '2.0e-3x'" in bad.message
    assert settings(TINY_SFT, overrides=("--max_stepz", "2")).status == "FAIL"
    # GRPO's batch sizes hold for the GPUs the run uses, not for this one process.
    gpu_rl, half = ROOT / "recipes" / "qwen3-8b" / "rl.yaml", ("--gradient_accumulation_steps", "2")
    assert doctor.check_settings(gpu_rl, "rl", half)[0].status == "FAIL"
    assert doctor.check_settings(gpu_rl, "rl", half, num_gpus=8)[0].status == "skip"
    # Rewards: TRL compares their weights with them only once the policy has loaded.
    tiny_rl = ROOT / "recipes" / "tiny-cpu" / "rl.yaml"
    misspelt = doctor.check_settings(tiny_rl, "rl", ("--reward_funcs", "format", "f1s"))[0]
    assert misspelt.status == "FAIL" and "unknown reward 'f1s' (did you mean f1?)" in misspelt.message
    fewer = doctor.check_settings(tiny_rl, "rl", ("--reward_weights", "1", "10"))[0]
    assert fewer.status == "FAIL" and "2 reward_weights for 5 reward_funcs" in fewer.message
    assert doctor.check_settings(tiny_rl, "rl", ("--reward_funcs", "format", "f1"))[0].status == "FAIL"
    both = ("--reward_funcs", "format", "f1", "--reward_weights", "1", "10")
    assert doctor.check_settings(tiny_rl, "rl", both)[0].status == "ok"
    # The paper's rewards read an answer their own way: our reading's settings would be ignored.
    paper = ("--reward_funcs", "reasoningie_f1", "reasoningie_schema", "--reward_weights", "10", "1")
    assert doctor.check_settings(tiny_rl, "rl", paper)[0].status == "ok"
    lenient = doctor.check_settings(tiny_rl, "rl", (*paper, "--reward_parse", "lenient"))[0]
    assert lenient.status == "FAIL" and "would ignore them" in lenient.message


def test_the_disk_a_full_fine_tuning_run_needs_is_sized_from_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each checkpoint holds Adam's fp32 states besides the weights, and one more is written before the
    oldest goes: an 8B run passed a fixed 200 GB and would fill the disk at its third save."""
    model = tmp_path / "model"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as weights:
        weights.truncate(2 * 2**30)  # 2 GB, sparse
    recipe = {"model_name_or_path": str(model), "output_dir": str(tmp_path), "save_total_limit": 2}
    usage = namedtuple("usage", "total used free")
    for free_gb, status in ((40, "FAIL"), (50, "ok")):  # 2 GB x (7 x 3 checkpoints + the final model)
        monkeypatch.setattr(shutil, "disk_usage", lambda path, gb=free_gb: usage(0, 0, gb * 2**30))
        [check] = doctor.check_disk(recipe, "sft")
        assert check.status == status and "44 GB wanted for 3 checkpoints of 2 GB" in check.message
    # Relaunched (requeued): its checkpoints hold part of it already.
    (tmp_path / "checkpoint-100").mkdir()
    with open(tmp_path / "checkpoint-100" / "optimizer.pt", "wb") as states:
        states.truncate(14 * 2**30)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 31 * 2**30))
    [relaunch] = doctor.check_disk(recipe, "sft")
    assert (
        relaunch.status == "ok"
        and "30 GB wanted" in relaunch.message
        and "less the 14 GB" in relaunch.message
    )
    [unlimited] = doctor.check_disk({**recipe, "save_total_limit": None}, "sft")  # they all stay
    assert unlimited.status == "FAIL" and "less the" not in unlimited.message
    [lora] = doctor.check_disk({**recipe, "use_peft": True}, "sft")
    assert lora.status == "ok" and "20 GB wanted for LoRA checkpoints" in lora.message
    [unknown] = doctor.check_disk({**recipe, "model_name_or_path": "owner/not-cached"}, "sft")
    assert unknown.status == "FAIL" and "200 GB wanted" in unknown.message


def test_a_hub_model_is_judged_by_huggingface_hub_s_offline_mode_not_by_datasets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HF_DATASETS_OFFLINE=1 alone leaves models online (they download at first use), and
    TRANSFORMERS_OFFLINE=1 takes them offline: doctor failed the first and passed the second."""
    recipe = {"model_name_or_path": "owner/not-cached"}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert [c.status for c in doctor.check_model(recipe)] == ["ok"]
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    [check] = doctor.check_model(recipe)
    assert check.status == "FAIL" and "TRANSFORMERS_OFFLINE" in check.message

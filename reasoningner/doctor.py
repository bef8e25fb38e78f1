"""`reasoningner doctor RECIPE [--num-gpus N] [--args "STAGE OVERRIDES"]`: what would break a run, in seconds.

A GPU job that dies after an hour in the queue on a missing package, a GPU count, an absent dataset or a
full disk costs the hour; every one of those can be seen before it starts. Each check prints one line
(`ok`, `skip` when it cannot apply here, `FAIL` with what to do), and any FAIL makes the exit status 1.
`make cot|sft|rl|eval` run it first, with the same recipe, GPU count and overrides as the stage.

Its first line reads the recipe and overrides with the stage's own parser (as on this machine: a GPU
recipe is read with `use_cpu` where there is no GPU, and batch sizes for one process); the other checks
read the recipe as YAML plus `--key value` overrides. A hub id is resolvable only from the cache where
its library works offline (`sources.hub_offline` for models, `sources.datasets_offline` for data), and the
hub is never asked then.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import netrc
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import yaml

from reasoningner.configs import DEFAULT_MAX_NEW_TOKENS, NEEDS, PromptContract, eval_sources, is_hub_id
from reasoningner.cot import ANNOTATIONS, shard_name
from reasoningner.evaluate import GENERATIONS, OTHER_GENERATIONS, RESULTS_JSON
from reasoningner.generation import options_from
from reasoningner.predict import MIN_PROMPT_TOKENS
from reasoningner.sources import hub_cached, hub_offline, is_source, resolvable
from reasoningner.tracking import CHECKOUT, MANIFEST, RUN_SETTINGS, wants_wandb

# Free disk a run needs before it starts, in GB: checkpoints of full fine-tuning (weights and optimizer
# states) on a GPU, a model's outputs elsewhere.
DISK_GB = {"train-gpu": 200, "gpu": 20, "cpu": 1}
# What a stage leaves in its output_dir: settings and manifest (all), stage 1's annotations and their shard
# files, the Trainer's checkpoints, an evaluation's outputs (all a killed one leaves: its relaunch asks
# only what they lack).
RUN_MARKERS = (
    RUN_SETTINGS, MANIFEST, ANNOTATIONS, shard_name(ANNOTATIONS, "*", "*"), "checkpoint-*",
    GENERATIONS, OTHER_GENERATIONS, RESULTS_JSON, "*.lock",  # a writer's lock: a run killed at its start
)  # fmt: skip


# A torch extension build (DeepSpeed compiles its ops at first use) holds `lock` in its folder while it
# runs; up to torch 2.13 (its FileBaton), a build killed midway leaves it, and every later build of that
# op waits on it forever. Builds take minutes: a lock this old is a dead build's. From torch 2.14 the lock
# is an OS lock (filelock) that a kill releases: the file stays after every build, and blocks nothing.
STALE_BUILD_LOCK_MIN = 30


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # ok, skip, FAIL
    message: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name}: {self.message}"


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe's keys with `--key value [value ...]` overrides on top, values read as YAML and a list
    where the recipe has one (as TRL's parser reads them)."""
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML ({error})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of keys to values, not a {type(recipe).__name__}")
    items = list(overrides)
    while items:
        key = items.pop(0)
        if not key.startswith("--"):
            raise ValueError(f"override {key!r}: expected --key value")
        key, _, given = key[2:].partition("=")
        values = [given] if given else []
        while not given and items and not items[0].startswith("--"):
            values.append(items.pop(0))
        parsed = [yaml.safe_load(value) for value in values] or [True]
        recipe[key] = parsed if isinstance(recipe.get(key), list) or len(parsed) > 1 else parsed[0]
    return recipe


def stage_of(recipe: dict[str, Any]) -> str:
    """cot, sft, rl or eval, from the keys only that stage has."""
    if "reward_funcs" in recipe or "num_generations" in recipe:
        return "rl"
    if "train_files" in recipe:
        return "sft"
    datasets = recipe.get("datasets") or []
    if "primary_mode" in recipe or any(isinstance(d, dict) for d in datasets):
        return "eval"
    return "cot"


def needs_gpu(recipe: dict[str, Any], stage: str) -> bool:
    if stage in ("sft", "rl"):
        return not recipe.get("use_cpu", False)
    return recipe.get("backend") == "vllm"


def gpus_needed(recipe: dict[str, Any], stage: str) -> int:
    """One for a training process; for vLLM in stage 1 or evaluation, its tensor- times pipeline-parallel
    size (the one process of `make cot`/`make eval` uses that many GPUs)."""
    if not needs_gpu(recipe, stage):
        return 0
    if stage in ("sft", "rl"):
        return 1
    try:
        options = options_from(recipe.get("backend_options"))
    except ValueError:
        return 1  # the stage itself names the bad JSON
    return int(options.get("tensor_parallel_size") or 1) * int(options.get("pipeline_parallel_size") or 1)


def check_gpus(recipe: dict[str, Any], stage: str, num_gpus: int | None) -> list[Check]:
    """GPUs visible against those asked for, and a torch that can use them."""
    import torch

    wanted = num_gpus if num_gpus is not None else gpus_needed(recipe, stage)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
    one_process = num_gpus is None and stage in ("sft", "rl") and wanted == 1
    if visible < wanted:
        gpus = Check(
            "gpus", "FAIL", f"{wanted} needed, {visible} visible{where}: run on a GPU node or lower NUM_GPUS"
        )
    elif one_process and visible > 1:  # Trainer would wrap the model in nn.DataParallel, which TRL refuses
        gpus = Check(
            "gpus", "FAIL", f"{visible} visible{where} to one training process, which TRL refuses: "
            f"NUM_GPUS={visible} trains on all of them, CUDA_VISIBLE_DEVICES=0 on one",
        )  # fmt: skip
    else:
        gpus = Check("gpus", "ok", f"{visible} visible, {wanted} needed{where}")
    checks = [gpus]
    if wanted == 0:
        checks.append(Check("torch", "ok", f"torch {torch.__version__} (no GPU needed)"))
    elif torch.version.cuda is None:
        checks.append(
            Check(
                "torch",
                "FAIL",
                f'torch {torch.__version__} is a CPU build: make install TORCH="torch==... '
                '--index-url https://download.pytorch.org/whl/cu130" (or use the docker/ image)',
            )  # fmt: skip
        )
    else:
        checks.append(Check("torch", "ok", f"torch {torch.__version__}, CUDA {torch.version.cuda}"))
    return checks


def check_packages(recipe: dict[str, Any]) -> list[Check]:
    """vLLM, flash-attn and Liger importable when the recipe's settings use them."""
    checks = []
    for (key, value), (module, command) in NEEDS.items():
        if recipe.get(key) != value:
            continue
        if key == "use_liger_kernel" and recipe.get("use_cpu"):
            checks.append(Check(module, "skip", "use_liger_kernel is turned off on CPU"))
        elif importlib.util.find_spec(module) is None:
            checks.append(Check(module, "FAIL", f"{key}: {value} needs it: {command}"))
        else:
            checks.append(Check(module, "ok", f"importable ({key}: {value})"))
    return checks


def check_wandb(recipe: dict[str, Any]) -> list[Check]:
    """W&B credentials when the recipe reports there (or a mode that needs none)."""
    if not wants_wandb(recipe.get("report_to")):  # `all` too, as the stages read it
        return []
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return [Check("wandb", "ok", f"WANDB_MODE={mode}" if mode else "WANDB_API_KEY is set")]
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return [Check("wandb", "ok", "WANDB_IDENTITY_TOKEN_FILE is set")]
    # `wandb login` writes the key for its server's host (WANDB_BASE_URL, a self-hosted one too) into the
    # netrc file (NETRC, else ~/.netrc), where wandb reads it.
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    file = os.environ.get("NETRC")
    try:
        logged_in = netrc.netrc(file).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if logged_in:
        return [Check("wandb", "ok", f"credentials for {host} in {file or '~/.netrc'}")]
    return [Check("wandb", "FAIL", "report_to: wandb without credentials: `wandb login`, WANDB_API_KEY, "
                  "WANDB_MODE=offline, or --report_to none")]  # fmt: skip


def recipe_sources(recipe: dict[str, Any]) -> list[str]:
    """Every data source a recipe reads: a trainer's files, an evaluation's sets."""
    return [
        *(recipe.get("train_files") or []),
        *(recipe.get("eval_files") or []),
        *eval_sources(recipe.get("datasets") or []),
    ]


def check_data(recipe: dict[str, Any]) -> list[Check]:
    """Every data source readable here: a local path exists, a hub dataset is cached or (online) served."""
    checks = []
    for source in recipe_sources(recipe):
        found, how = resolvable(source)
        if not found and not is_source(source) and source.startswith("outputs/"):
            how += ": an earlier stage writes it (make cot / sft), run that first"
        checks.append(Check("data", "ok" if found else "FAIL", f"{source}: {how}"))
    return checks


def check_model(recipe: dict[str, Any]) -> list[Check]:
    """The model a stage loads: a local directory, or a hub id cached (or served, when online)."""
    model = recipe.get("model_name_or_path")
    if not model or recipe.get("backend") in ("openai", "gold-template"):
        return []
    path = Path(str(model)).expanduser()
    if path.exists():
        return [Check("model", "ok", f"{model}: local")]
    if not is_hub_id(str(model)):
        return [Check("model", "FAIL", f"{model} does not exist: run the stage that writes it first")]
    if hub_cached(str(model), "models"):
        return [Check("model", "ok", f"{model}: in the Hugging Face cache")]
    if hub_offline():
        why = "the hub is offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)"
        return [Check("model", "FAIL", f"{model}: not cached and {why}")]
    return [Check("model", "ok", f"{model}: downloaded from the hub at first use")]


def check_budget(recipe: dict[str, Any], stage: str) -> list[Check]:
    """An evaluation's output budget against the context vLLM is given (`max_model_len`): one that leaves
    no room for a prompt stops the run after the model load (`predict.context_left`). Unset, the budget
    is the model's contract's, read here from a local model only (no Hub ask)."""
    context = options_from(recipe.get("backend_options")).get("max_model_len")
    if stage != "eval" or recipe.get("backend") != "vllm" or not context:
        return []
    budget, source = recipe.get("max_new_tokens"), "max_new_tokens"
    model = str(recipe.get("model_name_or_path") or "")
    if budget is None and Path(model).exists():
        try:
            contract = PromptContract.load(model)
        except ValueError as error:
            return [Check("budget", "FAIL", str(error))]
        budget, source = (contract.max_new_tokens if contract else None), f"the prompt contract of {model}"
    elif budget is None and is_hub_id(model):
        return [
            Check("budget", "skip", f"{model}: its prompt contract's budget is read from the Hub at start")
        ]
    budget = int(budget or DEFAULT_MAX_NEW_TOKENS)
    left = int(context) - budget
    if left < MIN_PROMPT_TOKENS:
        return [
            Check(
                "budget",
                "FAIL",
                f"max_new_tokens={budget} ({source}) leaves {left} of max_model_len={context} tokens for the "
                "prompt: lower max_new_tokens or raise max_model_len",
            )
        ]
    return [Check("budget", "ok", f"max_new_tokens={budget} leaves {left} of max_model_len={context} tokens")]


def check_output_dir(recipe: dict[str, Any]) -> list[Check]:
    """The output folder is free, or holds a run this one resumes (settings are compared at start)."""
    output = recipe.get("output_dir")
    if not output:
        return [Check("output_dir", "FAIL", "no output_dir")]
    path = Path(output)
    if path.exists() and not path.is_dir():
        return [Check("output_dir", "FAIL", f"{output} is a file, not a folder")]
    if not path.exists() or not any(path.iterdir()):
        return [Check("output_dir", "ok", f"{output}: free")]
    if any(next(path.glob(marker), None) for marker in RUN_MARKERS):
        return [Check("output_dir", "ok", f"{output}: holds a run, which this one resumes (same settings) "
                      "or refuses (--overwrite_output_dir true: afresh over other settings)")]  # fmt: skip
    return [Check("output_dir", "FAIL", f"{output} holds files of no run: choose another output_dir")]


def weights_gb(model: str) -> float | None:
    """The size of a model's weight files, from a local folder or the Hub cache; None when not here."""
    from huggingface_hub import try_to_load_from_cache

    folder = Path(model)
    if folder.is_dir():
        return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**30 or None
    if not is_hub_id(model):
        return None
    index = try_to_load_from_cache(model, "model.safetensors.index.json")
    if isinstance(index, str):
        return json.loads(Path(index).read_text(encoding="utf-8"))["metadata"]["total_size"] / 2**30
    single = try_to_load_from_cache(model, "model.safetensors")
    return Path(single).stat().st_size / 2**30 if isinstance(single, str) else None


def disk_needed(recipe: dict[str, Any], stage: str) -> tuple[float, str]:
    """GB a run needs free, and why. Full fine-tuning keeps `save_total_limit` checkpoints and writes one
    more before deleting the oldest, each the weights and Adam's fp32 master weights and two moments
    (about 7 times 16-bit weights), then the final model; sized from the weight files when they are
    here, else `DISK_GB`."""
    if not needs_gpu(recipe, stage):
        return DISK_GB["cpu"], "outputs"
    if stage not in ("sft", "rl") or recipe.get("use_peft"):
        return DISK_GB["gpu"], "outputs" if stage not in ("sft", "rl") else "LoRA checkpoints"
    weights = weights_gb(str(recipe.get("model_name_or_path") or ""))
    if weights is None:
        return DISK_GB["train-gpu"], "checkpoints (the model's size is not known here)"
    kept = recipe.get("save_total_limit")
    copies = (int(kept) + 1) if kept else 3
    limit = (
        f"save_total_limit {kept}" if kept else "save_total_limit unset: every checkpoint stays, 3 counted"
    )
    why = f"{copies} checkpoints of {weights:.0f} GB of weights with their optimizer states ({limit})"
    # A relaunch's checkpoints are on the disk already (used, not free) and make room as they rotate
    # (under a save_total_limit: without one they all stay).
    output = Path(recipe.get("output_dir") or ".")
    held = (
        sum(f.stat().st_size for f in output.glob("checkpoint-*/**/*") if f.is_file()) / 2**30 if kept else 0
    )
    if held:
        why += f", less the {held:.0f} GB its checkpoints hold"
    return max(weights * (7 * copies + 1) - held, 0.0), why


def check_disk(recipe: dict[str, Any], stage: str) -> list[Check]:
    folder = Path(recipe.get("output_dir") or ".").resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**30
    needed, why = disk_needed(recipe, stage)
    status = "ok" if free >= needed else "FAIL"
    return [Check("disk", status, f"{free:.0f} GB free under {folder}, {needed:.0f} GB wanted for {why}")]


def check_chat_template(recipe: dict[str, Any], stage: str) -> list[Check]:
    """SFT with `assistant_only_loss` needs `{% generation %}` markers, or a template TRL knows how to
    patch (Qwen3's); checked on the tokenizer when it is local or cached."""
    if stage != "sft" or not recipe.get("assistant_only_loss"):
        return []
    model = str(recipe.get("model_name_or_path") or "")
    if not Path(model).expanduser().exists() and not hub_cached(model, "models"):
        return [Check("chat template", "skip", f"{model} is not here yet: checked by TRL at the start")]
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    if not tokenizer.chat_template:
        return [
            Check("chat template", "FAIL", f"{model} has no chat template: SFT cannot build conversations")
        ]
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError as error:
        return [Check("chat template", "FAIL", f"{model}: {error}; or set assistant_only_loss: false")]
    how = "has {% generation %} markers" if patched is None else "TRL swaps in its training version"
    return [Check("chat template", "ok", f"{model} {how}")]


def stale_build_locks() -> list[str]:
    """Each torch extension build lock older than `STALE_BUILD_LOCK_MIN`, with its age and what to do;
    none where torch builds under an OS lock, which no dead build can leave held."""
    from torch.utils import cpp_extension

    if not hasattr(cpp_extension, "FileBaton"):  # torch >= 2.14 (`STALE_BUILD_LOCK_MIN`)
        return []
    now = time.time()
    stale = []
    for lock in sorted(extension_build_folder().glob("*/lock")):
        minutes = (now - lock.stat().st_mtime) / 60
        if minutes >= STALE_BUILD_LOCK_MIN:
            stale.append(
                f"{lock} is {minutes:.0f} min old: a build killed midway left it, and a run that compiles "
                f"{lock.parent.name} would wait on it for good; delete it unless that build is running"
            )
    return stale


def extension_build_folder() -> Path:
    """Where this torch builds its extensions, one folder each: `TORCH_EXTENSIONS_DIR`, else a folder of
    the default root named for the Python and the accelerator build (torch's `_get_build_directory`),
    so that another torch's or Python's builds, which this one never waits on, are not looked at."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def check_extension_builds() -> list[Check]:
    stale = stale_build_locks()
    if stale:
        return [Check("extension builds", "FAIL", message) for message in stale]
    return [Check("extension builds", "ok", "no stale torch extension build lock")]


@functools.cache
def load_script(relative_path: str) -> ModuleType:
    """A script of the checkout (`stages/sft.py`) imported as a module, to call its `make_parser()`; its
    folder is on `sys.path` meanwhile, as when it runs (`benchmarks/` scripts import `timing`)."""
    path = CHECKOUT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def check_settings(
    recipe_path: str | Path, stage: str, overrides: Sequence[str], num_gpus: int | None = None
) -> list[Check]:
    """The recipe and overrides read by the stage's own parser: unknown keys (a recipe of another stage),
    values of the wrong type or outside their choices, as the stage would refuse them at start. A
    recipe's `env:` block is applied for the parse only."""
    if not (CHECKOUT / "stages" / f"{stage}.py").is_file():
        return [Check("settings", "skip", f"stages/{stage}.py is not in this installation")]
    import torch

    parser = load_script(f"stages/{stage}.py").make_parser()
    parser.check_environment = False  # packages, the model and the data: the checks below
    # Without a GPU, TrainingArguments refuses bf16: the gpus line says what is missing.
    cpu = ["--use_cpu", "true"] if stage in ("sft", "rl") and not torch.cuda.is_available() else []
    environment = dict(os.environ)
    try:
        parser.parse_args_and_config(args=["--config", str(recipe_path), *overrides, *cpu])
    except (ValueError, OSError) as error:
        # GRPO's batch sizes are checked against the process count, which is one here.
        if (num_gpus or 1) > 1 and "divisible" in str(error):
            return [
                Check("settings", "skip", f"batch sizes are checked by the stage on {num_gpus} processes")
            ]
        return [Check("settings", "FAIL", f"stages/{stage}.py refuses them: {error}")]
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return [Check("settings", "ok", f"read as stages/{stage}.py reads them")]


def diagnose(
    recipe_path: str | Path,
    num_gpus: int | None = None,
    overrides: Sequence[str] = (),
    stage: str | None = None,
) -> list[Check]:
    """Every check of a recipe, in order; `stage` (cot, sft, rl, eval) as make runs it, else told from
    the recipe's keys."""
    recipe = load_recipe(recipe_path, overrides)
    stage = stage or stage_of(recipe)
    steps: list[Callable[[], list[Check]]] = [
        lambda: check_settings(recipe_path, stage, overrides, num_gpus),
        lambda: check_gpus(recipe, stage, num_gpus),
        lambda: check_packages(recipe),
        lambda: check_wandb(recipe),
        lambda: check_data(recipe),
        lambda: check_model(recipe),
        lambda: check_budget(recipe, stage),
        lambda: check_output_dir(recipe),
        lambda: check_disk(recipe, stage),
        lambda: check_chat_template(recipe, stage),
        check_extension_builds,
    ]
    return [check for step in steps for check in step()]


def run(
    recipe_path: str | Path,
    num_gpus: int | None = None,
    overrides: Sequence[str] = (),
    stage: str | None = None,
) -> int:
    """Print one line per check; 1 when any failed."""
    checks = diagnose(recipe_path, num_gpus, overrides, stage)
    for check in checks:
        print(check.line(), flush=True)
    failed = sum(check.status == "FAIL" for check in checks)
    print(
        f"doctor: {recipe_path}: {failed} failed of {len(checks)}" if failed else f"doctor: {recipe_path}: ok"
    )
    return 1 if failed else 0

"""What the SFT and GRPO trainers share: the stage's start (settings checked, secrets, W&B, the prompt
contract, the output folder claimed), batching policy, checkpoints and resume records, stopping and
requeueing before a SLURM job's end, saving and publishing the final model."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoConfig, IntervalStrategy, TrainerCallback, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import GENERATION_CONFIG_NAME
from trl import GRPOTrainer, SFTTrainer
from trl.trainer.utils import RepeatSampler

from reasoningner.configs import (
    DEFAULT_MAX_NEW_TOKENS,
    PROMPT_CONTRACT,
    PromptArguments,
    PromptContract,
    ResumableArguments,
    adapter_base,
    is_adapter,
    is_hub_id,
    require_model,
    training_sources,
)
from reasoningner.doctor import stale_build_locks
from reasoningner.files import exclusive, write_whole
from reasoningner.generation import adapter_config
from reasoningner.jobs import Termination, stop, terminated, terminating
from reasoningner.model_card import default_repository, hub_repository, publish, write_model_card
from reasoningner.prompts import check_wording
from reasoningner.tracking import (
    MANIFEST,
    WEIGHT_FILES,
    claim_data,
    claim_output_dir,
    config_dict,
    continue_wandb_run,
    input_contents,
    keep_secrets_out,
    record_trainer_stage,
    record_trainer_start,
    recorded_run,
    run_settings,
    set_trainer_run,
    wants_wandb,
)

logger = logging.getLogger(__name__)

# Attention kernels that take a flattened batch with position ids and attend within each sequence
# at no extra cost; other implementations would attend over the whole flattened batch.
VARLEN_ATTENTION = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn",
    "kernels-community/vllm-flash-attn3",
)


def model_init_kwargs(training_args: Any, model_args: Any) -> dict[str, Any]:
    """How the trainer loads the model: without the Hub's kernels unless the recipe's own
    `model_init_kwargs` ask for them (`use_kernels: true`), overridden by the model options
    (quantization goes to the trainer's `quantization_config`).

    transformers 5.25 turned Hub kernels on by default: on a GPU, `model.train()` then swaps layers
    for kernels downloaded from the Hub mid-run, which fails on a node without internet and changes a
    run's numbers with the kernels' versions. Saying `use_kernels: False` keeps every admitted
    transformers version loading the same model (it was 5.24's default).
    The trainer loads the model after the training arguments exist, so that DeepSpeed ZeRO-3
    partitions it while loading instead of every rank materialising the whole checkpoint.
    """
    return {
        "use_kernels": False,
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
    }


def configure_batching(training_args: Any, attn_implementation: str | None) -> str:
    """Padding-free batches where the attention kernel handles them, length-grouped batches otherwise.

    Returns what was chosen, for the log. A recipe that sets `packing` keeps its own choice.
    """
    if training_args.packing:
        return f"packing ({training_args.packing_strategy})"
    if attn_implementation in VARLEN_ATTENTION:
        # TRL refuses padding-free batches with a `max_length` unless packing, so the limit has to go.
        if training_args.max_length is not None:
            logger.warning(
                "padding-free batches: max_length=%d is not enforced (TRL truncates only padded or packed "
                "batches); set packing: true to cap the sequence length",
                training_args.max_length,
            )
            training_args.max_length = None
        training_args.padding_free = True
        return "padding-free"
    training_args.padding_free = False
    training_args.train_sampling_strategy = "group_by_length"
    return "length-grouped"


def start_deepspeed_on_cpu(training_args: Any) -> None:
    """Start DeepSpeed's communication layer for a DeepSpeed run on CPU (`use_cpu`, several processes).

    There TrainingArguments sets up torch.distributed alone, so ZeRO-3's partitioned loading would
    see a world of one process and refuse the batch sizes filled in for the real one. On GPU,
    TrainingArguments (or `accelerate launch`) has already started it, and this does nothing.
    """
    if training_args.deepspeed and training_args.use_cpu and training_args.world_size > 1:
        import deepspeed

        deepspeed.init_distributed(dist_backend=training_args.ddp_backend or "gloo")


def peft_config(model_args: Any) -> Any:
    """TRL's LoRA config of the recipe, recording the base model's revision: PEFT loads an adapter's base
    at the revision its config names (`merge_lora`, GRPO continuing it, a user of a published adapter),
    and TRL leaves it unset, so the adapter would be put on another revision than it was trained on."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and model_args.model_revision:
        config.revision = model_args.model_revision
    return config


def zero_stage(training_args: Any) -> int | None:
    """The DeepSpeed ZeRO stage a run trains under (a recipe's `deepspeed` file or accelerate's config);
    None without DeepSpeed (DDP or one process)."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


def check_saved_weights(training_args: Any, model_args: Any) -> None:
    """Refuse full fine-tuning under ZeRO-3 without `stage3_gather_16bit_weights_on_model_save`:
    transformers then saves DeepSpeed's shards and no weights, in each checkpoint and the final model
    alike, which the next stage, evaluation and vLLM cannot load (and `checkpoint_problem` takes for
    checkpoints cut short). A LoRA adapter is gathered and saved either way."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    lora = model_args.use_peft or is_adapter(model_args.model_name_or_path)
    if plugin is not None and plugin.zero_stage == 3 and not plugin.zero3_save_16bit_model and not lora:
        raise ValueError(
            "ZeRO-3 without stage3_gather_16bit_weights_on_model_save saves no model weights: set it true "
            "in the DeepSpeed config (recipes/accelerate/ds_zero3.json does)"
        )


def check_trained_precision(training_args: Any, model_args: Any) -> None:
    """Refuse full fine-tuning of half-precision weights (`dtype` bfloat16, or `auto`/unset on a bf16
    checkpoint such as Qwen3's) without DeepSpeed or FSDP (whose mixed-precision policy decides): their
    fp32 master weights are missing then, torch's AdamW updates the bf16 weights in place, and most
    updates round away (a 2e-5 step of a weight of 0.02 is under bf16's resolution there), silently.
    LoRA adapters are float32 whatever the base's dtype (QLoRA's bf16, as TRL casts them after its
    paper), but not the whole modules LoRA also trains (`lora_modules_to_save`)."""
    start = model_args.model_name_or_path
    if is_adapter(start):  # GRPO continuing a stage-2 adapter as it is
        lora, whole = True, adapter_config(start).get("modules_to_save")
    else:
        lora, whole = model_args.use_peft, model_args.lora_modules_to_save
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    # accelerate's FSDP config says so in the environment only; a recipe's `fsdp` in the arguments.
    fsdp = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")
    if (lora and not whole) or quantized or zero_stage(training_args) is not None or fsdp:
        return
    dtype = model_args.dtype
    if dtype in (None, "auto"):  # the checkpoint's own (transformers 5 loads None as auto)
        config = AutoConfig.from_pretrained(
            start,
            revision=model_args.model_revision,
            trust_remote_code=getattr(training_args, "trust_remote_code", False),
        )
        dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    if dtype in ("bfloat16", "float16"):
        raise ValueError(
            f"full fine-tuning of {dtype} weights without DeepSpeed or FSDP: the optimizer updates them in "
            "place and most updates round away; launch with DeepSpeed (ACCELERATE_CONFIG="
            "recipes/accelerate/zero2.yaml or zero3.yaml), load them in float32 (--dtype float32; bf16: "
            "true still computes in bf16), or train LoRA (--use_peft true) without lora_modules_to_save"
        )


def check_adapter_start(model_args: Any) -> None:
    """Refuse a new LoRA (`use_peft`) on a stage-2 adapter, which GRPO continues as it is: TRL refuses
    the pair only once the model has loaded."""
    if model_args.use_peft and is_adapter(model_args.model_name_or_path):
        raise ValueError(
            f"{model_args.model_name_or_path} is a LoRA adapter, which GRPO continues with its own r, "
            "alpha and modules: set use_peft false (--use_peft false), or start from a merged model "
            "(SFT with merge_lora true)"
        )


def policy_model(path: str, model_init_kwargs: dict[str, Any], training_args: Any = None) -> Any:
    """What to hand the trainer: the path of a full model (loaded by the trainer, ZeRO-3 aware), or a
    trainable PEFT model when `path` is a LoRA adapter from stage 2 (RL continues the adapter)."""
    if not is_adapter(path):
        return path
    from peft import AutoPeftModelForCausalLM

    kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    policy = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True, **kwargs)
    if zero_stage(training_args) == 3:
        # PEFT upcasts the adapter to fp32 on a bf16 base, and ZeRO-3 gathers a module's parameters into
        # one dtype's buffer: the first optimizer step fails (trl#6089). TRL keeps its own adapters in the
        # base's dtype too (autocast_adapter_dtype=False, which AutoPeftModel would hand the base model).
        policy.to(policy.get_base_model().dtype)
    return policy


@contextlib.contextmanager
def kept_random_states() -> Iterator[None]:
    """Python's, NumPy's and torch's random states (CPU and every GPU) as they were before the block."""
    states = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    )
    try:
        yield
    finally:
        python_state, numpy_state, cpu_state, cuda_states = states
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu_state)
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)


class HeldOutSFTTrainer(SFTTrainer):
    """SFTTrainer whose evaluation leaves training as it would be without it (`kept_random_states`).

    An evaluation draws from the global random state (its length-grouped order, the data loader's seed),
    which the next epoch's order is drawn from; at an epoch's end it runs after that step's checkpoint,
    so a run resumed from the checkpoint, which does not run it, would train the next epoch in another
    order than the run never killed."""

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with kept_random_states():
            return super().evaluate(*args, **kwargs)


class HeldOutGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose held-out evaluation leaves training exactly as it would be without it.

    TRL's evaluation samples completions from the random generators training samples from, and logs them
    into the training completions table (overwriting that step's `completions_<step>.parquet`). Here
    each evaluation restores the random states it found (`kept_random_states`) and the completions
    table, and logs no table of its own: its rewards arrive as `eval_*` metrics. A run with a held-out
    curve then trains to the very weights of the run without one. Generation outside this process
    (vLLM's server mode) keeps its own random state, which evaluation advances."""

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        completions, log_completions = self._logs, self.log_completions
        self._logs, self.log_completions = copy.deepcopy(completions), False
        try:
            with kept_random_states():
                return super().evaluate(*args, **kwargs)
        finally:
            self._logs, self.log_completions = completions, log_completions


def resume_points(training_args: Any) -> int:
    """Every how many optimizer steps a checkpoint resumes exactly: each step for SFT; for GRPO, the steps
    that end a generation cycle (`check_generation_cycle`)."""
    if not hasattr(training_args, "steps_per_generation"):
        return 1
    cycle = training_args.steps_per_generation * training_args.num_iterations  # micro-batches
    return cycle // math.gcd(cycle, training_args.gradient_accumulation_steps)


def check_generation_cycle(training_args: Any) -> None:
    """Refuse checkpoints that would fall inside a GRPO generation cycle (`num_iterations` > 1, or more
    `steps_per_generation` than accumulation steps): TRL keeps the cycle's generations and its position
    in it only in memory, so a run resumed there would generate anew and shift every later cycle, training
    some generations more often and others less than the run never killed. Checked on the steps a save
    falls on: `save_steps` (a ratio of `max_steps` as the Trainer resolves it), or `eval_steps` where
    `save_strategy: best` saves at evaluations; an epoch's end can fall anywhere."""
    cycle = training_args.steps_per_generation * training_args.num_iterations  # micro-batches
    accumulation = training_args.gradient_accumulation_steps
    strategy = getattr(
        training_args.save_strategy, "value", training_args.save_strategy
    )  # an enum once parsed
    every = resume_points(training_args)
    if strategy == "no" or every == 1:  # every optimizer step ends a cycle
        return
    if strategy == "steps":
        name, steps = "save_steps", training_args.save_steps
    elif strategy == "best" and training_args.eval_strategy == IntervalStrategy.STEPS:
        name, steps = "eval_steps", training_args.eval_steps  # save_strategy best saves at evaluations
    else:
        raise ValueError(
            f"save_strategy {strategy} can save inside a generation cycle ({cycle} micro-batches, "
            f"{accumulation} per optimizer step), where a resumed run would not train as one never killed: "
            f"use save_strategy steps with save_steps a multiple of {every}"
        )
    if steps < 1:  # a ratio of max_steps, as the Trainer resolves it
        if training_args.max_steps <= 0:
            raise ValueError(f"{name} {steps:g} is a ratio of max_steps, which is unset: give it in steps")
        steps = math.ceil(training_args.max_steps * steps)
    if training_args.max_steps > 0 and (training_args.max_steps * accumulation) % cycle:
        # The Trainer also saves at the last step, which a relaunch with a higher max_steps resumes.
        name, steps = "max_steps", training_args.max_steps
    elif (steps * accumulation) % cycle == 0:
        return
    raise ValueError(
        f"{name} {steps:g} falls inside a generation cycle ({training_args.steps_per_generation} "
        f"steps_per_generation x {training_args.num_iterations} num_iterations = {cycle} micro-batches, "
        f"{accumulation} per optimizer step): a run resumed there would not train as one never killed; "
        f"use a multiple of {every}, e.g. {name} {max(every, round(steps / every) * every)}"
    )


def held_out_schedule(training_args: Any, prompts: int) -> str:
    """When GRPO evaluates its held-out prompts, in words: held-out files and no schedule evaluate nothing
    (transformers' convention), which the stage says rather than leave unnoticed."""
    when = []
    if training_args.eval_on_start:
        when.append("before the first step")
    if training_args.eval_strategy == IntervalStrategy.STEPS:
        when.append(f"every {training_args.eval_steps:g} steps and after the last")
    elif training_args.eval_strategy == IntervalStrategy.EPOCH:
        when.append("every epoch")
    return f"{prompts} held-out prompts, " + (" and ".join(when) or "never evaluated (eval_strategy no)")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete.

    The Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler and RNG
    states: a checkpoint without it (or with a half-written one) was cut short by a kill.
    """
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json"
    try:
        step = json.loads(state_file.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError):
        return "trainer_state.json is incomplete"
    if f"checkpoint-{step}" != checkpoint.name:
        return f"trainer_state.json is of step {step}"
    if not any(next(checkpoint.glob(pattern), None) for pattern in WEIGHT_FILES):
        return "no model weights"
    if any(checkpoint.glob("global_step*")) and not (checkpoint / "latest").is_file():
        return "DeepSpeed states without their 'latest' tag"
    return None


def distributed() -> bool:
    """Whether this process is one of several of a torch.distributed run."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def from_main_process(value: Any) -> Any:
    """`value` as the main process has it, on every process (picklable)."""
    if not distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_training_data(
    start: TrainerStart, training_args: Any, train: Dataset, held_out: Dataset | None
) -> None:
    """Refuse to train when the processes read different data (a stage-1 file still being written, a Hub
    dataset that changed between their reads, other copies on other nodes: each would draw its batches
    from its own rows), or when a resumed run reads other training rows than it started on
    (`tracking.claim_data`)."""
    digests = {"train": data_digest(train)} | (
        {"eval": data_digest(held_out)} if held_out is not None else {}
    )
    if distributed():
        every: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, digests)
        differing = [rank for rank, other in enumerate(every) if other != every[0]]
        if differing:
            raise ValueError(
                f"processes {differing} read other train or eval data than the main process (a file being "
                "written, a Hub dataset updated between reads, or node-local copies that differ): give every "
                "node the same, finished data"
            )
    problem = None
    if training_args.process_index == 0:
        try:
            claim_data(
                training_args.output_dir, {"train": digests["train"]}, resuming=start.checkpoint is not None
            )
        except Exception as error:  # noqa: BLE001 - every process must end with it, not wait for the main one
            problem = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    if problem := from_main_process(problem):
        raise ValueError(problem)


def data_digest(data: Dataset) -> str:
    """A hash of the rows, in order."""
    digest = hashlib.sha256()
    for batch in data.iter(batch_size=1024):
        digest.update(json.dumps(batch, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return f"{data.num_rows}:{digest.hexdigest()}"


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` of an earlier attempt, so that a relaunched job continues.

    Incomplete ones (a kill while saving) are skipped with a warning naming them, so that the run
    resumes from the checkpoint before instead of failing on every relaunch.
    """
    output = Path(output_dir)
    found = [p for p in output.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    for checkpoint in sorted(found, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        logger.warning("skipping %s: %s (cut short while saving)", checkpoint, problem)
    return None


# What a trainer stage leaves in its output folder: resume points and the final model (a LoRA run's
# adapter_config.json too: left after an overwrite by full fine-tuning, it would make the new full model
# pass for an adapter, to transformers, `is_adapter`, the card and publishing).
TRAINER_OUTPUTS = ("checkpoint-*", "trainer_state.json", "*.safetensors", "merged", "adapter_config.json")


# The output folder's writer: the main process holds `<output_dir>/training.lock` from the start of a
# stage to its end (`finish_trainer_stage`; else until the process ends, however it ends). A second launch
# on the folder (a job submitted twice, a requeue while a lost node's ranks still write) fails at once.
TRAINING = "training"
_WRITING = contextlib.ExitStack()


class TrainerStart(NamedTuple):
    """What a trainer stage knows before it loads anything (`start_trainer_stage`)."""

    prompt: PromptArguments  # resolved against the contract of the model it starts from
    checkpoint: str | None  # to resume from; None: step 0
    configs: tuple[Any, ...]  # script, prompt, training and model arguments, for the manifest
    inputs: list[str]  # training files and the model: manifest, W&B group, artifacts
    push_to: str | None  # the Hub repository to publish the final model to (`push_to_hub`)
    contract: PromptContract | None  # of the model it starts from; None for a base model
    upstream: list[str]  # the data sources of a Hub model it starts from (its published manifest's)


def check_resumable(training_args: Any) -> None:
    """Refuse the Trainer settings under which a killed run would not resume as one never killed, or the
    model would be asked otherwise than it was trained."""
    if training_args.save_only_model:
        # transformers (5.24) then saves neither the optimizer and scheduler nor the RNG states (and so not
        # `_ResumeRecord`'s data order): a resumed run restarts Adam's moments and may train examples twice;
        # under DeepSpeed it cannot resume at all ("Can't find a valid checkpoint"), days into a run.
        raise ValueError(
            "save_only_model: checkpoints without the optimizer, scheduler and random states cannot resume "
            "a run as if never killed (under DeepSpeed not at all): leave it false, and bound the disk "
            "checkpoints take with save_total_limit"
        )
    if getattr(training_args, "sync_ref_model", False):  # GRPO's
        # TRL moves the reference model toward the policy every ref_model_sync_steps and saves it in no
        # checkpoint: a resumed run's KL term would measure against the starting model instead.
        raise ValueError(
            "sync_ref_model: the reference model it updates is in no checkpoint, so a resumed run's KL term "
            "would measure against another model: leave it false"
        )
    if getattr(training_args, "chat_template_kwargs", None):  # GRPO's
        # The prompt contract records no template arguments: evaluation, predict, the card and a later
        # stage would ask the model otherwise than GRPO trained it.
        raise ValueError(
            "chat_template_kwargs: GRPO would render its prompts otherwise than SFT trained them and "
            "evaluation, predict and the model card ask (the prompt contract has no template arguments): "
            "leave it unset"
        )
    if training_args.enable_jit_checkpoint:
        # transformers' own save at SIGTERM: each process on its own, inside a step or a GRPO generation
        # cycle, where a run does not resume exactly; `train_from` saves where it does, every rank alike.
        raise ValueError(
            "enable_jit_checkpoint: SFT and GRPO save a checkpoint at SIGTERM themselves, at the next step "
            "a run resumes from exactly: leave enable_jit_checkpoint false"
        )
    if training_args.save_on_each_node:
        # The resume record, contract and manifest are the main process's, in the folder every process
        # resumes from (`from_main_process`): node-local folders would resume each node otherwise.
        raise ValueError(
            "save_on_each_node: runs resume from the main process's checkpoints, which every node must "
            "see: put output_dir on shared storage and leave save_on_each_node false"
        )
    if training_args.load_best_model_at_end and training_args.save_total_limit == 1:
        # transformers then keeps only the best checkpoint at the end of training: relaunched, the
        # finished run would resume from it and train again (a kill inside save_final too).
        raise ValueError(
            "save_total_limit 1 with load_best_model_at_end deletes the last checkpoint at the end, and a "
            "relaunch would train again from the best one: use save_total_limit 2"
        )


def publish_target(script_args: Any, training_args: Any, model_args: Any) -> str | None:
    """The name of the Hub repository `push_to_hub` publishes the final model to (`start_trainer_stage`
    makes it before training). The final model goes with its card and contract (`finish_trainer_stage`),
    not by the Trainer, which would push TRL's card with every save: its `push_to_hub` is turned off."""
    push_to = None
    if training_args.push_to_hub:
        check_publishable(script_args, model_args)
        # By default named after the run's path under outputs/ (qwen3-8b-sft, reasoningner-qwen3-8b-sft):
        # `sft` alone would send every model of one stage to one repository.
        push_to = training_args.hub_model_id or default_repository(training_args.output_dir)
    training_args.push_to_hub = False
    return push_to


def start_trainer_stage(
    stage: str, script_args: Any, prompt: PromptArguments, training_args: Any, model_args: Any
) -> TrainerStart:
    """What SFT and GRPO do before any model loads, so that a mistake costs seconds, not a model load:
    keep secrets out of every record, seed, refuse a dead extension build's lock, start DeepSpeed on
    CPU, check the model exists, join the pipeline's W&B group, resolve the prompt against the model's
    contract (its folder's, or its Hub repository's at `model_revision`), take the output folder's
    writer's lock, check the folder, make the Hub repository it publishes to, claim the folder
    (`tracking.claim_output_dir`), and say where training starts."""
    keep_secrets_out(training_args)
    main_process = training_args.process_index == 0
    check_resumable(training_args)
    set_seed(training_args.seed)
    stale = stale_build_locks()
    if stale:  # DeepSpeed would wait on it without a word, for the whole allocation
        raise ValueError("; ".join(stale))
    start_deepspeed_on_cpu(training_args)
    check_saved_weights(training_args, model_args)
    require_model(model_args.model_name_or_path)
    check_trained_precision(training_args, model_args)  # `dtype: auto` reads the model's config
    push_to = publish_target(script_args, training_args, model_args)
    inputs = [*script_args.train_files, model_args.model_name_or_path]
    if wants_wandb(training_args.report_to):
        set_trainer_run(stage, training_args.output_dir, inputs)
    # A model from the Hub brings its contract from there: a Hub that cannot be asked stops the run
    # rather than train on the recipe's prompt settings.
    with training_args.main_process_first(local=False, desc="the model's prompt contract"):  # one Hub ask
        contract = PromptContract.load(
            model_args.model_name_or_path, from_hub=True, revision=model_args.model_revision, strict=True
        )
        # A Hub model trained here carries the data of its stages (its manifest): this run's lineage.
        upstream = (
            training_sources(model_args.model_name_or_path, from_hub=True, revision=model_args.model_revision)
            if is_hub_id(model_args.model_name_or_path)
            else []
        )
    check_wording(contract)
    prompt = prompt.resolve(contract)
    configs = (script_args, prompt, training_args, model_args)
    # How it is launched is part of the run too. The process count: a checkpoint resumed on another skips
    # or repeats data (the Trainer skips steps x accumulation batches per process), and ZeRO's optimizer
    # shards no longer fit. The ZeRO stage (none: DDP), from a recipe's `deepspeed` or accelerate's config:
    # DeepSpeed finds no checkpoint of its own in a DDP one, and DDP silently starts a DeepSpeed
    # checkpoint with a fresh optimizer.
    settings = run_settings(config_dict(*configs)) | {
        "world_size": training_args.world_size,
        "zero_stage": zero_stage(training_args),
        "input_contents": input_contents(inputs),  # not eval_files: evaluation leaves training as it is
    }
    # Before the folder is read for this run: a second writer would delete or mix checkpoints.
    if main_process:
        _WRITING.enter_context(exclusive(Path(training_args.output_dir) / TRAINING))
    try:
        relaunch = recorded_run(training_args.output_dir, settings)
        fresh = script_args.fresh_start(this_run=relaunch)
        claim = functools.partial(
            claim_output_dir, training_args.output_dir, settings, overwrite=fresh, stale=TRAINER_OUTPUTS
        )
        claim(write=False)  # refused before anything changes: a Hub repository made, another run deleted
        if push_to and main_process:
            # Made (or checked to be this run's) now, after every other check: a missing login or a name
            # the account may not use fails before training, not after it, and a refused run makes none.
            try:
                push_to = hub_repository(push_to, training_args.output_dir, training_args.hub_private_repo)
            except ValueError:  # the repository holds another model
                raise
            except Exception as error:  # noqa: BLE001 - the Hub unreachable, whatever the client raises
                if not relaunch:
                    raise
                # A relaunch (a requeue after a preemption) the Hub failed for a moment would end the job
                # unrequeued, days in: the first attempt checked it; `finish_trainer_stage` asks again.
                logger.warning(
                    "the Hub could not be asked for %s (%s): asked again to publish", push_to, error
                )
        resume = claim(write=main_process)
        # Rank 0's: a node that sees other files (a node-local or lagging output folder) would resume from
        # another step, or load other shards, and the ranks would hang or train on misaligned batches.
        checkpoint = from_main_process(last_checkpoint(training_args.output_dir) if resume else None)
        if checkpoint and not Path(checkpoint, "trainer_state.json").is_file():
            raise ValueError(
                f"process {training_args.process_index}: the main process resumes from {checkpoint}, which "
                "this node does not see: output_dir must be on storage every node shares"
            )
    except BaseException:
        _WRITING.close()  # a refused start holds nothing (a later launch in this process, a notebook)
        raise
    if main_process and wants_wandb(training_args.report_to):
        continue_wandb_run(training_args.output_dir, resuming=resume or relaunch)
    if checkpoint:
        # `eval_on_start` means step 0, already evaluated: at the checkpoint's step it would log a second
        # or an unscheduled evaluation.
        training_args.eval_on_start = False
    if main_process:
        start = f"resuming from {checkpoint}" if checkpoint else "starting at step 0"
        print(
            f"{stage}: {start} in {training_args.output_dir}; {global_batch(stage, training_args)}",
            flush=True,
        )
    return TrainerStart(prompt, checkpoint, configs, inputs, push_to, contract, upstream)


def global_batch(stage: str, training_args: Any) -> str:
    """An optimizer step's batch in words: it grows with the processes a launch has (nodes x GPUs), where a
    recipe states the batch it was written for."""
    world, per_device = training_args.world_size, training_args.per_device_train_batch_size
    accumulated = training_args.gradient_accumulation_steps
    unit = "completions" if stage == "rl" else "sequences"
    return (
        f"{world * per_device * accumulated} {unit} an optimizer step ({world} processes x {per_device} x "
        f"{accumulated} accumulated)"
    )


def check_publishable(script_args: Any, model_args: Any) -> None:
    """A LoRA adapter published alone names its base by the path it was trained from: one on a local
    folder (GRPO from an SFT output, or GRPO continuing an adapter on one) could be loaded by no one
    else."""
    start = model_args.model_name_or_path
    continued = is_adapter(start)  # GRPO continuing a stage-2 adapter publishes an adapter on its base
    base = adapter_base(start) if continued else start
    if (model_args.use_peft or continued) and not script_args.merge_lora and not is_hub_id(base):
        raise ValueError(
            f"push_to_hub of a LoRA adapter on the local model {base}: no one else could load it; set "
            "merge_lora: true (the merged model is published) or train from a Hub model"
        )


def cut_conversations(dataset: Any, max_length: int | None) -> int:
    """How many of TRL's tokenized training conversations `max_length` cut before the end of their answer.

    TRL truncates silently, keeping a conversation that still has tokens to learn, so a rationale-first
    target that is too long is trained without its answer or its end of turn. Such a conversation is
    exactly `max_length` long and its last trained token is not the one the shorter ones end on (the
    template's end of turn), found from the data, so no template is assumed.
    """
    if max_length is None or len(dataset) == 0 or "labels" not in dataset.column_names:
        return 0
    import pyarrow.compute as pc

    # A slice of rows at a time: TRL's filter leaves an indices mapping, through which the whole column
    # would be copied into memory (GBs at the paper's sizes, on every process).
    batches = dataset.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=4096)
    lengths = np.concatenate(
        [pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False) for batch in batches]
    )
    full = [int(i) for i in (lengths == max_length).nonzero()[0]]
    if not full:
        return 0

    def last_trained(index: int) -> int | None:
        return next((t for t in reversed(dataset[index]["labels"]) if t != -100), None)

    shorter = [int(i) for i in (lengths < max_length).nonzero()[0][:200]]
    ends = Counter(last_trained(i) for i in shorter)
    if not ends:  # every conversation fills max_length: all were cut
        return len(full)
    end = ends.most_common(1)[0][0]
    return sum(last_trained(i) != end for i in full)


def answer_budget(dataset: Any, max_length: int | None = None) -> int | None:
    """An SFT model's output budget (`PromptContract.max_new_tokens`): twice the longest answer it trained,
    in tokens, at least `DEFAULT_MAX_NEW_TOKENS`, at most `max_length` (no longer sequence was trained,
    and a budget as long as a serving context leaves no room for the prompt). A sentence longer or
    denser than any it trained on writes a longer rationale, and an answer cut short is no answer; a
    budget too large costs only the time of an output that runs on.

    The answers are counted in TRL's tokenized training rows: their `labels` that are not -100 (the answer
    and its end of turn under `assistant_only_loss`; the prompt too without it: more, never less), per
    sequence where TRL packed them by `bfd` (its `seq_lengths`), per row under `wrapped` packing (pieces
    of several answers: more, or part of one). None without labels."""
    if len(dataset) == 0 or "labels" not in dataset.column_names:
        return None
    import pyarrow.compute as pc

    packed = "seq_lengths" in dataset.column_names
    columns = dataset.select_columns(["labels", "seq_lengths"] if packed else ["labels"])
    longest = 0
    for batch in columns.with_format("arrow").iter(batch_size=4096):  # a bounded slice of the rows at a time
        labels = batch["labels"].combine_chunks()
        trained = pc.not_equal(pc.list_flatten(labels), -100).to_numpy(zero_copy_only=False)
        if packed:  # each token's sequence: its packed sequence's index, from the sequences' lengths
            sizes = pc.list_flatten(batch["seq_lengths"].combine_chunks()).to_numpy(zero_copy_only=False)
            owner = np.repeat(np.arange(len(sizes)), sizes)
        else:
            owner = pc.list_parent_indices(labels).to_numpy()
        if trained.any():
            longest = max(longest, int(np.bincount(owner[trained]).max()))
    if not longest:
        return None
    budget = max(2 * longest, DEFAULT_MAX_NEW_TOKENS)
    return min(budget, max_length) if max_length else budget


class _RunFinished(Exception):
    """Raised by `_StopAtLastStep` to leave `Trainer.train` before it takes a step."""


class _StopAtLastStep(TrainerCallback):
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            raise _RunFinished


class _JobEnding(Exception):
    """Raised by `_StopBeforeJobEnd` once its checkpoint is saved, to leave `Trainer.train` at once: the
    end of training (the best model loaded, W&B's final artifact, rotations) is not this attempt's. Its
    argument: the signal that ended the attempt, or None for the job's time limit."""


class _StopBeforeJobEnd(TrainerCallback):
    """Saves a checkpoint at the last point a run resumes from exactly (`resume_points`) before the SLURM
    job's time limit would cut the next interval short (`ResumableArguments.job_ending`: the interval
    as the last one took, and each evaluation due by its end as the last one took), or at the first such
    point after SIGTERM (a preemption, `scancel`: `termination`), then ends the attempt: a job killed at
    its limit is never requeued, and a kill loses the steps since the last checkpoint. The step's own
    logging, evaluation and save run first, as in a run never stopped. Every rank stops at the same
    step, as rank 0 decides."""

    def __init__(self, job: ResumableArguments, every: int, termination: Termination | None = None) -> None:
        self.job, self.every, self.termination = job, every, termination
        self.mark = self.step_ended = time.monotonic()
        self.evaluation = 0.0  # how long the last evaluation took
        self.stopping_at: int | None = None
        self.signal: str | None = None  # that ends the attempt, as rank 0 saw it

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.mark = self.step_ended = time.monotonic()  # an evaluation on start is timed from here

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_ended = time.monotonic()
        step = state.global_step
        if step % self.every or step >= state.max_steps or self._ends_an_epoch_with_its_own_work(args, state):
            return
        # Going on means the next interval, as the last took, then any evaluation due by its end, then
        # the save: stopping now, only this step's evaluation and the save (the margin).
        evaluations = control.should_evaluate + self._evaluation_due(args, state, step + 1, step + self.every)
        ahead = self.step_ended - self.mark + self.evaluation * evaluations
        self.mark = self.step_ended
        signal = self.termination.signal if self.termination is not None else None
        # Clocks, steps' ends and signals' arrivals differ by rank.
        ending, self.signal = from_main_process((self.job.job_ending(interval=ahead), signal))
        if ending or self.signal is not None:
            control.should_save = True  # `save_strategy: best` may drop it at an evaluation: stop later
            self.stopping_at = state.global_step
        if self.signal is not None:  # SLURM's grace is short: the step's evaluation is skipped, not the save
            control.should_evaluate = False

    @staticmethod
    def _evaluation_due(args: Any, state: Any, first: int, last: int) -> bool:
        """Whether `eval_steps` schedules an evaluation at a step from `first` to `last`."""
        every = state.eval_steps if args.eval_strategy == IntervalStrategy.STEPS else 0
        return bool(every) and last // every >= math.ceil(first / every)

    @staticmethod
    def _ends_an_epoch_with_its_own_work(args: Any, state: Any) -> bool:
        """An epoch's last step evaluates, logs or saves after `on_save` under an `epoch` strategy: a stop
        there would skip that for good, so the run stops at the next point instead."""
        strategies = (args.eval_strategy, args.save_strategy, args.logging_strategy)
        return float(state.epoch or 0).is_integer() and any(
            getattr(s, "value", s) == "epoch" for s in strategies
        )

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.evaluation = time.monotonic() - self.step_ended

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopping_at == state.global_step:
            if distributed():
                torch.distributed.barrier()  # every rank's part of the checkpoint is written
            raise _JobEnding(self.signal)


RESUME_RECORD = "resume_state.pt"


class _OrderedSampler(torch.utils.data.Sampler):
    """A training sampler that keeps the random state its current epoch's order was drawn from, and can
    be set to draw from a given one (`_ResumeRecord`); uninterrupted, it draws exactly as the one it wraps."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.drawn_from: torch.Tensor | None = None  # the random state of the current epoch's order
        self.resume_from: torch.Tensor | None = None
        self.resume_after: torch.Tensor | None = None  # a generator's state after the last epoch's draw

    @property
    def generator(self) -> torch.Generator | None:
        """The wrapped sampler's: accelerate gives one to a sampler without (`use_seedable_sampler: false`
        on several processes) by setting this attribute, which the wrapped sampler must then draw from."""
        return getattr(self.sampler, "generator", None)

    @generator.setter
    def generator(self, generator: torch.Generator) -> None:
        self.sampler.generator = generator

    def state(self) -> torch.Tensor:
        return self.generator.get_state() if self.generator is not None else torch.get_rng_state()

    def set_state(self, state: torch.Tensor) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.set_rng_state(state)

    def __iter__(self) -> Any:
        if self.resume_from is not None:
            self.set_state(self.resume_from)
        elif self.resume_after is not None and self.generator is not None:  # else transformers restores it
            self.generator.set_state(self.resume_after)
        self.resume_from = self.resume_after = None
        self.drawn_from = self.state()  # GRPO's sampler draws at its first index, from this state still
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _ResumeRecord(TrainerCallback):
    """Saves with each checkpoint (`resume_state.pt`) what a resumed run needs and transformers does not
    save, and sets it again when the run resumes from that checkpoint:

    - the random state the current epoch's order was drawn from, and the one after the draw, from which
      the next epoch's is drawn. transformers' length-grouped sampler shuffles with the global random
      state of the moment an epoch begins, TRL's GRPO sampler with its own generator, seeded once: a run
      resumed inside epoch 1 or later would draw epoch 0's order again (or another), training some
      examples twice and others never. Those samplers are wrapped in `_OrderedSampler` (accelerate
      already draws a plain random one from the seed and the epoch).
    - TRL SFT's count of trained tokens (`num_tokens`, a W&B x-axis), which would restart at 0.

    It is written with the RNG states, before `trainer_state.json` completes the checkpoint: written on
    `on_save`, after transformers has deleted the checkpoint before, a kill in between would leave a
    complete-looking newest checkpoint without it."""

    def __init__(self, trainer: Any, checkpoint: str | None) -> None:
        self.trainer = trainer
        self.record = self._load(Path(checkpoint) / RESUME_RECORD) if checkpoint else {}
        self.sampler: _OrderedSampler | None = None
        state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
        self.started_for = json.loads(state.read_text(encoding="utf-8"))["max_steps"] if state else None

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        if not path.is_file():
            logger.warning(
                "%s has no %s: its epoch may be drawn in another order, its token count restarts",
                path.parent,
                path.name,
            )
            return {}
        return torch.load(path, weights_only=True)

    def wrap(self, sampler: Any) -> Any:
        if not isinstance(sampler, LengthGroupedSampler | RepeatSampler):
            return sampler
        self.sampler = _OrderedSampler(sampler)
        if "drawn_from" in self.record:
            if not self.record["epoch_ended"]:
                self.sampler.resume_from = self.record["drawn_from"]
            else:
                self.sampler.resume_after = self.record["after"]
        return self.sampler

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if "num_tokens" in self.record and hasattr(self.trainer, "_total_train_tokens"):
            self.trainer._total_train_tokens = self.record["num_tokens"]
        # A resumed state keeps the checkpoint's logging, eval and save steps; a relaunch may change them
        # (`tracking.OPERATIONAL`), and then means this launch's.
        state.compute_steps(args, state.max_steps)
        if self.started_for not in (None, state.max_steps) and args.lr_scheduler_type != "constant":
            # transformers lays the schedule over the length it trains for now (its state keeps the step).
            logger.warning(
                "this launch trains %d steps, the run's checkpoints %d: from step %d the learning rate "
                "follows the %s schedule (and warm-up) over %d steps, not the one the run started on",
                state.max_steps, self.started_for, state.global_step, args.lr_scheduler_type, state.max_steps,
            )  # fmt: skip

    def save(self, checkpoint: Path) -> None:
        state = self.trainer.state
        if not state.is_world_process_zero:
            return
        record: dict[str, Any] = {}
        if self.sampler is not None and self.sampler.drawn_from is not None:
            record["drawn_from"] = self.sampler.drawn_from
            record["after"] = self.sampler.state()
            record["epoch_ended"] = float(state.epoch).is_integer()
        if hasattr(self.trainer, "_total_train_tokens"):
            record["num_tokens"] = self.trainer._total_train_tokens
        torch.save(record, checkpoint / RESUME_RECORD)
        # How the checkpoint is asked and what it was trained on (`describe_run`) travel with it: a copied
        # or uploaded `checkpoint-N` is no longer below its run folder.
        for name in (PROMPT_CONTRACT, MANIFEST):
            if (Path(self.trainer.args.output_dir) / name).is_file():
                shutil.copy2(Path(self.trainer.args.output_dir) / name, checkpoint / name)
        if (contract := PromptContract.load(checkpoint)) is not None:
            ask_as_trained(checkpoint, contract)
        if getattr(self.trainer, "use_adaptive_entropy", False):
            # TRL writes it after trainer_state.json and the deletion of older checkpoints: a kill between
            # left a complete-looking checkpoint from which the entropy coefficient silently restarted.
            entropy = {
                "entropy_coef": self.trainer.entropy_coef,
                "last_world_entropy": self.trainer._last_world_entropy,
            }
            write_whole(checkpoint / "entropy_ctrl_state.json", json.dumps(entropy))


def train_from(stage: str, trainer: Any, checkpoint: str | None, job: ResumableArguments) -> None:
    """`trainer.train` from `checkpoint`, until the end of training or, in a SLURM job about to reach its
    time limit, until a checkpoint saved in time (`_StopBeforeJobEnd`): then the attempt ends there
    (`jobs.stop`: the job requeued, exit status `jobs.STOPPED`). SIGTERM during training (a preemption,
    `scancel`) is only noted: the run saves a checkpoint at its next resume point and ends
    (`jobs.terminated`: exit status `jobs.TERMINATED`, no requeue), as much as SLURM's grace allows
    before its SIGKILL (a checkpoint cut short is skipped by the next attempt). So is the SIGTERM of
    `stop`'s own requeue, which would otherwise end a process before it reports.

    A run whose checkpoint is at its last step stops with that checkpoint's weights and state loaded:
    transformers (5.24) would take one step past `max_steps` from it, so a run killed after its last
    checkpoint, or relaunched when finished, would end with other weights than one never killed. Such a
    run then ends as training does: with the best checkpoint's weights under `load_best_model_at_end`,
    and the callbacks' end of training (W&B's model artifact); the final speed and loss row is not
    logged, as no step was taken."""
    trainer.add_callback(_StopAtLastStep())
    record = _ResumeRecord(trainer, checkpoint)
    trainer.add_callback(record)
    build_sampler = trainer._get_train_sampler
    trainer._get_train_sampler = lambda *args, **kwargs: record.wrap(build_sampler(*args, **kwargs))
    save_rng_state = trainer._save_rng_state

    def save_rng_state_and_record(output_dir: str) -> None:
        save_rng_state(output_dir)
        record.save(Path(output_dir))
        # Every rank's RNG file is written before rank 0 completes the checkpoint (trainer_state.json):
        # transformers has no barrier there, and a kill in between left one that looked complete.
        trainer.accelerator.wait_for_everyone()

    trainer._save_rng_state = save_rng_state_and_record
    # No rank exits before the main one is done: a launcher ends the others when one exits.
    main, barrier = trainer.accelerator.is_main_process, trainer.accelerator.wait_for_everyone
    with terminating(raising=False) as termination:
        # Last: every other on_save runs before it ends the attempt.
        trainer.add_callback(_StopBeforeJobEnd(job, resume_points(trainer.args), termination))
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except _RunFinished:
            trainer.accelerator.print(f"{stage}: {checkpoint} is the run's last step; nothing left to train")
            if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
                trainer._load_best_model()
            trainer.control = trainer.callback_handler.on_train_end(
                trainer.args, trainer.state, trainer.control
            )
        except _JobEnding as ending:
            saved = f"checkpoint-{trainer.state.global_step}"
            if signal := ending.args[0]:
                terminated(f"{stage}: {signal} (a preemption, scancel): stopped at {saved}", main, barrier)
            stop(
                f"{stage}: stopped at {saved}, the last before the job's time limit (stop_before_job_end "
                f"{job.stop_before_job_end:g} s)",
                main,
                barrier=barrier,
            )
        # A signal after the last point the run could stop at: training has ended. With its last step
        # saved, a relaunch writes the final model from it and the final save is not begun; without (a
        # save_strategy that skipped it), the final save is the only record of the run and goes on.
        if signal := from_main_process(termination.signal):
            last = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
            if from_main_process(main and checkpoint_problem(last) is None):
                terminated(f"{stage}: {signal} (a preemption, scancel) at the end of training", main, barrier)
            trainer.accelerator.print(f"{stage}: {signal} at the end of training: saving the final model")


def describe_run(
    stage: str, trainer: Any, start: TrainerStart, contract: PromptContract, corpora: Sequence[str]
) -> None:
    """Before any checkpoint, which they describe too: the prompt contract and a provisional manifest
    (`tracking.record_trainer_start`). A checkpoint evaluated, trained further or published before the
    run ends is then asked as it learnt (`ask_as_trained`) and carries its lineage (the contamination
    check)."""
    if trainer.accelerator.is_main_process:
        contract.save(trainer.args.output_dir)
        record_trainer_start(
            stage, trainer.args.output_dir, start.configs, start.inputs, corpora, start.upstream
        )


# Generation settings that only sampling reads: transformers refuses to save them beside do_sample=False.
SAMPLING_ONLY = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "top_h",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
)


def ask_as_trained(folder: Path, contract: PromptContract) -> None:
    """Have a saved full model's generation config ask as evaluation and `predict` do: greedy, within the
    output budget it was trained with (plain `generate` would stop at 20 tokens, or the base's budget).
    That is what plain `generate`, transformers' pipeline and `vllm serve` take by default; a base's
    sampling defaults (Qwen3's temperature 0.6, top-k 20) would sample, and transformers refuses the
    card's `temperature=0` beside them. The saved file only, edited as JSON (transformers' strict check
    on saving would refuse a base's beam-search leftovers, hours into a run): training generates with
    the config it loaded (TRL's GRPO fills what it leaves unset from it). A LoRA adapter's folder has
    none (its users load the base's)."""
    path = folder / GENERATION_CONFIG_NAME
    if not path.is_file():
        return
    config = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in SAMPLING_ONLY}
    config["do_sample"] = False
    if contract.max_new_tokens:
        config["max_new_tokens"] = contract.max_new_tokens
    write_whole(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def finish_trainer_stage(stage: str, trainer: Any, start: TrainerStart, corpora: Sequence[str] = ()) -> None:
    """After the final save: the manifest (with the corpora the training records named, NER-CoT's
    `source`), the model card, and the model published when asked."""
    output_dir = trainer.args.output_dir
    push_to = start.push_to
    if push_to and trainer.accelerator.is_main_process:  # again: a relaunch may not have reached the Hub
        push_to = hub_repository(push_to, output_dir, trainer.args.hub_private_repo)
    card = functools.partial(write_model_card, output_dir, push_to)
    record_trainer_stage(
        stage,
        trainer,
        start.configs,
        start.inputs,
        before_logging=card,
        corpora=corpora,
        upstream=start.upstream,
    )
    if not trainer.accelerator.is_main_process:
        return
    merged = Path(output_dir) / "merged"
    if merged.is_dir():  # a merged model is a model of its own: it carries its lineage too
        shutil.copy2(Path(output_dir) / MANIFEST, merged / MANIFEST)
    if push_to:
        print(f"{stage}: published {publish(output_dir, push_to)}")
    _WRITING.close()


def save_final(trainer: Any, output_dir: str, merge_lora: bool, contract: PromptContract) -> Path | None:
    """Save model, tokenizer and prompt contract, the generation config asking as evaluation does
    (`ask_as_trained`); with `merge_lora`, also a merged full model (with the same contract and
    generation config) in `output_dir/merged`.

    The merge reloads the base model and the adapter just saved instead of merging the trainer's model,
    whose weights are partitioned across ranks under ZeRO-3 (empty tensors on each rank). It is the last
    step of a run: it turns off transformers' ZeRO-3 loading in this process so the whole model loads here.
    """
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        contract.save(output_dir)
        ask_as_trained(Path(output_dir), contract)
    trainer.save_state()  # trainer_state.json beside the model: the log history, for reports and plots
    if not merge_lora or not hasattr(trainer.model, "merge_and_unload"):
        return None
    if not trainer.accelerator.is_main_process:
        return None
    from peft import AutoPeftModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    merged_dir = Path(output_dir) / "merged"
    merged = AutoPeftModelForCausalLM.from_pretrained(output_dir, dtype="auto").merge_and_unload()
    # The trainer's generation config, which transformers gave the tokenizer's end token (for Qwen3-Base
    # the chat turn's end, missing from the base's): the merged model stops where it was trained to.
    merged.generation_config = trainer.model.generation_config
    merged.save_pretrained(merged_dir)
    trainer.processing_class.save_pretrained(merged_dir)
    contract.save(merged_dir)
    ask_as_trained(merged_dir, contract)
    return merged_dir

"""Recipe lint: every recipe parses with its own stage's parser, names only things that exist, takes
its inputs from the outputs of earlier stages, and agrees with the accelerate/DeepSpeed configs it is
launched with.

A GPU job that dies on a typo after hours in a queue is the worst bug a recipe can ship; all of this
runs on CPU in seconds. Recipes name their stage: `recipes/<dir>/<stage>.yaml`,
`<stage>-<variant>.yaml`, or any name in `recipes/<stage>/`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from reasoningner.configs import GOLD_TEMPLATE
from reasoningner.cot import ANNOTATIONS
from reasoningner.formats import FORMATS
from reasoningner.generation import BACKENDS
from reasoningner.readers import READERS
from reasoningner.rewards import REWARDS
from reasoningner.sources import is_source, overlaps, parse_source
from reasoningner.training import VARLEN_ATTENTION, check_generation_cycle
from tests.scripts import load_stage

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
ACCELERATE = RECIPES / "accelerate"
STAGES = ("cot", "sft", "rl", "eval")  # pipeline order: a stage reads what earlier stages wrote
STAGE_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if ACCELERATE not in p.parents)
ACCELERATE_CONFIGS = sorted(ACCELERATE.glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted(ACCELERATE.glob("ds_*.json"))

# Outputs made by a command rather than by a stage recipe, with the command.
MADE_BY_COMMANDS = {
    "outputs/tiny-cpu/tiny-model": "reasoningner tiny-model --out outputs/tiny-cpu/tiny-model"
}
# TRL 1.16 values that are only checked once training runs (GRPOConfig's help texts list them).
GRPO_LOSS_TYPES = {"grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"}
VLLM_MODES = {"colocate", "server"}
ATTENTION = {None, "eager", "sdpa", "flex_attention", *VARLEN_ATTENTION}
DTYPES = {None, "auto", "bfloat16", "float16", "float32"}
# What a string must look like to be taken for a local path (hub ids like Qwen/Qwen3-8B are not).
LOCAL_PATH = re.compile(
    r"^(\.\.?/|data/|outputs/|tests/|recipes/|stages/)|\.(txt|json|jsonl|conll|tsv|ya?ml)$"
)
MENTIONED_FILE = re.compile(
    r"(?<![\w./-])((?:recipes|stages|docker)/[\w./-]+\.(?:ya?ml|json|py|slurm|sh|md))"
)


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(RECIPES)) for p in paths]


def stage_of(path: Path) -> str:
    for candidate in (path.stem, path.stem.split("-")[0], path.parent.name):
        if candidate in STAGES:
            return candidate
    raise AssertionError(
        f"{path}: name it <stage>.yaml or <stage>-<variant>.yaml, or put it in recipes/<stage>/"
    )


def parse(path: Path) -> tuple[Any, ...]:
    """The dataclasses that `stages/<stage>.py --config path` builds, through the stage's own parser.

    The parser refuses keys no dataclass declares (and renamed ones), and the dataclasses validate
    their values. Trainer stages get `--use_cpu true`: TrainingArguments refuses `bf16` on a machine
    without a GPU.
    """
    parser = load_stage(stage_of(path)).make_parser()
    parser.check_environment = False  # GPU packages (vLLM, flash-attn) are not installed on a CI machine
    fields = {name for cls in parser.dataclass_types for name in cls.__dataclass_fields__}
    cpu = ["--use_cpu", "true"] if "use_cpu" in fields else []
    # A recipe's `env:` block sets environment variables; keep them out of the test process.
    with mock.patch.dict(os.environ):
        return parser.parse_args_and_config(args=["--config", str(path), *cpu])


@functools.cache
def parsed(path: Path) -> dict[str, Any]:
    """All fields of the parsed dataclasses by name (the stages' dataclasses share no field)."""
    return {k: v for args in parse(path) for k, v in vars(args).items()}


def raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def local_paths(path: Path) -> list[str]:
    """Strings of the recipe (nested ones too) that name local files or directories."""
    return [s for s in strings(raw(path)) if "://" not in s and LOCAL_PATH.search(s)]


def produced() -> dict[str, list[Path]]:
    """What each stage recipe writes (its output_dir, and stage 1's annotation file) -> the recipes."""
    outputs: dict[str, list[Path]] = {}
    for path in STAGE_RECIPES:
        output_dir = parsed(path)["output_dir"]
        made = [output_dir, f"{output_dir}/{ANNOTATIONS}"] if stage_of(path) == "cot" else [output_dir]
        for item in made:
            outputs.setdefault(item, []).append(path)
    return outputs


def launch_configs(path: Path) -> list[Path]:
    """The accelerate configs a recipe's comments launch it with (`--config_file ...`)."""
    return [ROOT / m for m in re.findall(r"--config_file\s+(\S+)", path.read_text(encoding="utf-8"))]


def deepspeed_file(accelerate_config: Path) -> Path | None:
    name = (raw(accelerate_config).get("deepspeed_config") or {}).get("deepspeed_config_file")
    return ROOT / name if name else None


# --- stage recipes ----------------------------------------------------------------------------------


def test_every_stage_has_recipes() -> None:
    assert {stage_of(p) for p in STAGE_RECIPES} >= {"cot", "sft", "rl"}


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_recipe_parses_with_its_stage_parser(path: Path) -> None:
    parse(path)


@pytest.mark.parametrize("stage", ["cot", "sft", "rl"])
def test_a_misspelled_key_is_refused(stage: str, tmp_path: Path) -> None:
    recipe = tmp_path / f"{stage}.yaml"
    text = (RECIPES / "tiny-cpu" / f"{stage}.yaml").read_text(encoding="utf-8")
    recipe.write_text(text.replace("output_dir:", "output_dri:"), encoding="utf-8")
    with pytest.raises(ValueError, match="output_dri"):
        parse(recipe)


@pytest.mark.parametrize(
    ("stage", "old", "new"),
    [("sft", "rationales", "reasoning"), ("cot", "teacher_model", "model_name_or_path")],
)
def test_a_renamed_key_is_refused_with_its_new_name_in_a_recipe_and_on_the_command_line(
    tmp_path: Path, stage: str, old: str, new: str
) -> None:
    recipe = tmp_path / f"{stage}.yaml"
    recipe.write_text((RECIPES / "tiny-cpu" / f"{stage}.yaml").read_text(encoding="utf-8") + f"{old}: x\n")
    with pytest.raises(ValueError, match=f"{old} is now called {new}"):
        parse(recipe)
    with pytest.raises(ValueError, match=f"{old} is now called {new}"):
        load_stage(stage).make_parser().parse_args_and_config(args=["--output_dir", "o", f"--{old}", "x"])


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_named_formats_readers_and_backends_exist(path: Path) -> None:
    args = parsed(path)
    if "output_format" in args:
        assert args["output_format"] in FORMATS
    if "reader" in args:
        assert args["reader"] == "auto" or args["reader"] in READERS
    if "backend" in args:
        assert args["backend"] in {GOLD_TEMPLATE, *BACKENDS}
        options = args.get("backend_options") or {}
        if options:
            signature = inspect.signature(BACKENDS[args["backend"]].__init__)
            takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            unknown = set(options) - set(signature.parameters)
            assert takes_any or not unknown, f"backend_options the {args['backend']} backend lacks: {unknown}"
    if "match_mode" in args:
        assert args["match_mode"] in {"text", "exact"}


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_model_options_are_known(path: Path) -> None:
    args = parsed(path)
    if "attn_implementation" in args:
        assert args["attn_implementation"] in ATTENTION
    if "dtype" in args:
        assert args["dtype"] in DTYPES
        assert not (args.get("bf16") and args["dtype"] in {"float16"}), "bf16 training of a float16 model"


RL_RECIPES = [p for p in STAGE_RECIPES if stage_of(p) == "rl"]


@pytest.mark.parametrize("path", RL_RECIPES, ids=ids(RL_RECIPES))
def test_rewards_exist_and_are_weighted_one_to_one(path: Path) -> None:
    args = parsed(path)
    assert args["reward_funcs"], "no reward"
    assert set(args["reward_funcs"]) <= set(REWARDS), f"unknown rewards; known: {sorted(REWARDS)}"
    assert len(set(args["reward_funcs"])) == len(args["reward_funcs"]), "a reward named twice"
    if args["reward_weights"] is not None:
        assert len(args["reward_weights"]) == len(args["reward_funcs"])


@pytest.mark.parametrize("path", RL_RECIPES, ids=ids(RL_RECIPES))
def test_grpo_settings_are_valid_on_any_number_of_gpus(path: Path) -> None:
    """Parsing built GRPOConfig for one process, which then needs whole groups of `num_generations` in
    one process's generation batch: those hold for any number of processes. A `generation_batch_size`
    would instead have to divide by the global batch, which depends on the GPU count."""
    args = parsed(path)
    assert args["loss_type"] in GRPO_LOSS_TYPES
    assert "generation_batch_size" not in raw(path), "set steps_per_generation instead"
    if args["use_vllm"]:
        assert args["vllm_mode"] in VLLM_MODES
        assert 0 < args["vllm_gpu_memory_utilization"] < 1
        assert not args["vllm_enable_sleep_mode"] or args["vllm_mode"] == "colocate"


@pytest.mark.parametrize("path", RL_RECIPES, ids=ids(RL_RECIPES))
def test_grpo_checkpoints_fall_between_generation_cycles(path: Path) -> None:
    """A checkpoint inside a cycle (`num_iterations` > 1) would resume on other generations."""
    check_generation_cycle(parse(path)[2])


def test_a_checkpoint_inside_a_generation_cycle_is_refused() -> None:
    path = RECIPES / "qwen3-8b" / "rl.yaml"
    training_args = parse(path)[2]
    assert (training_args.gradient_accumulation_steps, training_args.num_iterations) == (16, 4)
    training_args.save_steps = 50
    with pytest.raises(ValueError, match=r"save_steps 50 .* use a multiple of 4, e.g. save_steps 48"):
        check_generation_cycle(training_args)
    training_args.save_steps, training_args.steps_per_generation = 60, 32  # 128 micro-batches a cycle
    with pytest.raises(ValueError, match=r"use a multiple of 8, e.g. save_steps 64"):
        check_generation_cycle(training_args)
    training_args.save_steps = 56
    check_generation_cycle(training_args)
    training_args.max_steps = 500  # the Trainer saves at the last step too
    with pytest.raises(ValueError, match=r"max_steps 500 .* use a multiple of 8, e.g. max_steps 496"):
        check_generation_cycle(training_args)
    training_args.save_steps, training_args.max_steps = 0.1, 504  # a ratio: step 51, as the Trainer reads it
    with pytest.raises(ValueError, match=r"save_steps 51 .* e.g. save_steps 48"):
        check_generation_cycle(training_args)
    training_args.max_steps = 480
    check_generation_cycle(training_args)  # step 48
    training_args.max_steps = -1
    with pytest.raises(ValueError, match=r"save_steps 0.1 is a ratio of max_steps, which is unset"):
        check_generation_cycle(training_args)
    training_args.save_strategy, training_args.eval_strategy, training_args.eval_steps = "best", "steps", 50
    with pytest.raises(ValueError, match=r"eval_steps 50 .* e.g. eval_steps 48"):
        check_generation_cycle(training_args)  # best saves at evaluations
    from transformers.trainer_utils import SaveStrategy

    training_args.save_strategy = SaveStrategy.EPOCH  # as parsed
    with pytest.raises(ValueError, match=r"save_strategy epoch can save inside a generation cycle"):
        check_generation_cycle(training_args)
    training_args.save_strategy = "no"
    check_generation_cycle(training_args)
    training_args.save_strategy, training_args.save_steps = "steps", 7
    training_args.num_iterations, training_args.steps_per_generation = 1, 16
    check_generation_cycle(training_args)  # one generation per optimizer step: any step will do


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_local_files_exist(path: Path) -> None:
    """Inputs outside outputs/ exist in a fresh clone: nothing outside the repository (`../shared` is on
    no user's machine; name such data by hub id, `hf:OWNER/NAME`), every hub source well-formed."""
    outside = [p for p in local_paths(path) if p.startswith(("../", "/", "~"))]
    assert not outside, f"{path}: paths a fresh clone does not have (use hf: hub ids): {outside}"
    missing = [p for p in local_paths(path) if not p.startswith("outputs/") and not (ROOT / p).exists()]
    assert not missing, f"{path}: missing: {missing}"
    for source in filter(is_source, strings(raw(path))):
        assert not parse_source(source).local, f"{path}: {source} names a local folder: use a hub id"


def test_a_recipe_naming_a_path_outside_the_repository_fails(tmp_path: Path) -> None:
    recipe = tmp_path / "rl.yaml"
    recipe.write_text("train_files: [../shared/data/conll2003/train.txt]\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="paths a fresh clone does not have"):
        test_local_files_exist(recipe)


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_inputs_under_outputs_are_written_by_earlier_stages(path: Path) -> None:
    stage = stage_of(path)
    outputs = produced()
    for item in local_paths(path):
        if not item.startswith("outputs/") or item == parsed(path)["output_dir"] or item in MADE_BY_COMMANDS:
            continue
        writers = outputs.get(item.rstrip("/"), [])
        earlier = [w for w in writers if STAGES.index(stage_of(w)) < STAGES.index(stage)]
        assert earlier, f"{item} is written by no recipe of a stage before {stage} (writers: {ids(writers)})"


PIPELINES = sorted({p.parent for p in STAGE_RECIPES if (p.parent / "sft.yaml").exists()})


@pytest.mark.parametrize("pipeline", PIPELINES, ids=ids(PIPELINES))
def test_pipeline_stages_chain(pipeline: Path) -> None:
    """Within a pipeline directory: SFT trains on stage 1's annotations (this directory's cot recipe
    when it has one), GRPO starts from the SFT model, and all trainer outputs stay in outputs/<dir>/."""
    sft = parsed(pipeline / "sft.yaml")
    if (pipeline / "cot.yaml").exists():
        assert sft["train_files"] == [f"{parsed(pipeline / 'cot.yaml')['output_dir']}/{ANNOTATIONS}"]
    else:  # stage 1 annotations, or a source with rationales (the paper's NER-CoT)
        assert all(f.endswith(f"/{ANNOTATIONS}") or is_source(f) for f in sft["train_files"]), (
            "SFT needs stage 1 annotations"
        )
    name = str(pipeline.relative_to(RECIPES))
    if (pipeline / "rl.yaml").exists():
        assert parsed(pipeline / "rl.yaml")["model_name_or_path"] == sft["output_dir"]
    for stage in ("sft", "rl"):
        recipe = pipeline / f"{stage}.yaml"
        if recipe.exists():
            args = parsed(recipe)
            assert args["output_dir"].startswith(f"outputs/{name}/"), "output of another pipeline"
            assert args["run_name"] is None or args["run_name"].startswith(name.replace("/", "-"))


def test_no_two_pipelines_write_the_same_output() -> None:
    """Recipes sharing an output directory must be variants of one stage in one directory (a copied
    recipe whose output_dir was not changed would overwrite another model's checkpoints)."""
    for output, writers in produced().items():
        assert len({(w.parent, stage_of(w)) for w in writers}) == 1, f"{output} written by {ids(writers)}"


def training_data(output: str) -> list[str]:
    """Every data source that went into what `output` names (a model or annotations), following the
    recipes that write it back to stage 1: its training files, then those of its inputs."""
    found: list[str] = []
    for writer in produced().get(output.rstrip("/"), []):
        args = parsed(writer)
        inputs = [*(args.get("train_files") or []), *(args.get("datasets") or [])]
        found += inputs
        for item in [*inputs, args.get("model_name_or_path") or ""]:
            if item.startswith("outputs/") and item != args["output_dir"]:
                found += training_data(item)
    return list(dict.fromkeys(found))


def contamination(path: Path) -> list[str]:
    """The overlaps of an evaluation recipe's sets with the training data of the model it evaluates."""
    args = parsed(path)
    sets = [entry if isinstance(entry, str) else entry["path"] for entry in args["datasets"]]
    return overlaps(training_data(args["model_name_or_path"] or ""), sets)


EVAL_RECIPES = [p for p in STAGE_RECIPES if stage_of(p) == "eval"]


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=ids(EVAL_RECIPES))
def test_evaluation_sets_are_not_trained_on_unless_declared_in_domain(path: Path) -> None:
    """Same file, same hub dataset or same corpus family (every CrossNER domain) as any training source
    of the pipeline that made the model (stage 1 inputs, SFT and GRPO files): an error, unless the
    recipe says `allow_overlap: true` (results then list the sets as in-domain)."""
    found = contamination(path)
    assert parsed(path)["allow_overlap"] or not found, f"{path}: train/eval overlap: {found}"


def test_a_contaminated_pair_fails_the_lint(tmp_path: Path) -> None:
    """The zero-shot CrossNER recipe against a model whose GRPO data held CrossNER music."""
    recipe = tmp_path / "eval.yaml"
    text = (RECIPES / "eval" / "crossner-zero-shot.yaml").read_text(encoding="utf-8")
    recipe.write_text(text.replace("outputs/qwen3-8b/rl", "outputs/contaminated/rl"), encoding="utf-8")
    writer = tmp_path / "contaminated" / "rl.yaml"
    writer.parent.mkdir()
    writer.write_text(
        (RECIPES / "qwen3-8b" / "rl.yaml")
        .read_text(encoding="utf-8")
        .replace("outputs/qwen3-8b/rl", "outputs/contaminated/rl")
        .replace("train_files:\n", "train_files:\n  - hf:DFKI-SLT/cross_ner:music@train\n"),
        encoding="utf-8",
    )
    with mock.patch(f"{__name__}.STAGE_RECIPES", [*STAGE_RECIPES, writer]):
        with pytest.raises(AssertionError, match=r"train/eval overlap: .*cross_ner:ai@validation overlaps"):
            test_evaluation_sets_are_not_trained_on_unless_declared_in_domain(recipe)
        allowed = tmp_path / "eval-allowed.yaml"
        allowed.write_text(recipe.read_text(encoding="utf-8") + "allow_overlap: true\n", encoding="utf-8")
        test_evaluation_sets_are_not_trained_on_unless_declared_in_domain(allowed)
        assert len(contamination(allowed)) == 5  # all five domains: one corpus family


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_files_named_in_comments_exist(path: Path) -> None:
    """The launch commands in a recipe's header name configs, stages and scripts that exist."""
    text = path.read_text(encoding="utf-8")
    missing = [m for m in MENTIONED_FILE.findall(text) if not (ROOT / m).exists()]
    assert not missing
    for config in launch_configs(path):
        assert config.parent == ACCELERATE and config.exists(), config


@pytest.mark.parametrize("stage", ["cot", "sft", "rl", "eval"])
def test_every_key_of_our_configs_is_documented(stage: str) -> None:
    """Every field of our dataclasses a stage parses has a line in recipes/README.md, set by a recipe
    or not (TRL's and transformers' keys are documented by them)."""
    import dataclasses

    documented = set(re.findall(r"`(\w+)`", (RECIPES / "README.md").read_text(encoding="utf-8")))
    ours = [
        c for c in load_stage(stage).make_parser().dataclass_types if c.__module__ == "reasoningner.configs"
    ]
    assert ours
    assert not {f.name for c in ours for f in dataclasses.fields(c) if f.init} - documented


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=ids(STAGE_RECIPES))
def test_every_key_is_documented(path: Path) -> None:
    """recipes/README.md documents every key a recipe sets (its key tables name each in backticks)."""
    documented = set(re.findall(r"`(\w+)`", (RECIPES / "README.md").read_text(encoding="utf-8")))
    assert not set(raw(path)) - documented


TRAINER_RECIPES = [p for p in STAGE_RECIPES if stage_of(p) in {"sft", "rl"} and launch_configs(p)]


def deepspeed_mismatches(ds_file: Path, training_args: Any) -> list[str]:
    """What transformers does when the Trainer meets a DeepSpeed config: fill every "auto" from the
    training arguments and list each value that contradicts them (`trainer_config_finalize` refuses them
    once the model is known; the listing is all it checks)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    config = HfTrainerDeepSpeedConfig(str(ds_file))
    try:
        config.trainer_config_process(training_args)
    finally:
        unset_hf_deepspeed_config()
    return config.mismatches


@pytest.mark.parametrize("path", TRAINER_RECIPES, ids=ids(TRAINER_RECIPES))
def test_training_arguments_agree_with_the_deepspeed_config(path: Path) -> None:
    _, _, training_args, _ = parse(path)  # script, prompt, training, model arguments
    files = [f for f in map(deepspeed_file, launch_configs(path)) if f is not None]
    assert files and all(deepspeed_mismatches(f, training_args) == [] for f in files)


def test_a_deepspeed_value_that_contradicts_the_recipe_is_a_mismatch(tmp_path: Path) -> None:
    """The check above can fail: a micro-batch the recipe does not train with is listed."""
    _, _, training_args, _ = parse(TRAINER_RECIPES[0])
    config = json.loads((ROOT / "recipes" / "accelerate" / "ds_zero3.json").read_text(encoding="utf-8"))
    config["train_micro_batch_size_per_gpu"] = training_args.per_device_train_batch_size + 1
    (tmp_path / "ds.json").write_text(json.dumps(config), encoding="utf-8")
    [mismatch] = deepspeed_mismatches(tmp_path / "ds.json", training_args)
    assert "train_micro_batch_size_per_gpu" in mismatch


# --- accelerate and DeepSpeed configs ---------------------------------------------------------------


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=ids(DEEPSPEED_CONFIGS))
def test_deepspeed_config_defers_to_the_trainer(path: Path) -> None:
    """Batch sizes, accumulation, clipping and precision come from the recipe ("auto"); no optimizer or
    scheduler section, so the Trainer's torch optimizer and schedule are used (DeepSpeed's fused Adam
    would compile CUDA ops)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config.get(key) == "auto", key
    assert config.get("gradient_clipping") == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config
    stage = config["zero_optimization"]["stage"]
    assert path.stem == f"ds_zero{stage}"
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=ids(ACCELERATE_CONFIGS))
def test_accelerate_config_loads_as_accelerate_launch_reads_it(path: Path) -> None:
    """`accelerate launch --config_file path` up to the DeepSpeed plugin the training processes build
    from its environment: the DeepSpeed file exists, and no accelerate key contradicts it (accelerate
    refuses zero_stage, mixed_precision, zero3_save_16bit_model... next to a config file)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "stages/sft.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    ds_file = deepspeed_file(path)
    if not args.use_deepspeed:
        assert ds_file is None
        return
    assert ds_file is not None and ds_file.exists()
    fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == json.loads(ds_file.read_text(encoding="utf-8"))["zero_optimization"]["stage"]
    assert plugin.zero3_init_flag == (plugin.zero_stage == 3)


# --- SLURM scripts, with stand-ins for srun, scontrol, the launchers and the server -------------------

FAKES = {
    "srun": "count=$SLURM_NNODES\n"
    "while [[ $1 == --* ]]; do [[ $1 == --nodes=* ]] && count=${1#--nodes=}; shift; done\n"
    'for ((i = 0; i < count; i++)); do SLURM_NODEID=$i "$@"; done',
    "scontrol": "printf 'node-a\\nnode-b\\n'",
    # The health check answers once the background server has started (recorded its command).
    "curl": """for _ in $(seq 200); do grep -q '^vllm' "$CALLS" 2>/dev/null && exit 0; sleep 0.05; done""",
    "vllm": 'echo "vllm $*" >> "$CALLS"; exec sleep 60',  # the server, in the background
    **{name: f'echo "{name} $*" >> "$CALLS"' for name in ("accelerate", "python", "trl", "reasoningner")},
}


def run_slurm(script: str, args: list[str], env: dict[str, str], tmp_path: Path, **fakes: str) -> list[str]:
    """Run recipes/slurm/<script> with the stand-ins (`FAKES`, or as `fakes` say) first on PATH; the
    commands they were given. A failure is a CalledProcessError holding the script's stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (FAKES | fakes).items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, **env, "CALLS": str(calls), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", f"recipes/slurm/{script}", *args],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return calls.read_text(encoding="utf-8").splitlines()


def test_train_slurm_starts_one_launcher_per_node_with_its_rank(tmp_path: Path) -> None:
    calls = run_slurm(
        "train.slurm",
        ["rl", "recipes/qwen3-8b/rl.yaml", "recipes/accelerate/zero3.yaml", "--run_name", "a b"],
        {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]"},
        tmp_path,
    )
    common = (
        "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_machines 2 --num_processes 16 "
        "--machine_rank {} --main_process_ip node-a --main_process_port 29500 "
        "stages/rl.py --config recipes/qwen3-8b/rl.yaml --run_name a b"
    )
    doctor = "reasoningner doctor recipes/qwen3-8b/rl.yaml --stage rl --num-gpus 8 --args --run_name a\\ b "
    assert calls == [doctor, common.format(0), common.format(1)]


def test_train_slurm_gives_a_signalled_stage_slurm_s_grace_to_save(tmp_path: Path) -> None:
    """torch's launcher kills its workers 30 s after it passes them SIGTERM, whatever a partition's
    GraceTime: a preempted stage saving its checkpoint would be cut short."""
    waits = []
    for given in ({}, {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "120"}):
        calls = run_slurm(
            "train.slurm",
            ["sft", "recipes/qwen3-8b/sft.yaml", "recipes/accelerate/zero3.yaml"],
            {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", **given},
            tmp_path / str(len(waits)),
            accelerate='echo "accelerate waits $TORCH_ELASTIC_SHUTDOWN_TIMEOUT" >> "$CALLS"',
        )
        waits.append([call for call in calls if call.startswith("accelerate")])
    assert waits == [["accelerate waits 3600"] * 2, ["accelerate waits 120"] * 2]  # each node's launcher


SCONTROL_REQUEUE = (
    'if [[ $1 == requeue ]]; then echo "scontrol $*" >> "$CALLS"; else printf \'node-a\\nnode-b\\n\'; fi'
)


# A stage in a container without SLURM's client: its own requeue (reasoningner.jobs) finds no scontrol.
CONTAINED_STOP = (
    f'echo "stage: $(PATH=/usr/bin:/bin {sys.executable} -c "from reasoningner.jobs import requeue; '
    'print(requeue())")" >> "$CALLS"; exit {}'
)


@pytest.mark.parametrize(("script", "stopped"), [("train.slurm", 1), ("cot.slurm", 75)])
def test_a_stage_that_could_not_requeue_its_job_has_the_host_requeue_it(
    tmp_path: Path, script: str, stopped: int
) -> None:
    """A stage stopped before the time limit asks `scontrol requeue` itself; in a container without SLURM's
    client that failed and the job ended, never requeued, its run left halfway. It now leaves a mark the
    job's script reads on the host. `accelerate launch` ends 1 whatever its workers' status (75)."""
    args = (
        ["sft", "recipes/qwen3-8b/sft.yaml", "recipes/accelerate/zero3.yaml"]
        if script == "train.slurm"
        else []
    )
    stage = "accelerate" if script == "train.slurm" else "python"
    env = {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node-a", "SLURM_JOB_ID": "4242", "STATUS": "3",
           "SLURM_SUBMIT_DIR": str(tmp_path)}  # fmt: skip
    own_stop = CONTAINED_STOP.replace("PATH=/usr/bin:/bin ", "")  # scontrol there: the stage's own requeue
    for case, body, status, host_requeues in (
        ("contained", CONTAINED_STOP.format(stopped), stopped, 1),
        ("requeued itself", own_stop.format(stopped), stopped, 0),  # not asked again from the host
        ("failed", "exit 1", 1, 0),
        ("done", "exit 0", 0, 0),  # not the STATUS the submitting shell exported
    ):
        folder = tmp_path / case
        if status:
            with pytest.raises(subprocess.CalledProcessError) as ended:
                run_slurm(script, args, env, folder, scontrol=SCONTROL_REQUEUE, **{stage: body})
            assert ended.value.returncode == status
        else:
            run_slurm(script, args, env, folder, scontrol=SCONTROL_REQUEUE, **{stage: body})
        calls = (folder / "calls").read_text().splitlines() if (folder / "calls").exists() else []
        asked = [call for call in calls if call == "scontrol requeue 4242"]
        by_stages = [call for call in calls if call.startswith("stage: job 4242 requeued")]
        assert len(asked) - len(by_stages) == host_requeues, case
        if host_requeues:
            assert any("the job's script requeues it once this stage has ended" in call for call in calls)
        assert not list(tmp_path.glob(".reasoningner-requeue-*"))  # read once, then gone


def test_train_slurm_waits_for_a_signalled_stage_and_takes_its_gpus_from_the_allocation(
    tmp_path: Path,
) -> None:
    """A preemption signals the job's shell too: without a trap bash ended at once, and the job with it,
    under a stage still writing its checkpoint. Processes per node follow --gres (SLURM_GPUS_ON_NODE)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    saving = 'sleep 1; echo "accelerate $*" >> "$CALLS"'
    for name, body in (FAKES | {"accelerate": saving}).items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node-a", "SLURM_GPUS_ON_NODE": "4",
           "CALLS": str(calls), "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
    script = [
        "bash",
        "recipes/slurm/train.slurm",
        "sft",
        "recipes/qwen3-8b/sft.yaml",
        "recipes/accelerate/zero3.yaml",
    ]
    job = subprocess.Popen(script, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(100):  # the doctor has run: the stage is on
        if calls.exists() and "reasoningner doctor" in calls.read_text():
            break
        time.sleep(0.05)
    time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0 and "SIGTERM; the stage saves and ends" in stderr
    launches = [call for call in calls.read_text().splitlines() if call.startswith("accelerate")]
    assert len(launches) == 2  # the stand-in scontrol's two nodes, each saving to the end
    assert all("--num_processes 8 " in launch for launch in launches) and "--num-gpus 4" in calls.read_text()


def test_train_slurm_hands_the_doctor_the_stage_s_arguments_as_it_reads_them(tmp_path: Path) -> None:
    """Without any (the README's first example), the doctor was given `''`, read as one empty override
    it refused: the job ended before training."""
    reads = (  # the doctor's own reading of its recipe and --args (the last argument)
        f'{sys.executable} -c "import shlex, sys; from reasoningner.doctor import load_recipe; '
        'print(load_recipe(sys.argv[1], shlex.split(sys.argv[2]))[\'run_name\'])" "$2" "${@: -1}" >> "$CALLS"'
    )
    for extra, run_name in (([], "qwen3-8b-sft"), (["--run_name", "a b"], "a b")):
        calls = run_slurm(
            "train.slurm",
            ["sft", "recipes/qwen3-8b/sft.yaml", "recipes/accelerate/zero3.yaml", *extra],
            {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node-a"},
            tmp_path / str(len(extra)),
            reasoningner=reads,
        )
        assert calls[0] == run_name


CURL_TRL = """for _ in $(seq 200); do grep -q '^trl' "$CALLS" 2>/dev/null && exit 0; sleep 0.05; done"""


def test_train_slurm_serves_grpo_on_the_last_node_of_its_allocation(tmp_path: Path) -> None:
    """A server job of its own would be requeued apart from the trainer, which then asks a stale address.
    The trainer names its address on the route to the server for the weight group (vLLM's default, the
    default route's, is 0.0.0.0 on a node without one), unless VLLM_HOST_IP is set."""
    route = "10.0.0.3 via 10.0.0.1 dev ib0 src 10.0.0.9 uid 0 \\    cache "

    def serve(tmp: Path, **env: str) -> list[str]:
        return run_slurm(
            "train.slurm",
            ["rl", "recipes/qwen3-8b/rl.yaml", "recipes/accelerate/zero3.yaml"],
            {
                "SLURM_NNODES": "3",
                "SLURM_JOB_NODELIST": "node-[a-c]",
                "VLLM_MODEL": "outputs/qwen3-8b/sft",
                **env,
            },
            tmp,
            scontrol="printf 'node-a\\nnode-b\\nnode-c\\n'",
            curl=CURL_TRL,
            getent='[[ "$*" == "ahostsv4 node-c" ]] && printf "10.0.0.3 STREAM node-c\\n10.0.0.3 DGRAM\\n"',
            ip=f'[[ "$*" == "-4 -o route get 10.0.0.3" ]] && echo "{route}"',
            accelerate='echo "accelerate $* (VLLM_HOST_IP=$VLLM_HOST_IP)" >> "$CALLS"',
        )

    calls = serve(tmp_path)
    assert calls[1].startswith("trl vllm-serve --model outputs/qwen3-8b/sft --host 0.0.0.0 --port 8000 ")
    common = (
        "accelerate launch --config_file recipes/accelerate/zero3.yaml --num_machines 2 --num_processes 16 "
        "--machine_rank {} --main_process_ip node-a --main_process_port 29500 "
        "stages/rl.py --config recipes/qwen3-8b/rl.yaml "
        "--vllm_mode server --vllm_enable_sleep_mode false --vllm_server_base_url http://node-c:8000 "
        "(VLLM_HOST_IP={})"
    )
    assert calls[2:] == [common.format(0, "10.0.0.9"), common.format(1, "10.0.0.9")]
    assert serve(tmp_path / "set", VLLM_HOST_IP="10.9.9.9")[2:] == [
        common.format(0, "10.9.9.9"),
        common.format(1, "10.9.9.9"),
    ]
    with pytest.raises(subprocess.CalledProcessError) as one_node:  # one node cannot both serve and train
        run_slurm("train.slurm", ["rl", "recipes/qwen3-8b/rl.yaml", "recipes/accelerate/zero3.yaml"],
                  {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node-a", "VLLM_MODEL": "m"},
                  tmp_path / "one", scontrol="echo node-a")  # fmt: skip
    assert "VLLM_MODEL serves on a node of its own: ask for at least 2 nodes" in one_node.value.stderr


def test_cot_slurm_annotates_its_array_shard_against_the_local_server(tmp_path: Path) -> None:
    # A preempted task resubmitted alone (an array of one) keeps the run's split.
    array = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "1", "SHARDS": "4"}
    calls = run_slurm("cot.slurm", [], array, tmp_path)
    [server] = [call for call in calls if call.startswith("vllm ")]
    assert server.startswith("vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507 --host 0.0.0.0 --port 8000 "
                             "--generation-config vllm")  # fmt: skip
    assert [call for call in calls if call.startswith("python ")] == [
        "python stages/cot.py --config recipes/teacher/cot.yaml "
        "--model_name_or_path Qwen/Qwen3-235B-A22B-Instruct-2507 --shard 2/4"
    ]
    for wrong, why in (
        ({"SLURM_ARRAY_TASK_ID": "2"}, "set SHARDS, the shard count of the whole run"),
        ({"SLURM_ARRAY_TASK_ID": "4", "SHARDS": "4"}, "array task 4 is not one of SHARDS=4 shards"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            run_slurm("cot.slurm", [], wrong, tmp_path / wrong["SLURM_ARRAY_TASK_ID"])
        assert why in refused.value.stderr
    assert (
        parsed(RECIPES / "teacher" / "cot.yaml")["backend_options"]["base_url"] == "http://localhost:8000/v1"
    )


def test_cot_slurm_gives_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    env = {"SERVER_WAIT": "0"}
    with pytest.raises(subprocess.CalledProcessError) as gave_up:
        run_slurm("cot.slurm", [], env, tmp_path, curl="exit 7")  # refused: nothing listens
    assert "the vLLM server did not answer in 0 s (SERVER_WAIT)" in gave_up.value.stderr or (
        "the vLLM server exited before answering" in gave_up.value.stderr
    )
    calls = tmp_path / "calls"  # the server may not have started at all
    assert not calls.exists() or "python " not in calls.read_text()


def test_vllm_serve_slurm_serves_grpo_with_trl(tmp_path: Path) -> None:
    calls = run_slurm("vllm_serve.slurm", ["grpo", "outputs/qwen3-8b/sft"], {}, tmp_path)
    assert calls == [
        "trl vllm-serve --model outputs/qwen3-8b/sft --host 0.0.0.0 --port 8000 --tensor_parallel_size 8 "
        "--data_parallel_size 1 --gpu_memory_utilization 0.9 --max_model_len 8192"  # TRL: no DP for dense
    ]


def test_the_docker_run_command_keeps_every_recipe_s_outputs_on_the_host() -> None:
    """`docker run --rm` drops the container's disk: every output_dir must sit under a mounted folder."""
    readme = (ROOT / "docker" / "README.md").read_text(encoding="utf-8")
    command = readme.split("docker run", 1)[1].split("\n    #", 1)[0]
    mounted = re.findall(r"-v \S+:/workspace/(\S+)", command)
    assert mounted
    for path in STAGE_RECIPES:
        output = yaml.safe_load(path.read_text(encoding="utf-8")).get("output_dir")
        if output:
            assert any(Path(output).is_relative_to(folder) for folder in mounted), (path, output, mounted)


def test_make_smoke_runs_on_one_gpu_of_the_node(tmp_path: Path) -> None:
    """TRL refuses several GPUs visible to one process: smoke keeps the first one visible."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python", "reasoningner"):
        (bin_dir / tool).write_text('#!/bin/sh\necho "$0 sees GPUs $CUDA_VISIBLE_DEVICES"\n')
        (bin_dir / tool).chmod(0o755)
    for visible, expected in (("3,4", "3"), (None, "0")):
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env |= {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
        result = subprocess.run(
            ["make", "-o", "install", "smoke", f"BIN={bin_dir}", f"SMOKE={tmp_path / 'smoke'}"],
            cwd=ROOT, capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"reasoningner sees GPUs {expected}\n" in result.stdout


def test_make_smoke_turns_liger_off_where_it_is_not_installed() -> None:
    """The paper's recipes ask for Liger, which a plain `make install` leaves out (a GPU node's extra)."""
    import importlib.util

    dry = subprocess.run(
        ["make", "-n", "-o", "install", "smoke"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")  # a command continued over lines is one line
    stage_lines = [line for line in dry.splitlines() if "stages/sft.py" in line or "stages/rl.py" in line]
    assert len(stage_lines) == 2
    missing = importlib.util.find_spec("liger_kernel") is None
    assert all(("--use_liger_kernel false" in line) == missing for line in stage_lines)

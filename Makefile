# One command per job; each target installs what it needs into ./.venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# pip's torch 2.13.0: on Linux, PyPI's wheel is the CUDA 13.0 build (it runs on CPU too, with ~3 GB of nvidia-*
# wheels); the CPU build alone: TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"; a
# cluster's: TORCH="torch==2.13.0 --index-url <your CUDA index>".
# The one place torch's version is pinned: requirements/cpu.lock is resolved against it but leaves torch out.
TORCH ?= torch==2.13.0
EXTRAS ?= test,deepspeed
# Every other package `make install` installs, pinned (for the default EXTRAS; `make lock` refreshes it).
LOCK := requirements/cpu.lock
# uv installs the lock and resolves it (requirements/lock.sh); docker/Dockerfile's UV_VERSION matches.
UV_VERSION := 0.13.9
comma := ,
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install test test-slow lint format clean lock docker-lock demo demo-seeds bench
.DEFAULT_GOAL := test

# Pipeline stages: make <stage> RECIPE=recipes/<dir>/<stage>.yaml [NUM_GPUS=n | NUM_PROCS=n]
#   [ACCELERATE_CONFIG=recipes/accelerate/zero3.yaml] [ARGS="--max_steps 5"]. Multi-node: recipes/slurm/.
RECIPE ?=
NUM_GPUS ?=
NUM_PROCS ?=
ACCELERATE_CONFIG ?= recipes/accelerate/zero2.yaml
ARGS ?=
# Trainer stages: one process here; NUM_GPUS=n: accelerate over n local GPUs; NUM_PROCS=n: n CPU processes
# under torchrun (DeepSpeed on CPU via ARGS="--deepspeed recipes/accelerate/ds_zero3.json"; accelerate's
# DeepSpeed launch fails there).
TRAIN_LAUNCH = $(if $(NUM_GPUS),$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_GPUS),$(if $(NUM_PROCS),DS_ACCELERATOR=cpu $(BIN)/torchrun --standalone --nproc_per_node $(NUM_PROCS),$(BIN)/python))
need-recipe = $(if $(RECIPE),,$(error RECIPE=recipes/<dir>/$@.yaml is required))
# Stage 1 and evaluation are single processes: their backends (vLLM tensor parallel, a server) use the GPUs.
one-process = $(if $(NUM_GPUS)$(NUM_PROCS),$(error make $@ runs one process; the backend options use the GPUs))
# Every stage starts with `reasoningner doctor` on the same recipe, stage, GPU count and ARGS: seconds, one line
# per check (the recipe read by the stage's parser, GPUs, torch build, vLLM/flash-attn/Liger, W&B, data, model, output dir, disk, chat template, a dead
# torch extension build's lock).
# DOCTOR= skips it. ARGS reach it as one word, its own quotes escaped (ARGS="--backend_options '{...}'").
DOCTOR ?= $(BIN)/reasoningner doctor
doctor = $(if $(DOCTOR),$(DOCTOR) $(RECIPE) --stage $@ $(if $(NUM_GPUS),--num-gpus $(NUM_GPUS) )--args='$(subst ','\'',$(ARGS))' && )

.PHONY: cot sft rl eval smoke

# Stage 1: teacher CoT annotations.
cot: install
	$(need-recipe)$(one-process)$(doctor)$(BIN)/python stages/cot.py --config $(RECIPE) $(ARGS)

# Stage 2: SFT on the annotations.
sft: install
	$(need-recipe)$(doctor)$(TRAIN_LAUNCH) stages/sft.py --config $(RECIPE) $(ARGS)

# Stage 3: GRPO from the SFT model.
rl: install
	$(need-recipe)$(doctor)$(TRAIN_LAUNCH) stages/rl.py --config $(RECIPE) $(ARGS)

# Evaluation of any stage's model.
eval: install
	$(need-recipe)$(one-process)$(doctor)$(BIN)/python stages/eval.py --config $(RECIPE) $(ARGS)

# Score predictions made elsewhere (LLaMA-Factory's generated_predictions.jsonl, our JSONL, raw outputs):
#   make score GOLD=data/genia/dev-slice.json PREDICTIONS=generated_predictions.jsonl [ARGS="--compat llms4ner"]
.PHONY: score
score: install
	$(if $(GOLD),,$(error GOLD=<gold file> is required))$(if $(PREDICTIONS),,$(error PREDICTIONS=<predictions file> is required))$(BIN)/reasoningner score $(GOLD) $(PREDICTIONS) $(ARGS)

# The extras $(LOCK) pins; vllm and liger are a GPU node's (README, "Install"; docker/ has them).
LOCKED_EXTRAS := test deepspeed
# (extra, module) of a GPU node's extras: `make install` installs again those a venv has.
GPU_EXTRAS := (('vllm', 'vllm'), ('liger', 'liger_kernel'))
UNLOCKED = $(filter-out $(LOCKED_EXTRAS),$(subst $(comma), ,$(EXTRAS)))

ifeq ($(EXTRAS),image)
# docker/Dockerfile's /opt/venv, installed with the image (its stamp .installed-image): a mounted checkout
# newer than the image installs nothing into it; rebuild the image to change it.
install:
else
install: $(STAMP)
endif

$(STAMP): pyproject.toml $(LOCK)
	$(if $(UNLOCKED),$(error EXTRAS=$(EXTRAS): $(LOCK) pins the extras $(LOCKED_EXTRAS) only, not $(UNLOCKED): on a GPU node install them with pip as the README says, or use docker/))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Before anything downloads: TRL 1.16 needs Python 3.11 (tested: 3.11 to 3.13).
	@$(BIN)/python -c "import sys; sys.exit(sys.version_info < (3, 11))" || { echo "make install: $(VENV) has \
	$$($(BIN)/python -V 2>&1); reasoningner needs 3.11 or newer: rm -rf $(VENV); make install PYTHON=python3.12"; exit 1; }
	# torch first, alone, with pip (which reads a local wheel index where one is configured): a range asked
	# for by another package would otherwise pull another build. Then uv, the version requirements/lock.sh
	# resolves the lock with, from the package index (TORCH may name another index).
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# Then exactly the locked versions of everything else (torch's own dependencies included; uv installs
	# them in seconds where pip takes a minute), then the project without resolving anything; pip check
	# fails if pyproject.toml and the lock have drifted.
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e ".[$(EXTRAS)]"
	# A GPU node's extras (README, "Install"), where an earlier install added them, go back in with pip: vLLM
	# takes older fastapi and numpy than the lock's, and pip check would stop every target after a pull.
	gpu=$$($(BIN)/python -c "import importlib.util as u; print(','.join(x for x, m in $(GPU_EXTRAS) if u.find_spec(m)))") && \
	if [ -n "$$gpu" ]; then $(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),$$gpu]"; fi
	$(BIN)/python -m pip check
	touch $@

# The whole pipeline on CPU with the tiny model: CoT -> SFT -> GRPO -> eval, plots and report.
demo: install
	$(BIN)/python stages/demo.py

# The seed study: the demo's SFT and GRPO with seeds 0, 1, 2, each with rationale and answer-only SFT targets
# (the paper's claim), on the same tiny model; mean ± std -> outputs/tiny-cpu-seeds/seeds.md. JOBS runs at a
# time, one torch thread each: two GRPO runs at once did 14% more steps a second than one at 2 threads. One
# thread or two give the same evaluations (every greedy output identical; after 60 GRPO steps the weights
# differ by up to 3e-6). 71 min with the SFT models resumed, on 2 cores of an AVX2-only EPYC.
SEEDS ?= 0 1 2
JOBS ?= 2
demo-seeds: install
	$(BIN)/python stages/demo.py --seeds $(SEEDS) --jobs $(JOBS) --out outputs/tiny-cpu-seeds

# The paper's recipes (recipes/reasoningner/qwen3-8b) a few steps each on whatever this node has (CPU: a
# tiny local model; the local stand-ins of NER-CoT and the InstructUIE tree), then the tiny evaluation.
SMOKE := outputs/smoke
SMOKE_RECIPES := recipes/reasoningner/qwen3-8b
SMOKE_DEVICE = $(shell $(BIN)/python -c "import torch; print('' if torch.cuda.is_available() else '--use_cpu true')")
# The recipes' Liger kernels where Liger is installed (the image, the liger extra), else off: a GPU node
# after a plain `make install` has not got it, which the recipes would refuse.
SMOKE_LIGER = $(shell $(BIN)/python -c "import importlib.util as u; print('' if u.find_spec('liger_kernel') else '--use_liger_kernel false')")
# float32 weights: one process has no DeepSpeed fp32 master weights, and full fine-tuning of bf16 ones is
# refused (`training.check_trained_precision`); the recipes' bf16 autocast still computes in bf16.
SMOKE_ARGS = --max_steps 2 --report_to none --save_strategy no --dtype float32 $(SMOKE_DEVICE) $(SMOKE_LIGER)
# One GPU at most: TRL refuses several GPUs visible to one process (nn.DataParallel).
smoke: export CUDA_VISIBLE_DEVICES := $(firstword $(subst $(comma), ,$(or $(CUDA_VISIBLE_DEVICES),0)))
smoke: install
	rm -rf $(SMOKE)
	$(BIN)/reasoningner tiny-model --out $(SMOKE)/tiny-model --data tests/data/conll2003_mini.txt \
		--vocab-size 400 --hidden-size 32 --intermediate-size 64 --layers 1 --heads 2
	$(BIN)/python stages/sft.py --config $(SMOKE_RECIPES)/sft.yaml --model_name_or_path $(SMOKE)/tiny-model \
		--train_files hf:tests/data/hub/NER-CoT@train --output_dir $(SMOKE)/sft $(SMOKE_ARGS)
	$(BIN)/python stages/rl.py --config $(SMOKE_RECIPES)/rl.yaml --model_name_or_path $(SMOKE)/sft \
		--train_files "hf:tests/data/hub/InstructUIE/NER@train?sets=CoNLL 2003,WikiANN en" --use_vllm false \
		--per_device_train_batch_size 16 --gradient_accumulation_steps 1 --max_completion_length 16 \
		--output_dir $(SMOKE)/rl $(SMOKE_ARGS)
	$(BIN)/python stages/eval.py --config recipes/tiny-cpu/eval.yaml --model_name_or_path $(SMOKE)/rl \
		--output_dir $(SMOKE)/eval --limit 4 --max_new_tokens 16

# Every stage benchmark, gathered in benchmarks/results/summary.{json,md}.
bench: install
	$(BIN)/python benchmarks/run_all.py

test: install
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	$(BIN)/python -m pytest -m slow -q

lint: install
	$(BIN)/ruff check reasoningner stages tests benchmarks
	$(BIN)/ruff format --check reasoningner stages tests benchmarks

format: install
	$(BIN)/ruff format reasoningner stages tests benchmarks
	$(BIN)/ruff check --fix reasoningner stages tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Re-resolve the locks from package metadata with uv (requirements/lock.sh); ARGS go to `uv pip compile`,
# e.g. ARGS=--upgrade or ARGS="--upgrade-package wandb"; without, the current pins are kept where they fit.
# lock: requirements/cpu.lock (CPython >= 3.11, torch at $(TORCH) but not in the lock, no CUDA packages).
lock:
	TORCH='$(firstword $(TORCH))' UV_VERSION=$(UV_VERSION) requirements/lock.sh cpu $(ARGS)

# docker-lock: the GPU image's docker/requirements-gpu.lock (linux x86_64, Python 3.12), held to the CPU
# lock's pins except where vLLM forces others (docker/requirements-gpu.forced); run it after `make lock`.
docker-lock:
	UV_VERSION=$(UV_VERSION) requirements/lock.sh gpu $(ARGS)

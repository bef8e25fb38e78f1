# One command per job; each target installs what it needs into ./.venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel on a laptop or CI; on a cluster set e.g. TORCH="torch==2.13.0 --index-url <your CUDA index>".
TORCH ?= torch==2.13.0
EXTRAS ?= test,deepspeed
comma := ,
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install test test-slow lint format clean docker-lock

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, alone: a range asked for by another package would otherwise pull CUDA builds.
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

test: install
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	$(BIN)/python -m pytest -m slow -q

lint: install
	$(BIN)/ruff check reasoningner stages tests
	$(BIN)/ruff format --check reasoningner stages tests

format: install
	$(BIN)/ruff format reasoningner stages tests
	$(BIN)/ruff check --fix reasoningner stages tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Re-resolve the GPU image's lock (linux x86_64, Python 3.12) from package metadata.
docker-lock:
	docker/lock.sh

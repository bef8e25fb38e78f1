#!/usr/bin/env bash
# Resolve docker/requirements-gpu.in into docker/requirements-gpu.lock for the image's platform
# (linux x86_64, CPython 3.12) from package metadata alone: no GPU, CUDA or Docker needed.
# Called by `make docker-lock`. Extra arguments go to `uv pip compile`, e.g.
#   docker/lock.sh --upgrade                  # re-resolve everything to the newest allowed
#   docker/lock.sh --upgrade-package wandb    # bump one package, keep the other pins
set -euo pipefail

cd "$(dirname "$0")/.."

UV_VERSION="${UV_VERSION:-0.13.9}"   # keep in step with UV_VERSION in docker/Dockerfile
UV_VENV="${UV_VENV:-${TMPDIR:-/tmp}/reasoningner-uvenv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$UV_VENV/bin/uv" ] || ! "$UV_VENV/bin/uv" --version | grep -qF " $UV_VERSION"; then
    "$PYTHON" -m venv "$UV_VENV"
    "$UV_VENV/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi

# Never fetch a managed CPython from GitHub (unreachable here); sdists needed for metadata
# (only deepspeed today) are built with whatever interpreter is at hand.
export UV_PYTHON_DOWNLOADS=never

start=$(date +%s)
"$UV_VENV/bin/uv" pip compile --quiet docker/requirements-gpu.in pyproject.toml \
    --extra vllm --extra deepspeed \
    --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "make docker-lock" \
    --output-file docker/requirements-gpu.lock \
    "$@"
echo "docker-lock: resolved in $(( $(date +%s) - start ))s -> docker/requirements-gpu.lock" >&2

#!/usr/bin/env bash
# Resolve the project's two locks from package metadata alone (no GPU, CUDA or Docker needed):
#   requirements/lock.sh cpu [uv args]  -> requirements/cpu.lock        (`make lock`)
#       what `make install` installs: pyproject.toml with the extras test,deepspeed, universal for
#       CPython >= 3.11 (trl 1.16 needs 3.11). torch is resolved at $TORCH (the Makefile's, which
#       installs it) but left out of the lock, and its CUDA-only dependencies are excluded, so the lock
#       never makes pip fetch a CUDA torch, nvidia-* or triton; torch's other dependencies are pinned.
#   requirements/lock.sh gpu [uv args]  -> docker/requirements-gpu.lock (`make docker-lock`)
#       the GPU image (linux x86_64, CPython 3.12): docker/requirements-gpu.in with pyproject.toml's
#       extras vllm,deepspeed,liger, constrained to the CPU lock's pins except the packages that
#       docker/requirements-gpu.forced lists (vLLM forbids the CPU lock's version). Run it after `make lock`.
# Extra arguments go to `uv pip compile`, e.g.
#   make lock ARGS=--upgrade                   # re-resolve everything to the newest allowed
#   make lock ARGS="--upgrade-package wandb"   # bump one package, keep the other pins
# Without them uv keeps the pins already in the output file wherever they still fit.
set -euo pipefail

cd "$(dirname "$0")/.."

target="${1:-}"
case "$target" in
    cpu | gpu) shift ;;
    *) echo "usage: $0 cpu|gpu [uv pip compile args]" >&2; exit 2 ;;
esac

UV_VERSION="${UV_VERSION:-0.13.9}"   # the Makefile passes its own; docker/Dockerfile's UV_VERSION matches
UV_VENV="${UV_VENV:-${TMPDIR:-/tmp}/reasoningner-uvenv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$UV_VENV/bin/uv" ] || ! "$UV_VENV/bin/uv" --version | grep -qF " $UV_VERSION"; then
    "$PYTHON" -m venv "$UV_VENV"
    "$UV_VENV/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi

# Never fetch a managed CPython from GitHub (unreachable here); sdists needed for metadata
# (only deepspeed today) are built with whatever interpreter is at hand.
export UV_PYTHON_DOWNLOADS=never

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

start=$(date +%s)
if [ "$target" = cpu ]; then
    out=requirements/cpu.lock
    # The requirement only, e.g. "torch==2.13.0" (TORCH may also carry pip options such as --index-url).
    torch="${TORCH:?set TORCH to the torch requirement, e.g. TORCH=torch==2.13.0 (make lock passes the Makefile TORCH)}"
    echo "${torch%% *}" > "$tmp/torch.txt"
    # torch's dependencies that exist only for its CUDA build on linux (PyPI's torch 2.13.0 wheel);
    # the CPU wheel has none of them. Everything they pull in goes with them.
    printf '%s\n' cuda-bindings cuda-toolkit nvidia-cudnn-cu13 nvidia-cusparselt-cu13 \
        nvidia-nccl-cu13 nvidia-nvshmem-cu13 triton > "$tmp/cuda-only.txt"
    "$UV_VENV/bin/uv" pip compile --quiet pyproject.toml \
        --extra test --extra deepspeed \
        --universal --python-version 3.11 \
        --constraints "$tmp/torch.txt" --excludes "$tmp/cuda-only.txt" --no-emit-package torch \
        --custom-compile-command "make lock" \
        --output-file "$out" \
        "$@"
else
    out=docker/requirements-gpu.lock
    # The CPU lock's pins as constraints, less the packages vLLM forces to another version.
    forced=$(sed -e 's/#.*//' docker/requirements-gpu.forced | awk 'NF { print $1 }' | paste -sd '|')
    grep -v -i -E "^(${forced})==" requirements/cpu.lock > "$tmp/cpu-pins.txt"
    "$UV_VENV/bin/uv" pip compile --quiet docker/requirements-gpu.in pyproject.toml \
        --extra vllm --extra deepspeed --extra liger \
        --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
        --constraints "$tmp/cpu-pins.txt" \
        --custom-compile-command "make docker-lock" \
        --output-file "$out" \
        "$@"
    # Name the constraints by their source, not the temporary file (which changes every run).
    sed -i "s|-c $tmp/cpu-pins.txt|-c requirements/cpu.lock|" "$out"
fi
echo "lock $target: resolved in $(( $(date +%s) - start ))s -> $out" >&2

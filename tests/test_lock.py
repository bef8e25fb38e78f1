"""The committed locks, read as text (no network, no resolver): requirements/cpu.lock, what `make install`
installs (`make lock`), and docker/requirements-gpu.lock, the GPU image (`make docker-lock`)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK = ROOT / "requirements" / "cpu.lock"
GPU_LOCK = ROOT / "docker" / "requirements-gpu.lock"
# Packages vLLM forces to another version in the GPU lock, one per line with the reason (fastapi, numpy,
# setuptools today); requirements/lock.sh reads the same file to leave them out of the GPU lock's constraints.
FORCED = ROOT / "docker" / "requirements-gpu.forced"

# The CPythons the CPU lock is for (trl 1.16 needs >= 3.11), on Linux x86_64; the image runs 3.12.
PYTHONS = ["3.11", "3.12"]
IMAGE_PYTHON = "3.12"


def linux_x86_64(python: str) -> dict[str, str]:
    return {
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "python_version": python,
        "python_full_version": f"{python}.0",
    }


def lock_pins(path: Path, python: str) -> dict[str, Version]:
    """name -> pinned version of every line of `path` whose marker holds on Linux x86_64 with `python`."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        if not line or line[0].isspace() or line[0] in "#-":
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(linux_x86_64(python)):
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice for Python {python}"
        pins[name] = Version(specs[0].version)
    return pins


def make_variable(name: str) -> str:
    match = re.search(rf"^{name} [?:]= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def test_make_install_uses_the_uv_that_resolves_the_locks() -> None:
    """uv installs what it resolved: one version in the Makefile, lock.sh's default and the image."""
    version = make_variable("UV_VERSION")
    lock_sh = (ROOT / "requirements" / "lock.sh").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f'UV_VERSION="${{UV_VERSION:-{version}}}"' in lock_sh
    assert f"ARG UV_VERSION={version}\n" in dockerfile


def make_torch() -> Version:
    """The torch `make install` installs first (the Makefile's TORCH), the one place it is pinned."""
    req = Requirement(make_variable("TORCH").split()[0])
    (spec,) = req.specifier
    assert canonicalize_name(req.name) == "torch" and spec.operator == "==", req
    return Version(spec.version)


def forced() -> set[str]:
    names = set()
    for line in FORCED.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        assert sep and reason.strip(), f"{FORCED.name}: say why vLLM forces it: {line}"
        names.add(canonicalize_name(name.strip()))
    return names


@pytest.mark.parametrize("python", PYTHONS)
def test_cpu_lock_pins_every_requirement_of_make_install(python):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = make_variable("EXTRAS").split(",")
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = lock_pins(CPU_LOCK, python)
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(linux_x86_64(python)):
            continue
        name = canonicalize_name(req.name)
        # torch is installed from the Makefile's TORCH, never from the lock.
        version = make_torch() if name == "torch" else pins.get(name)
        assert version is not None, f"{name} ({req}) is not in {CPU_LOCK.name}: run `make lock`"
        assert req.specifier.contains(version, prereleases=True), (
            f"{CPU_LOCK.name} pins {name}=={version} outside pyproject's {req}: run `make lock`"
        )


def test_cpu_lock_cannot_pull_cuda_torch():
    """torch comes from TORCH alone; the lock names neither it nor anything of its CUDA build."""
    lines = CPU_LOCK.read_text().splitlines()
    names = {canonicalize_name(line.split("==")[0]) for line in lines if "==" in line}
    cuda = {n for n in names if n in {"torch", "triton"} or n.startswith(("nvidia-", "cuda-"))}
    assert not cuda, f"{CPU_LOCK.name} must not pin {sorted(cuda)}"


def test_gpu_lock_has_the_makefile_torch():
    assert lock_pins(GPU_LOCK, IMAGE_PYTHON)["torch"] == make_torch()


def test_shared_pins_agree_except_what_vllm_forces():
    cpu, gpu = lock_pins(CPU_LOCK, IMAGE_PYTHON), lock_pins(GPU_LOCK, IMAGE_PYTHON)
    differ = {name for name in cpu.keys() & gpu.keys() if cpu[name] != gpu[name]}
    unexpected = {name: f"cpu {cpu[name]}, gpu {gpu[name]}" for name in sorted(differ - forced())}
    assert not unexpected, f"the locks disagree, run `make docker-lock` after `make lock`: {unexpected}"
    stale = forced() - differ
    assert not stale, f"{FORCED.name} lists {sorted(stale)}, which the locks pin alike: drop them"


def make_install(tmp_path: Path, extras: str, *options: str) -> subprocess.CompletedProcess:
    """What `make install` would run (-n), into a venv folder that does not exist."""
    command = ["make", "-n", "install", f"EXTRAS={extras}", f"VENV={tmp_path / 'venv'}", *options]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_install_refuses_extras_the_lock_does_not_pin(tmp_path: Path) -> None:
    """`--no-deps` against the CPU lock would install nothing of vllm or liger, and pip check would pass."""
    assert "uv pip install" in make_install(tmp_path, "test,deepspeed").stdout
    refused = make_install(tmp_path, "test,vllm,liger")
    assert refused.returncode != 0
    assert "not vllm liger: on a GPU node install them with pip" in refused.stderr


def test_make_install_leaves_the_docker_image_s_environment_alone(tmp_path: Path) -> None:
    """A checkout mounted into the image, newer than the image, must not reinstall (no pip in its venv)."""
    done = make_install(tmp_path, "image", "-W", "pyproject.toml", "-W", str(CPU_LOCK.relative_to(ROOT)))
    assert done.returncode == 0 and "pip install" not in done.stdout, done.stdout

"""The scripts a user runs (`stages/<name>.py`, `benchmarks/<name>.py`), imported as modules so tests
call their functions directly: a stage's `make_parser()` and `main(...)`, as TRL's scripts are tested."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load_script(relative_path: str) -> ModuleType:
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_stage(name: str) -> ModuleType:
    return load_script(f"stages/{name}.py")

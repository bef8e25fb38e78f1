"""The scripts a user runs (`stages/<name>.py`, `benchmarks/<name>.py`), imported as modules so tests
call their functions directly: a stage's `make_parser()` and `main(...)`, as TRL's scripts are tested."""

from __future__ import annotations

from types import ModuleType

from reasoningner.doctor import load_script
from reasoningner.tracking import CHECKOUT as ROOT

__all__ = ["ROOT", "SHARED", "load_script", "load_stage"]

# The full dev sets beside the checkout, where a machine has them (tests using them skip elsewhere).
SHARED = ROOT.parent / "shared" / "data"


def load_stage(name: str) -> ModuleType:
    return load_script(f"stages/{name}.py")

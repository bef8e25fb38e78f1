"""The layer order of ARCHITECTURE.md holds for every import of the package, and the table lists every
module once: the document and the tree cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "reasoningner"


def documented_layers(text: str) -> dict[str, int]:
    """Module -> layer number, from the rows `| N name | `a`, `b` | ... |` of the layers table."""
    layers: dict[str, int] = {}
    for number, modules in re.findall(r"^\| (\d+) [^|]*\| ([^|]*) \|", text, re.MULTILINE):
        for module in re.findall(r"`(\w+)`", modules):
            assert module not in layers, f"{module} is listed in two layers"
            layers[module] = int(number)
    return layers


def package_imports(path: Path) -> set[str]:
    """The `reasoningner` modules a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("reasoningner."))
    return found


LAYERS = documented_layers((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_the_table_lists_every_module_of_the_package_and_no_other() -> None:
    assert sorted(LAYERS) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_a_module_imports_only_from_its_layer_or_below(module: str) -> None:
    upward = {
        name: LAYERS[name]
        for name in package_imports(PACKAGE / f"{module}.py") - {module}
        if LAYERS.get(name, -1) > LAYERS[module]
    }
    assert not upward, f"{module} (layer {LAYERS[module]}) imports from higher layers: {upward}"


def test_the_parser_of_the_table_and_of_imports_sees_what_is_there(tmp_path: Path) -> None:
    """Guards the two readers above against passing vacuously."""
    assert documented_layers("| 2 services | `rewards`, `generation` | x |\n| 0 core | `spans` | y |") == {
        "rewards": 2,
        "generation": 2,
        "spans": 0,
    }
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom reasoningner.spans import Span\nfrom reasoningner import formats\n"
        "def f():\n    import reasoningner.cli\n",
        encoding="utf-8",
    )
    assert package_imports(source) == {"spans", "formats", "cli"}

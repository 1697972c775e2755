"""Rules of the structure that the code must keep (read from its syntax tree)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT

PACKAGE = ROOT / "longtask"


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
    ]


def test_only_the_state_machine_writes_a_status():
    writers = []
    for name, tree in _modules():
        if name.startswith("longtask/engine/states/"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"update", "bulk_update", "create", "bulk_create"}
                and any(keyword.arg == "status" for keyword in node.keywords)
            ):
                writers.append(f"{name}:{node.lineno}")
    assert writers == []


def test_the_layers_hold():
    # The contracts are in pyproject.toml ([tool.importlinter]); `make test` runs them too.
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


#: Where Django's app loading needs an import at call time (each is commented there).
IMPORTS_AT_CALL_TIME = {"longtask/__init__.py", "longtask/apps.py"}


def test_no_imports_inside_functions():
    inside = []
    for name, tree in _modules():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Import | ast.ImportFrom)
                    and name not in IMPORTS_AT_CALL_TIME
                ):
                    inside.append(f"{name}:{node.lineno}")
    assert inside == []

"""Rules of the structure that the code must keep (read from its syntax tree)."""

from __future__ import annotations

import ast

from tests.processes import ROOT

PACKAGE = ROOT / "longtask"
#: Modules above the engine: it must never import them.
ABOVE_ENGINE = (
    "longtask.api",
    "longtask.web.views",
    "longtask.cli",
    "longtask.admin",
    "longtask.live.watcher",
)
ABOVE_ENGINE += ("longtask.live.consumers", "longtask.management", "longtask.guards.access")


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts
    ]


def test_only_the_state_machine_writes_a_status():
    writers = []
    for name, tree in _modules():
        if name == "longtask/engine/states.py":
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


def test_the_engine_imports_nothing_above_it():
    climbs = []
    for name, tree in _modules():
        if not name.startswith("longtask/engine/"):
            continue
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            climbs += [f"{name}: {t}" for t in targets if t.startswith(ABOVE_ENGINE)]
    assert climbs == []

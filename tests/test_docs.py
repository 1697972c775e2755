"""Keep the README true."""

from __future__ import annotations

import re

from tests.processes import ROOT

README = (ROOT / "README.md").read_text()


def test_the_two_commands_come_first():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["make run", "make test"]


def test_every_documented_variable_is_read():
    sources = (ROOT / "quiltsite" / "settings.py").read_text() + (ROOT / "Makefile").read_text()
    table = README.split("## Configuration")[1].split("###")[0]
    variables = re.findall(r"^\| `([A-Z_]+)` ", table, re.MULTILINE)
    assert len(variables) >= 8
    for name in variables:
        assert name in sources, name


def test_documented_library_settings_exist():
    from longtask.conf import Settings

    listed = README.split("Library settings")[1].split("###")[0]
    for name in re.findall(r"`([A-Z_]+)`", listed):
        assert hasattr(Settings, name), name


def test_ci_runs_the_readme_test_command():
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()

"""`make test` audits requirements.txt with pip-audit (scripts/audit.py), run here on a
stand-in pip_audit that answers what the real one would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROOT

CLEAN = {"dependencies": [{"name": "django", "version": "6.1.3", "vulns": []}], "fixes": []}
FINDING = {"id": "PYSEC-1", "fix_versions": ["6.1.4"]}
VULNERABLE = {
    "dependencies": [{"name": "django", "version": "6.1.3", "vulns": [FINDING]}],
    "fixes": [],
}
OFFLINE = {
    "dependencies": [{"name": "django", "skip_reason": "Dependency not found on PyPI"}],
    "fixes": [],
}


def audit(tmp_path: Path, answer: Any, **env: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/audit.py with a pip_audit that prints ``answer`` (JSON, or raw text)."""
    fake = tmp_path / "pip_audit"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("")
    text = answer if isinstance(answer, str) else json.dumps(answer)
    (fake / "__main__.py").write_text(
        f"import sys\nsys.stdout.write({text!r})\nsys.stderr.write('ConnectionError: no index')\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in {"CI", "LONGTASK_REQUIRE_AUDIT"}}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audit.py")],
        env={**base, "PYTHONPATH": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_test_runs_the_audit_and_pins_pip_audit():
    assert "\t$(PY) scripts/audit.py\n" in (ROOT / "Makefile").read_text()
    assert "pip-audit==" in (ROOT / "requirements-dev.txt").read_text()


def test_no_known_vulnerability_passes(tmp_path):
    done = audit(tmp_path, CLEAN)
    assert done.returncode == 0 and "no known vulnerability in 1 dependencies" in done.stdout


def test_a_vulnerability_fails_and_is_named(tmp_path):
    done = audit(tmp_path, VULNERABLE)
    assert done.returncode == 1
    assert "django 6.1.3: PYSEC-1 (fixed in 6.1.4)" in done.stdout


@pytest.mark.parametrize("answer", [OFFLINE, ""], ids=["mirror-without-data", "unreachable"])
def test_an_unreachable_index_skips_with_the_reason_but_fails_when_required(tmp_path, answer):
    done = audit(tmp_path, answer)
    assert done.returncode == 0 and done.stdout.startswith("SKIPPED the dependency audit")
    assert audit(tmp_path, answer, CI="true").returncode == 0  # CI here reaches no vuln data
    required = audit(tmp_path, answer, LONGTASK_REQUIRE_AUDIT="1")
    assert required.returncode == 1 and required.stdout.startswith("FAILED")

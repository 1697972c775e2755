#!/usr/bin/env python3
"""Audit the pinned runtime dependencies (requirements.txt) for known vulnerabilities.

Part of `make test`. Runs pip-audit, which resolves requirements.txt (with its
transitive dependencies) and asks PyPI's vulnerability data about every version.
A vulnerability fails the run, unless IGNORED below says why it does not apply.
If the index cannot be reached, or cannot tell about some dependency (an offline
mirror), the audit is skipped with the reason printed; with LONGTASK_REQUIRE_AUDIT=1
that is a failure instead. (Not under plain CI=true: this project's CI machines reach
only a package mirror, which has no vulnerability data, so an audit there can never run.
A CI that reaches PyPI or OSV sets the variable.)
Usage: PYTHON scripts/audit.py  (the venv's Python, where requirements-dev.txt is installed)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Vulnerability id -> why it does not apply to longtask. Every entry is a decision:
#: say which code path it needs and why we never take it, and remove it after upgrading.
IGNORED: dict[str, str] = {}


def required() -> bool:
    return os.environ.get("LONGTASK_REQUIRE_AUDIT") == "1"


def cannot_audit(reason: str) -> int:
    if required():
        print(f"FAILED: the dependency audit is required but cannot run: {reason}")
        return 1
    print(f"SKIPPED the dependency audit (pip-audit): {reason}")
    return 0


def main() -> int:
    command = [sys.executable, "-m", "pip_audit", "-r", str(ROOT / "requirements.txt")]
    command += ["--format", "json", "--progress-spinner", "off", "--timeout", "30"]
    for vuln_id in IGNORED:
        command += ["--ignore-vuln", vuln_id]
    try:
        # Fixed arguments, no shell: the venv's own pip-audit on our own file.
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        return cannot_audit("pip-audit did not finish within 15 minutes")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named pip_audit" in done.stderr:
            return cannot_audit("pip-audit is not installed (pip install -r requirements-dev.txt)")
        return cannot_audit(f"the index could not be reached ({last})")
    dependencies = report.get("dependencies", [])
    skipped = [dep for dep in dependencies if dep.get("skip_reason")]
    if not dependencies or skipped:
        names = ", ".join(sorted(dep["name"] for dep in skipped)) or "all"
        return cannot_audit(
            f"the index has no vulnerability data for {len(skipped) or 'any'} of "
            f"{len(dependencies)} dependencies ({names}): an offline mirror?"
        )
    found = [(dep, vuln) for dep in dependencies for vuln in dep.get("vulns", [])]
    for dep, vuln in found:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
        print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
    if found:
        print("FAILED: upgrade the pins in requirements.txt, or justify each in scripts/audit.py")
        return 1
    print(f"Dependency audit: no known vulnerability in {len(dependencies)} dependencies")
    return 0


if __name__ == "__main__":
    sys.exit(main())

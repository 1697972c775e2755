"""Start and stop the real processes that integration tests run against."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from django.conf import settings

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def process_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        LONGTASK_DATA_DIR=str(settings.DATA_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)  # may replace any of those (another settings module, say)
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; look for a live member of the group.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> float:
    """Signal the main PID only, wait for the whole process group to exit; return seconds."""
    import time

    began = time.monotonic()
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
        wait_for(lambda: not group_alive(process.pid), timeout, "the worker's children to exit")
    except (subprocess.TimeoutExpired, AssertionError):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        raise AssertionError(f"process {process.args} did not stop within {timeout}s") from None
    return time.monotonic() - began


@contextmanager
def qcluster(
    log_path: Path, *, command: tuple[str, ...] = ("qcluster",), **env: str
) -> Iterator[subprocess.Popen]:
    """Run ``manage.py qcluster`` in its own process group for the duration of the block."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=process_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        except BaseException:  # a failed stop must not hide the block's failure
            with suppress(AssertionError):
                stop(process)
            raise
        if process.poll() is None:
            stop(process)


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Stop the processes all at once (each as ``stop`` does)."""
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(stop, processes))


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``, oldest first."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append((int(fields[19]), int(entry.name)))  # (start time, pid)
    return [child for _, child in sorted(found)]


def wchan(pid: int) -> str:
    """The kernel function ``pid`` sleeps in ("" if it is running or gone)."""
    try:
        return (Path("/proc") / str(pid) / "wchan").read_text()
    except OSError:
        return ""

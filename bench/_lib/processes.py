"""Worker and daphne processes: each in its own process group, stopped within a deadline."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent.parent
STOP_TIMEOUT = 20.0
POLL = 0.1
LOG_PATTERNS = (
    "database is locked",
    "Traceback",
    " ERROR ",
    "CRITICAL",
    "Failed '",
    "reincarnated",
)


class BenchError(Exception):
    """A run failed or timed out."""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Spawned:
    """A child process in its own session; stopped by SIGTERM to its main PID only."""

    def __init__(
        self, label: str, args: list[str], env: dict[str, str], log: Path, *, talk: bool = False
    ) -> None:
        self.label = label
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 (closed in stop())
        # With ``talk``, stdin/stdout are a line protocol and only stderr goes to the log.
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
            stdout=subprocess.PIPE if talk else self._log_file,
            stderr=self._log_file if talk else subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        self.pid = self.pgid = self.proc.pid
        self.lines: queue.Queue[str] = queue.Queue()
        if talk:
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.label} exited with {self.proc.returncode}; see {self.log}\n"
                + tail(self.log)
            )

    def stop(self) -> None:
        """SIGTERM the main PID (qcluster hangs on a signal to its group); SIGKILL the
        group if it has not all exited in STOP_TIMEOUT."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (self.alive() or group_members(self.pgid)):
            time.sleep(0.1)
        if self.alive() or group_members(self.pgid):
            print(f"  ! {self.label} did not stop in {STOP_TIMEOUT:.0f}s: SIGKILL", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log_file.close()

    # The line protocol (talk=True) ---------------------------------------------------

    def _read(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.lines.put(line.strip())
        self.lines.put("")  # EOF

    def expect(self, word: str, timeout: float) -> str:
        """Wait for a line starting with ``word``; return the rest of it."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.label}: no {word!r} within {timeout:.0f}s") from None
        if not line.startswith(word):
            raise BenchError(f"{self.label}: expected {word!r}, got {line!r}\n{tail(self.log)}")
        return line[len(word) :].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, *watched: Spawned) -> Any:
    """Poll ``condition`` every POLL seconds until it is true; a watched process that
    exits, or the timeout, is a BenchError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for spawned in watched:
            spawned.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(url: str, server: Spawned, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 (a start-up poll, not a measurement)."""

    def serving() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(serving, timeout, f"{server.label} to serve {url}", server)


def log_problems(logs: list[Path]) -> list[str]:
    """Count worrying lines in the workers' logs."""
    notes = []
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        counts = {p.strip(): text.count(p) for p in LOG_PATTERNS if p in text}
        if counts:
            found = ", ".join(f"{k!r} x{v}" for k, v in counts.items())
            notes.append(f"{log.name}: {found}")
    return notes


def site_command(server: str, port: int) -> list[str]:
    """The demo site's server: ``make run``'s gunicorn (uvicorn workers; PORT and
    WEB_CONCURRENCY from the environment), or one daphne."""
    app = "quiltsite.asgi:application"
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    return [sys.executable, "-m", "gunicorn", "-c", "python:quiltsite.gunicorn", app]

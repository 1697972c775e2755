"""What /proc says of a cluster's processes: who is alive, their CPU, and who waits idle.

The supervisor (``dispatch/supervisor.py``) reads these to tell a death (a process of
the cluster gone) and a wedge (jobs waiting while every worker sits blocked on the
cluster's own queues) apart from work. Linux only, as the worker command.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

PROC = Path("/proc")

# Syscall numbers (read, futex) of the architectures we know; elsewhere /proc/PID/wchan.
_SYSCALLS = {"x86_64": (0, 202), "aarch64": (63, 98)}.get(platform.machine())


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # pathlib doubled a scan's 30 ms
            return stat.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of ``pid`` in clock ticks (all its threads), None if gone."""
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def live_children() -> dict[int, list[int]]:
    """Live (not zombie) processes by parent PID."""
    by_parent: dict[int, list[int]] = {}
    for name in os.listdir(PROC):
        if name.isdigit() and (fields := _stat(int(name))) and fields[0] != "Z":
            by_parent.setdefault(int(fields[1]), []).append(int(name))
    return by_parent


def cluster_processes(main_pid: int) -> set[int]:
    """qcluster's sentinel and the sentinel's children (workers, monitor, pusher).

    Children of workers (a job's own subprocesses) are not the cluster's.
    """
    by_parent = live_children()
    sentinels = by_parent.get(main_pid, [])
    return {*sentinels, *(pid for sentinel in sentinels for pid in by_parent.get(sentinel, []))}


def pipes(pid: int) -> set[str]:
    """The pipes ``pid`` holds open ("pipe:[inode]")."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                if (target := os.readlink(fd)).startswith("pipe:"):
                    found.add(target)
    return found


def waits_on_queue(pid: int, queue_pipes: set[str]) -> bool:
    """Whether ``pid`` is blocked on one of the cluster's multiprocessing queues.

    That is: reading one of ``queue_pipes`` (the pipes the sentinel holds), or waiting
    for a multiprocessing lock (a futex in a /dev/shm/sem.* mapping). A job that reads
    a pipe of its own, sleeps or waits on a thread lock is not idle.
    """
    try:
        syscall = (PROC / str(pid) / "syscall").read_text().split()
    except OSError:
        syscall = []
    if not syscall or not _SYSCALLS or syscall[0] == "running":
        try:
            wchan = (PROC / str(pid) / "wchan").read_text()
        except OSError:
            return False
        return "pipe_read" in wchan or "futex" in wchan
    if not syscall[0].isdigit() or len(syscall) < 3:
        return False
    number, first_arg = int(syscall[0]), int(syscall[1], 16)
    read, futex = _SYSCALLS
    if number == read:
        with contextlib.suppress(OSError):
            return os.readlink(PROC / str(pid) / "fd" / str(first_arg)) in queue_pipes
        return False
    if number == futex:
        with contextlib.suppress(OSError), open(PROC / str(pid) / "maps") as maps:
            for line in maps:
                span, *rest = line.split()
                # e.g. "7f0fe0fc1000-7f0fe0fc2000 rw-s 0 00:1b 4436 /dev/shm/sem.ymJyB6 (deleted)"
                if len(rest) >= 5 and rest[4].startswith("/dev/shm/sem."):  # noqa: S108
                    low, high = (int(bound, 16) for bound in span.split("-"))
                    if low <= first_arg < high:
                        return True
    return False

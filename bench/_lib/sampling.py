"""CPU and RSS of process trees, of the servers working for the bench, and of the machine."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from bench._lib.processes import group_members

RSS_INTERVAL = 0.25
HZ = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """CPU time of ``pid`` and of its reaped children, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime


def own_ticks(pid: int) -> int | None:
    """CPU time of ``pid`` alone (utime + stime), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class ServiceCpu:
    """CPU of the server processes that work for the bench (``--services``).

    PostgreSQL backends are picked by database name in their title, plus the WAL
    writer, checkpointer and background writer, which write what every backend
    commits; redis-server counts whole (one main thread serves every database). A
    process's ticks are kept after it exits.
    """

    PG_SHARED = ("walwriter", "checkpointer", "background writer")

    def __init__(self, database: str) -> None:
        self.database = database
        self.ticks: dict[int, tuple[str, int]] = {}
        self.lock = threading.Lock()

    def kind_of(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm.startswith("redis-server"):
                return "redis"
            if comm != "postgres":
                return None
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        # "postgres: [CLUSTER: ]USER DB HOST(PORT) STATE", "postgres: [CLUSTER: ]walwriter"
        if not title.startswith("postgres: "):
            return None
        if f" {self.database} " in title or title.split(":")[-1].strip() in self.PG_SHARED:
            return "postgres"
        return None

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with self.lock:
                known = self.ticks.get(pid)
            kind = known[0] if known else self.kind_of(pid)
            if kind is None:
                continue
            ticks = own_ticks(pid)
            if ticks is not None:
                with self.lock:
                    self.ticks[pid] = (kind, max(ticks, known[1] if known else 0))

    def totals(self) -> dict[str, int]:
        self.sample()
        out = {"postgres": 0, "redis": 0}
        with self.lock:
            for kind, ticks in self.ticks.values():
                out[kind] += ticks
        return out


class RssSampler(threading.Thread):
    """Keeps the highest VmHWM seen for every process of the watched process groups."""

    def __init__(self, services: ServiceCpu | None = None) -> None:
        super().__init__(daemon=True)
        self.groups: dict[int, dict[int, int]] = {}
        self.cpu: dict[int, dict[int, int]] = {}  # pgid -> pid -> utime+stime ticks
        self.services = services
        self.lock = threading.Lock()
        self.done = threading.Event()

    def watch(self, pgid: int) -> None:
        with self.lock:
            self.groups.setdefault(pgid, {})

    def sample(self) -> None:
        with self.lock:
            for pgid, peaks in self.groups.items():
                ticks = self.cpu.setdefault(pgid, {})
                for pid in group_members(pgid):
                    kib = vm_hwm_kib(pid)
                    if kib is not None:
                        peaks[pid] = max(peaks.get(pid, 0), kib)
                    if self.services:
                        used = own_ticks(pid)
                        if used is not None:
                            ticks[pid] = max(ticks.get(pid, 0), used)
        if self.services:
            self.services.sample()

    def cpu_ticks(self, pgids: list[int]) -> int:
        """CPU ticks of the groups' processes (dead ones at their last sample)."""
        self.sample()
        with self.lock:
            return sum(t for pgid in pgids for t in self.cpu.get(pgid, {}).values())

    def peaks(self, pgids: list[int]) -> dict[int, int]:
        self.sample()
        with self.lock:
            return {pid: kib for pgid in pgids for pid, kib in self.groups.get(pgid, {}).items()}

    def run(self) -> None:
        while not self.done.wait(RSS_INTERVAL):
            self.sample()


@dataclass
class Rss:
    max_mib: float
    sum_mib: float
    procs: int

    @classmethod
    def of(cls, peaks: dict[int, int]) -> Rss:
        values = list(peaks.values()) or [0]
        return cls(max(values) / 1024, sum(values) / 1024, len(peaks))

    def __str__(self) -> str:
        return f"{self.max_mib:.0f}/{self.sum_mib:.0f} ({self.procs}p)"


class CpuWatch:
    """CPU used by processes other than the bench's own during a run (a noisy machine)."""

    def __init__(self, sampler: RssSampler) -> None:
        self.sampler = sampler
        self.services = sampler.services
        self.service_ticks = self.services.totals() if self.services else {}
        self.busy = machine_busy_ticks()
        self.ours = cpu_ticks(os.getpid())
        self.began = time.monotonic()

    def service_seconds(self) -> dict[str, float]:
        """CPU-s used by the servers since the watch began (empty if not on services)."""
        if not self.services:
            return {}
        now = self.services.totals()
        return {k: (now[k] - self.service_ticks.get(k, 0)) / HZ for k in now}

    def mark(self, pgids: list[int]) -> None:
        """Start of the timed part, for usage_note()."""
        if self.services:
            self._mark = (self.sampler.cpu_ticks(pgids), self.services.totals(), time.monotonic())

    def usage_note(self, label: str, pgids: list[int]) -> str | None:
        """Where the CPU went in the timed part: the bench's processes and the servers."""
        if not self.services:
            return None
        ticks, servers, began = self._mark
        ours = (self.sampler.cpu_ticks(pgids) - ticks) / HZ
        wall = time.monotonic() - began
        now = self.services.totals()
        used = ", ".join(f"{k} {(now[k] - servers[k]) / HZ:.1f}" for k in now)
        return f"{label} CPU-s in {wall:.1f}s timed: workers {ours:.1f}, {used}"

    def foreign_note(self, label: str, pgids: list[int]) -> str | None:
        ours = cpu_ticks(os.getpid()) + sum(
            cpu_ticks(pid) for pgid in pgids for pid in group_members(pgid)
        )
        servers = sum(self.service_seconds().values())
        foreign = ((machine_busy_ticks() - self.busy) - (ours - self.ours)) / HZ - servers
        share = foreign / ((time.monotonic() - self.began) * (os.cpu_count() or 1))
        if share < 0.10:
            return None
        return (
            f"WARNING {label}: other processes used {foreign:.0f} CPU-s "
            f"(~{share:.0%} of the machine): the timing is disturbed"
        )


def group_seconds(pgid: int) -> float:
    """CPU time (seconds) of the live processes of a group: a server's master and workers."""
    return sum(own_ticks(pid) or 0 for pid in group_members(pgid)) / HZ

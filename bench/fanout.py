"""Fan-out benchmark: django-q2 alone vs. a longtask quilt, embedded or on services.

Run from the project root (nothing else heavy at the same time)::

    .venv/bin/python bench/fanout.py                 # quilts of 10,000 and 40,000, raw at 10,000
    .venv/bin/python bench/fanout.py --n 10000 --raw-n 10000 --raw-n 40000 --keep
    .venv/bin/python bench/fanout.py --services --n 10000 --raw-n 10000
    .venv/bin/python bench/fanout.py --n 0 --raw-n 10000 --tasks-n 10000   # django.tasks vs raw

By default everything runs on the embedded default (SQLite, django-q2's ORM broker;
DATABASE_URL and REDIS_URL are ignored). With ``--services`` both runs use PostgreSQL
and Redis instead, through DATABASE_URL and REDIS_URL as quiltsite/settings.py reads
them: a scratch database (``--pg-db``, default longtask_bench) that the bench creates,
migrates and drops, and a Redis database number of its own (``--redis-db``, default
11; the test suite uses 13-15), flushed at the start and at the end. The bench refuses
a database it did not create (it marks its own with a comment) and a non-empty Redis
database without its marker key; with ``--keep`` both are left for inspection. On
services, (a) is django-q2's own Redis broker with PostgreSQL as the result database,
persistent connections, and a client that reuses one broker for all its
``async_task`` calls (one Redis connection, not one per call); (b) runs on longtask's
Redis broker (longtask.redis_broker). The servers' CPU (the bench database's
PostgreSQL backends, PostgreSQL's WAL writer, checkpointer and background writer,
redis-server) is not counted as foreign load, and each run's notes say how the CPU
of the timed part was shared between the workers and the servers.

(a) raw: a django-q2 cluster of 2 workers, tuned for throughput on the ORM broker
    (see RAW_SETTINGS and RAW_BROKERS), runs N no-op tasks that
    a client process queues with ``async_task``, 500 calls per transaction; timed
    from the first enqueue until N success rows are counted.
(b) quilt: ``longtask.start("quilt", rows x cols = N, work_ms=0)`` on the project's
    own settings (parents cluster 1 worker, subtask cluster 2 workers); timed from
    the call until the task is SUCCEEDED. On services the quilt should also reach
    TARGET_RATE squares/s at N=10,000.
(c) django.tasks: N ``quiltsite.tasks.noop.enqueue()`` calls through LongTaskBackend
    (--raw-batch per transaction, from the bench process) run by a cluster of as many
    workers as (a); timed from the first enqueue until N tasks have finished. Goal: no
    slower than (a).

Peak RSS is the VmHWM of every process in each cluster's process group, sampled
until the cluster is stopped. Everything runs in a fresh private data directory,
$TMPDIR/bench-fanout-* (removed at the end unless ``--keep``).

The no-op is ``operator.truth(1)``: a C builtin importable by dotted path in any
process (the bench module itself is not a package django-q2 could import), it
does no work, and its result (True) pickles to a few bytes.

Exit status: 0 once every run finished (the targets are reported, not enforced),
1 if a run failed or timed out, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RAW_FUNC = "operator.truth"
RUN_TIMEOUT = 600.0  # each timed run
START_TIMEOUT = 120.0  # cluster start-up and warm-up
STOP_TIMEOUT = 20.0
POLL = 0.1
RSS_INTERVAL = 0.25
TARGET_RATIO = 0.5
TARGET_RATE = 1000  # squares/s of the quilt at N=10,000, on services
MAX_SIDE = 200  # quiltsite.quilt.MAX_SIDE (not importable before django.setup())
FLAT_RSS = 1.2
LOG_PATTERNS = (
    "database is locked",
    "Traceback",
    " ERROR ",
    "CRITICAL",
    "Failed '",
    "reincarnated",
)

# django-q2 alone, configured for throughput: save_limit 0 keeps every success row
# (so they can be counted) without the pruning query; no per-task log lines; no
# worker recycling; the pusher takes several jobs per poll and keeps both workers fed;
# persistent database connections (django-q2 calls close_old_connections() around
# every job and every broker poll, which with the default CONN_MAX_AGE=0 reopens the
# SQLite connection each time: about 1.4x slower). The client queues its tasks with
# async_task, --raw-batch calls per transaction.
RAW_SETTINGS = """\
from quiltsite.settings import *  # noqa: F403

DATABASES["default"]["CONN_MAX_AGE"] = None  # noqa: F405

Q_CLUSTER = {{
    "name": "bench-raw",
    {broker},
    "workers": {workers},
    "bulk": {bulk},
    "queue_limit": {queue_limit},
    "poll": {poll},
    "save_limit": 0,
    "timeout": 60,
    "retry": 1800,
    "max_attempts": 0,
    "ack_failures": True,
    "recycle": 10_000_000,
    "catch_up": False,
    "log_level": "WARNING",
    "label": "bench-raw",
    # Unused by this cluster; kept so that longtask's system checks of its queues pass.
    "ALT_CLUSTERS": Q_CLUSTER.get("ALT_CLUSTERS", {{}}),  # noqa: F405
}}
"""

# On services (RAW_BROKERS[True]): django-q2's own Redis broker (no broker_class), results in
# PostgreSQL. quiltsite.settings already reads DATABASE_URL (persistent connections,
# health-checked) and REDIS_URL; "bulk" and "poll" do not apply to the Redis broker
# (one blocking pop per job), and the client reuses one broker for every async_task.
RAW_BROKERS = {
    False: '"orm": "default"',
    True: '"redis": REDIS_URL',  # the generated module is not linted
}


class BenchError(Exception):
    """A run failed or timed out."""


# Processes ---------------------------------------------------------------------------


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


def cpu_ticks(pid: int) -> int:
    """CPU time of ``pid`` and of its reaped children, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def own_ticks(pid: int) -> int | None:
    """CPU time of ``pid`` alone (utime + stime), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


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


class CpuWatch:
    """CPU used by processes other than the bench's own during a run (a noisy machine)."""

    def __init__(self, services: ServiceCpu | None = None) -> None:
        self.services = services
        self.service_ticks = services.totals() if services else {}
        self.busy = machine_busy_ticks()
        self.ours = cpu_ticks(os.getpid())
        self.began = time.monotonic()

    def service_seconds(self) -> dict[str, float]:
        """CPU-s used by the servers since the watch began (empty if not on services)."""
        if not self.services:
            return {}
        hz = os.sysconf("SC_CLK_TCK")
        now = self.services.totals()
        return {k: (now[k] - self.service_ticks.get(k, 0)) / hz for k in now}

    def mark(self, pgids: list[int], rss: RssSampler) -> None:
        """Start of the timed part, for usage_note()."""
        if self.services:
            self._mark = (rss.cpu_ticks(pgids), self.services.totals(), time.monotonic())

    def usage_note(self, label: str, pgids: list[int], rss: RssSampler) -> str | None:
        """Where the CPU went in the timed part: the bench's processes and the servers."""
        if not self.services:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        ticks, servers, began = self._mark
        ours = (rss.cpu_ticks(pgids) - ticks) / hz
        wall = time.monotonic() - began
        now = self.services.totals()
        used = ", ".join(f"{k} {(now[k] - servers[k]) / hz:.1f}" for k in now)
        return f"{label} CPU-s in {wall:.1f}s timed: workers {ours:.1f}, {used}"

    def foreign_note(self, label: str, pgids: list[int]) -> str | None:
        ours = cpu_ticks(os.getpid()) + sum(
            cpu_ticks(pid) for pgid in pgids for pid in group_members(pgid)
        )
        hz = os.sysconf("SC_CLK_TCK")
        servers = sum(self.service_seconds().values())
        foreign = ((machine_busy_ticks() - self.busy) - (ours - self.ours)) / hz - servers
        share = foreign / ((time.monotonic() - self.began) * (os.cpu_count() or 1))
        if share < 0.10:
            return None
        return (
            f"WARNING {label}: other processes used {foreign:.0f} CPU-s "
            f"(~{share:.0%} of the machine): the timing is disturbed"
        )


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


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
        self.pgid = self.proc.pid
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
        """SIGTERM the main PID; SIGKILL the group if it has not all exited in 20 s."""
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


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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


# Results ---------------------------------------------------------------------------


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


@dataclass
class Run:
    n: int
    seconds: float
    rss: Rss
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


@dataclass
class Bench:
    data_dir: Path
    sampler: RssSampler
    started: list[Spawned] = field(default_factory=list)
    services: Services | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "Q_CLUSTER_NAME"}
        env.update(
            DJANGO_SETTINGS_MODULE="quiltsite.settings",
            LONGTASK_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def qcluster(self, label: str, env: dict[str, str]) -> Spawned:
        log = self.data_dir / f"{label}.log"
        cluster = Spawned(label, [sys.executable, "manage.py", "qcluster"], env, log)
        self.started.append(cluster)
        self.sampler.watch(cluster.pgid)
        return cluster

    def stop(self, spawned: Spawned) -> None:
        spawned.stop()
        if spawned in self.started:
            self.started.remove(spawned)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])


PG_COMMENT = "scratch database of the longtask bench (bench/fanout.py)"
REDIS_MARKER = "longtask-bench:scratch"


class Services:
    """A scratch PostgreSQL database and a Redis database number for ``--services``."""

    def __init__(self, pg_server: str, pg_db: str, redis_server: str, redis_db: int) -> None:
        if not pg_db.replace("_", "").isalnum():
            raise SystemExit(f"--pg-db {pg_db!r}: letters, digits and _ only")
        self.pg_server = pg_server.rstrip("/")
        self.pg_db = pg_db
        self.redis_db = redis_db
        self.database_url = f"{self.pg_server}/{pg_db}"
        self.redis_url = f"{redis_server.rstrip('/')}/{redis_db}"
        self.created = False

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(f"{self.pg_server}/postgres", autocommit=True)

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)

    def create(self) -> str:
        """(Re)create the scratch database and flush the Redis database; describe them.

        Only what an earlier bench left is replaced: a database without the bench's
        comment, or a Redis database with keys but without the bench's marker key, is
        someone else's, and the bench refuses to start (choose --pg-db / --redis-db).
        """
        client = self._redis()
        try:
            keys = client.dbsize()
            if keys and not client.exists(REDIS_MARKER):
                raise BenchError(
                    f"Redis db {self.redis_db} holds {keys} keys that the bench did not write: "
                    "choose another --redis-db"
                )
            with self._admin() as conn:
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = %s",
                    [self.pg_db],
                ).fetchone()
                if row and row[0] != PG_COMMENT:
                    raise BenchError(
                        f"database {self.pg_db} was not made by the bench: choose another --pg-db"
                    )
                if row:
                    conn.execute(f'DROP DATABASE "{self.pg_db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
                self.created = True
                conn.execute(f"COMMENT ON DATABASE \"{self.pg_db}\" IS '{PG_COMMENT}'")
                server = conn.execute("SHOW server_version").fetchone()[0]
            client.flushdb()
            client.set(REDIS_MARKER, "1")
            version = client.info("server")["redis_version"]
        finally:
            client.close()
        return (
            f"PostgreSQL {server} database {self.pg_db} (new); Redis {version} db {self.redis_db}"
            f" ({keys} keys of an earlier bench flushed)"
        )

    def drop(self) -> None:
        """Flush the Redis database and drop the scratch database (if the bench made them)."""
        if not self.created:
            return
        from django.db import connections

        connections.close_all()
        client = self._redis()
        client.flushdb()
        client.close()
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
        self.created = False


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


def wait_until(condition: Any, timeout: float, what: str, *watched: Spawned) -> Any:
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


# (a) raw django-q2 -------------------------------------------------------------------


def run_raw(bench: Bench, n: int, args: argparse.Namespace) -> Run:
    from django_q.models import Task

    print(f"(a) raw django-q2, N={n}: starting the cluster ...", flush=True)
    Task.objects.all().delete()
    cpu = CpuWatch(bench.sampler.services)
    module_dir = bench.data_dir / "pymod"
    module_dir.mkdir(exist_ok=True)
    (module_dir / "bench_raw_settings.py").write_text(
        RAW_SETTINGS.format(
            broker=RAW_BROKERS[bench.services is not None],
            workers=args.raw_workers,
            bulk=args.raw_bulk,
            queue_limit=args.raw_queue_limit,
            poll=args.raw_poll,
        )
    )
    env = bench.env(
        DJANGO_SETTINGS_MODULE="bench_raw_settings",
        PYTHONPATH=os.pathsep.join([str(module_dir), str(ROOT)]),
    )
    cluster = bench.qcluster(f"raw-{n}", env)
    enqueuer = Spawned(
        "raw enqueuer",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--enqueue-raw",
            str(n),
            "--raw-batch",
            str(args.raw_batch),
            *(["--reuse-broker"] if bench.services else []),
        ],
        env,
        bench.data_dir / f"raw-{n}-enqueuer.log",
        talk=True,
    )
    bench.started.append(enqueuer)
    bench.sampler.watch(enqueuer.pgid)  # CPU only (its RSS is not a worker's)
    try:
        # Up = a warm-up task queued by the client has been run and saved.
        enqueuer.expect("warm", START_TIMEOUT)
        wait_until(
            lambda: Task.objects.filter(name="warmup", success=True).exists(),
            START_TIMEOUT,
            "the raw cluster to run a warm-up task",
            cluster,
        )
        Task.objects.all().delete()
        print(f"    cluster up; timing {n} async_task calls ...", flush=True)
        cpu.mark([cluster.pgid, enqueuer.pgid], bench.sampler)
        enqueuer.send("go")
        began = float(enqueuer.expect("began", 10))
        successes = Task.objects.filter(success=True)
        last = [0, time.monotonic()]

        def counted() -> bool:
            count = successes.count()
            if count != last[0]:
                last[:] = [count, time.monotonic()]
            return count >= n

        wait_until(counted, RUN_TIMEOUT, f"{n} raw results (counted {last[0]})", cluster)
        seconds = last[1] - began
        enqueued = float(enqueuer.expect("enqueued", 60)) - began
        enqueuer.proc.wait(30)  # reaped: its CPU time counts as ours in CpuWatch
        failures = Task.objects.filter(success=False).count()
        if failures:
            raise BenchError(f"raw: {failures} tasks failed")
        rss = Rss.of(bench.sampler.peaks([cluster.pgid]))
        noisy = cpu.foreign_note(f"raw N={n}", [cluster.pgid, enqueuer.pgid])
        usage = cpu.usage_note(f"raw N={n}", [cluster.pgid, enqueuer.pgid], bench.sampler)
    finally:
        bench.stop(enqueuer)
        bench.stop(cluster)
    notes = [f"raw N={n}: all enqueued after {enqueued:.1f}s"] + ([usage] if usage else [])
    notes += log_problems([cluster.log]) + ([noisy] if noisy else [])
    print(f"    {n} results in {seconds:.1f}s ({n / seconds:.0f}/s)", flush=True)
    Task.objects.all().delete()
    return Run(n, seconds, rss, notes)


def enqueue_raw(n: int, batch: int, reuse_broker: bool = False) -> None:
    """Child process: queue a warm-up task, wait for "go", queue ``n`` tasks.

    With ``reuse_broker`` every call gets the same broker (on Redis: one connection
    for all of them instead of a new one per call).
    """
    import django
    from django.db import transaction

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    options = {"broker": get_broker()} if reuse_broker else {}
    async_task(RAW_FUNC, 1, task_name="warmup", **options)
    print("warm", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    began = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
    print(f"began {began}", flush=True)
    for start in range(0, n, batch):
        with transaction.atomic() if batch > 1 else contextlib.nullcontext():
            for _ in range(min(batch, n - start)):
                async_task(RAW_FUNC, 1, **options)
    print(f"enqueued {time.monotonic()}", flush=True)


# (b) quilt -------------------------------------------------------------------------


def quilt_shape(n: int) -> tuple[int, int]:
    """rows x cols == n with both <= 200, as square as possible."""
    best = None
    for rows in range(1, MAX_SIDE + 1):
        if n % rows == 0 and n // rows <= MAX_SIDE:
            cols = n // rows
            if best is None or abs(rows - cols) < abs(best[0] - best[1]):
                best = (rows, cols)
    if best is None:
        raise SystemExit(f"--n {n}: no rows x cols with both <= {MAX_SIDE}")
    return best


def run_quilt(bench: Bench, n: int, parent_workers: int, subtask_workers: int) -> Run:
    import longtask
    from longtask.api import delete_finished
    from longtask.dispatch import CHUNK_JOB
    from longtask.models import FINISHED_STATUSES, LongTask, Status

    rows, cols = quilt_shape(n)
    print(f"(b) quilt {rows}x{cols}, N={n}: starting the clusters ...", flush=True)
    cpu = CpuWatch(bench.sampler.services)
    parents = bench.qcluster(f"quilt-{n}-parents", bench.env())
    subtasks = bench.qcluster(f"quilt-{n}-subtasks", bench.env(Q_CLUSTER_NAME="longtask-subtasks"))
    clusters = [parents, subtasks]
    try:
        # Up = a tiny quilt went through both clusters.
        warm = longtask.start("quilt", {"rows": 1, "cols": 2, "work_ms": 0})
        wait_until(
            lambda: LongTask.objects.filter(pk=warm.pk, status=Status.SUCCEEDED).exists(),
            START_TIMEOUT,
            "a warm-up quilt",
            *clusters,
        )
        delete_finished(LongTask.objects.all())
        print(f"    clusters up; timing a quilt of {n} ...", flush=True)
        log_offset = subtasks.log.stat().st_size
        cpu.mark([c.pgid for c in clusters], bench.sampler)
        began = time.monotonic()
        task = longtask.start("quilt", {"rows": rows, "cols": cols, "work_ms": 0})
        marks: dict[str, float] = {}
        state: dict[str, Any] = {}
        row = LongTask.objects.filter(pk=task.pk)

        def finished() -> bool:
            state.update(row.values("status", "split_done", "subtasks_done").get())
            now = time.monotonic() - began
            if state["split_done"]:
                marks.setdefault("split", now)
            for share in (0.1, 0.5, 0.9, 1.0):
                if state["subtasks_done"] >= share * n:
                    marks.setdefault(f"{share:.0%}", now)
            return state["status"] in FINISHED_STATUSES

        wait_until(finished, RUN_TIMEOUT, f"the quilt of {n} (state {state})", *clusters)
        seconds = time.monotonic() - began
        rss = Rss.of(bench.sampler.peaks([c.pgid for c in clusters]))
        noisy = cpu.foreign_note(f"quilt N={n}", [c.pgid for c in clusters])
        usage = cpu.usage_note(f"quilt N={n}", [c.pgid for c in clusters], bench.sampler)
    finally:
        for cluster in reversed(clusters):
            bench.stop(cluster)
    task.refresh_from_db()
    if task.status != Status.SUCCEEDED:
        raise BenchError(f"quilt of {n}: {task.status} {task.error}")
    colours = sum(1 for line in task.result["colors"] for c in line if c)
    if colours != n or task.subtasks_done != n:
        raise BenchError(f"quilt of {n}: {colours} colours, {task.subtasks_done} subtasks done")
    with open(subtasks.log, errors="replace") as f:
        f.seek(log_offset)
        chunks = f.read().count(f"Processed '{CHUNK_JOB}'")
    squares = ", ".join(f"{k} {v:.1f}s" for k, v in marks.items() if k != "split")
    notes = [
        f"quilt N={n}: split done {marks.get('split', float('nan')):.1f}s; squares done {squares}; "
        f"SUCCEEDED {seconds:.1f}s; {chunks} chunk jobs"
    ] + ([usage] if usage else [])
    notes += log_problems([c.log for c in clusters]) + ([noisy] if noisy else [])
    print(f"    SUCCEEDED in {seconds:.1f}s ({n / seconds:.0f} squares/s)", flush=True)
    delete_finished(LongTask.objects.all())
    return Run(n, seconds, rss, notes)


# (c) django.tasks through LongTaskBackend --------------------------------------------


def run_tasks(bench: Bench, n: int, workers: int, batch: int) -> Run:
    from django.db import transaction

    from longtask.api import delete_finished
    from longtask.models import FINISHED_STATUSES, LongTask, Status
    from quiltsite.tasks import noop

    print(f"(c) django.tasks, N={n}: starting the cluster ...", flush=True)
    cpu = CpuWatch(bench.sampler.services)
    cluster = bench.qcluster(f"tasks-{n}", bench.env(LONGTASK_WORKERS=str(workers)))
    try:
        warm = noop.enqueue()
        wait_until(
            lambda: LongTask.objects.filter(pk=warm.id, status=Status.SUCCEEDED).exists(),
            START_TIMEOUT,
            "a warm-up task",
            cluster,
        )
        delete_finished(LongTask.objects.all())
        print(f"    cluster up; timing {n} enqueue() calls ...", flush=True)
        cpu.mark([cluster.pgid], bench.sampler)
        began = time.monotonic()
        for start in range(0, n, batch):
            with transaction.atomic():
                for _ in range(min(batch, n - start)):
                    noop.enqueue()
        enqueued = time.monotonic() - began
        finished = LongTask.objects.filter(status__in=FINISHED_STATUSES)
        wait_until(lambda: finished.count() >= n, RUN_TIMEOUT, f"{n} tasks to finish", cluster)
        seconds = time.monotonic() - began
        rss = Rss.of(bench.sampler.peaks([cluster.pgid]))
        noisy = cpu.foreign_note(f"tasks N={n}", [cluster.pgid])
        usage = cpu.usage_note(f"tasks N={n}", [cluster.pgid], bench.sampler)
    finally:
        bench.stop(cluster)
    failed = LongTask.objects.exclude(status=Status.SUCCEEDED).count()
    if failed:
        raise BenchError(f"tasks: {failed} did not succeed")
    notes = [f"tasks N={n}: all enqueued after {enqueued:.1f}s (by the bench process)"]
    notes += ([usage] if usage else []) + log_problems([cluster.log]) + ([noisy] if noisy else [])
    print(f"    {n} SUCCEEDED in {seconds:.1f}s ({n / seconds:.0f}/s)", flush=True)
    delete_finished(LongTask.objects.all())
    return Run(n, seconds, rss, notes)


def tasks_report(raw: dict[int, Run], tasks: dict[int, Run]) -> str:
    """One line per size: django.tasks through longtask against raw django-q2."""
    lines = []
    for n, run in sorted(tasks.items()):
        line = f"django.tasks N={n}: {run.seconds:.1f}s ({run.rate:.0f}/s), RSS {run.rss}"
        if n in raw:
            ratio = run.seconds / raw[n].seconds
            verdict_ = "MET" if ratio <= 1 else "MISSED"
            line += f"; vs raw {raw[n].seconds:.1f}s: x{ratio:.2f} -> {verdict_} (<= x1.00)"
        lines.append(line)
    return "\n".join(lines)


# Report ---------------------------------------------------------------------------


def report(raw: dict[int, Run], quilt: dict[int, Run], services: bool = False) -> str:
    lines = []
    if services:
        lines.append("on services: PostgreSQL + Redis")
    header = (
        f"{'N':>7} | {'raw s':>7} {'tasks/s':>8} | {'quilt s':>7} {'squares/s':>9} | "
        f"{'quilt/raw':>9} | {'raw RSS MiB':>15} | {'quilt RSS MiB':>15}"
    )
    lines += [header, "-" * len(header)]
    base = min(raw.values(), key=lambda r: abs(r.n - 10_000), default=None)
    for n in sorted(set(raw) | set(quilt)):
        a, b = raw.get(n), quilt.get(n)
        ratio = "-"
        if a and b:
            ratio = f"{b.seconds / a.seconds:.2f}"
        elif b and base:
            ratio = f"~{b.seconds / (n / base.rate):.2f}"
        lines.append(
            f"{n:>7} | "
            + (f"{a.seconds:>7.1f} {a.rate:>8.0f}" if a else f"{'-':>7} {'-':>8}")
            + " | "
            + (f"{b.seconds:>7.1f} {b.rate:>9.0f}" if b else f"{'-':>7} {'-':>9}")
            + f" | {ratio:>9} | {str(a.rss) if a else '-':>15} | {str(b.rss) if b else '-':>15}"
        )
    lines.append(
        "RSS = peak VmHWM per process, max/sum over the clusters' processes (count); "
        "~ratio = quilt vs raw extrapolated from raw's rate at N=" + (str(base.n) if base else "-")
    )
    lines.append(verdict(raw, quilt, base, services))
    return "\n".join(lines)


def verdict(
    raw: dict[int, Run], quilt: dict[int, Run], base: Run | None, services: bool = False
) -> str:
    parts = []
    ratios = {n: quilt[n].seconds / raw[n].seconds for n in quilt if n in raw}
    if ratios:
        worst = max(ratios.values())
        ok = worst <= TARGET_RATIO
        measured = ", ".join(f"{v:.2f} at N={n}" for n, v in sorted(ratios.items()))
        parts.append(f"ratio {measured} -> {'MET' if ok else 'MISSED'} (<= {TARGET_RATIO})")
    else:
        parts.append("ratio not measured (no N with both runs)")
    if len(quilt) >= 2:
        small, large = quilt[min(quilt)], quilt[max(quilt)]
        growth = large.rss.max_mib / small.rss.max_mib
        flat = growth <= FLAT_RSS
        parts.append(
            f"memory {'FLAT' if flat else 'NOT FLAT'}: quilt max RSS "
            f"x{growth:.2f} from N={small.n} to N={large.n} (<= x{FLAT_RSS})"
        )
    else:
        parts.append("memory flatness not measured (one quilt size)")
    if services:
        if 10_000 in quilt:
            rate = quilt[10_000].rate
            ok = rate >= TARGET_RATE
            parts.append(
                f"rate {rate:.0f} squares/s at N=10000 -> {'MET' if ok else 'MISSED'} "
                f"(>= {TARGET_RATE})"
            )
        else:
            parts.append("rate target not measured (no quilt of N=10000)")
    return "verdict: " + "; ".join(parts)


# Main ------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, action="append", help="quilt sizes (10000 and 40000); 0 skips the quilt"
    )
    parser.add_argument(
        "--raw-n", type=int, action="append", help="raw sizes (10000); 0 skips the raw baseline"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the data dir (logs, database; --services: the scratch database, Redis db)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="run on PostgreSQL + Redis (a scratch database and Redis db) instead of embedded",
    )
    parser.add_argument("--pg-server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--pg-db", default="longtask_bench", help="scratch database (dropped!)")
    parser.add_argument("--redis-server", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis db number (flushed!)")
    parser.add_argument("--raw-workers", type=int, default=2)
    parser.add_argument("--raw-bulk", type=int, default=16, help="django-q2 'bulk' of the baseline")
    parser.add_argument("--raw-queue-limit", type=int, default=16)
    parser.add_argument("--raw-poll", type=float, default=0.05)
    parser.add_argument(
        "--raw-batch",
        type=int,
        default=500,
        help="async_task calls per transaction (1: autocommit each)",
    )
    parser.add_argument(
        "--tasks-n",
        type=int,
        action="append",
        help="django.tasks no-op runs through LongTaskBackend (10000); 0 skips them",
    )
    parser.add_argument("--parent-workers", type=int, default=1)
    parser.add_argument("--subtask-workers", type=int, default=2)
    parser.add_argument("--enqueue-raw", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-broker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.n = [n for n in (args.n or [10_000, 40_000]) if n > 0]
    args.raw_n = [n for n in (args.raw_n or [10_000]) if n > 0]
    args.tasks_n = [n for n in (args.tasks_n or [10_000]) if n > 0]
    return args


def lost_service(exc: BaseException) -> bool:
    """Say whether ``exc`` is a lost connection to PostgreSQL or Redis."""
    from django.db import InterfaceError, OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, (InterfaceError, OperationalError, RedisConnectionError))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.enqueue_raw is not None:
        enqueue_raw(args.enqueue_raw, args.raw_batch, args.reuse_broker)
        return 0
    for n in args.n:
        quilt_shape(n)

    # A private (0700, unguessable) directory: a fixed /tmp path another user could
    # create first would let them plant modules the benchmark's processes import.
    data_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    os.environ.pop("Q_CLUSTER_NAME", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="quiltsite.settings",
        LONGTASK_DATA_DIR=str(data_dir),
        LONGTASK_WORKERS=str(args.parent_workers),
        LONGTASK_SUBTASK_WORKERS=str(args.subtask_workers),
    )
    services = None
    if args.services:
        services = Services(args.pg_server, args.pg_db, args.redis_server, args.redis_db)
        # Every process the bench starts inherits these (Bench.env copies os.environ).
        os.environ.update(DATABASE_URL=services.database_url, REDIS_URL=services.redis_url)
    else:
        for name in ("DATABASE_URL", "REDIS_URL"):  # embedded means embedded
            os.environ.pop(name, None)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process.
    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    service_cpu = ServiceCpu(args.pg_db) if services else None
    sampler = RssSampler(service_cpu)
    bench = Bench(data_dir, sampler, services=services)
    raw: dict[int, Run] = {}
    quilt: dict[int, Run] = {}
    tasks: dict[int, Run] = {}
    status = 0
    try:
        import logging

        import django
        from django.core.management import call_command

        if services:
            print(services.create(), flush=True)  # BenchError if not ours
        django.setup()
        # The bench process itself queues the quilt: keep its own logs quiet.
        logging.getLogger("longtask").setLevel(logging.WARNING)
        logging.getLogger("django-q").setLevel(logging.WARNING)
        call_command("migrate", verbosity=0)
        print(
            f"data dir {data_dir}; {os.cpu_count()} CPUs; raw: {args.raw_workers} workers "
            f"(bulk {args.raw_bulk}, queue_limit {args.raw_queue_limit}, poll {args.raw_poll}); "
            f"quilt: {args.parent_workers} parent + {args.subtask_workers} subtask workers",
            flush=True,
        )
        sampler.start()
        for n in args.raw_n:
            raw[n] = run_raw(bench, n, args)
        for n in args.tasks_n:
            tasks[n] = run_tasks(bench, n, args.raw_workers, args.raw_batch)
        for n in args.n:
            quilt[n] = run_quilt(bench, n, args.parent_workers, args.subtask_workers)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        status = 130
    except Exception as exc:
        if not (services and lost_service(exc)):
            raise
        print(
            f"FAILED: lost a service ({type(exc).__name__}: {exc}); "
            "was PostgreSQL or Redis restarted during the run?",
            file=sys.stderr,
            flush=True,
        )
        status = 1
    finally:
        bench.stop_all()
        sampler.done.set()
        if services and not args.keep:
            try:
                services.drop()
            except Exception as exc:  # reported; the figures still print
                print(f"could not drop {services.pg_db} / flush Redis db: {exc}", file=sys.stderr)
                status = status or 1
    if raw or quilt or tasks:
        print()
        print(report(raw, quilt, services=bool(services)))
        if tasks:
            print(tasks_report(raw, tasks))
        runs = [*raw.values(), *tasks.values(), *quilt.values()]
        notes = [note for run in runs for note in run.notes]
        if notes:
            print("notes:\n  " + "\n  ".join(notes))
    if services and args.keep:
        print(f"kept database {services.pg_db} and Redis db {services.redis_db}")
    if args.keep or status:
        print(f"kept {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fan-out benchmark: django-q2 alone vs. a longtask quilt, on the embedded default.

Run from the project root (nothing else heavy at the same time)::

    .venv/bin/python bench/fanout.py                 # quilts of 10,000 and 40,000, raw at 10,000
    .venv/bin/python bench/fanout.py --n 10000 --raw-n 10000 --raw-n 40000 --keep

(a) raw: a django-q2 cluster of 2 workers, tuned for throughput on the ORM broker
    (see RAW_SETTINGS), runs N no-op tasks that a client process queues with
    ``async_task``, 500 calls per transaction; timed from the first enqueue until
    N success rows are counted.
(b) quilt: ``longtask.start("quilt", rows x cols = N, work_ms=0)`` on the project's
    own settings (parents cluster 1 worker, subtask cluster 2 workers); timed from
    the call until the task is SUCCEEDED.

Peak RSS is the VmHWM of every process in each cluster's process group, sampled
until the cluster is stopped. Everything runs in a fresh data directory under
/tmp/bench-scratch/ (removed at the end unless ``--keep``).

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
SCRATCH = Path("/tmp/bench-scratch")
RAW_FUNC = "operator.truth"
RUN_TIMEOUT = 600.0  # each timed run
START_TIMEOUT = 120.0  # cluster start-up and warm-up
STOP_TIMEOUT = 20.0
POLL = 0.1
RSS_INTERVAL = 0.25
TARGET_RATIO = 0.5
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
    "orm": "default",
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
}}
"""


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


class CpuWatch:
    """CPU used by processes other than the bench's own during a run (a noisy machine)."""

    def __init__(self) -> None:
        self.busy = machine_busy_ticks()
        self.ours = cpu_ticks(os.getpid())
        self.began = time.monotonic()

    def foreign_note(self, label: str, pgids: list[int]) -> str | None:
        ours = cpu_ticks(os.getpid()) + sum(
            cpu_ticks(pid) for pgid in pgids for pid in group_members(pgid)
        )
        hz = os.sysconf("SC_CLK_TCK")
        foreign = ((machine_busy_ticks() - self.busy) - (ours - self.ours)) / hz
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

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.groups: dict[int, dict[int, int]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def watch(self, pgid: int) -> None:
        with self.lock:
            self.groups.setdefault(pgid, {})

    def sample(self) -> None:
        with self.lock:
            for pgid, peaks in self.groups.items():
                for pid in group_members(pgid):
                    kib = vm_hwm_kib(pid)
                    if kib is not None:
                        peaks[pid] = max(peaks.get(pid, 0), kib)

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
    cpu = CpuWatch()
    module_dir = bench.data_dir / "pymod"
    module_dir.mkdir(exist_ok=True)
    (module_dir / "bench_raw_settings.py").write_text(
        RAW_SETTINGS.format(
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
        ],
        env,
        bench.data_dir / f"raw-{n}-enqueuer.log",
        talk=True,
    )
    bench.started.append(enqueuer)
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
    finally:
        bench.stop(enqueuer)
        bench.stop(cluster)
    notes = [f"raw N={n}: all enqueued after {enqueued:.1f}s"]
    notes += log_problems([cluster.log]) + ([noisy] if noisy else [])
    print(f"    {n} results in {seconds:.1f}s ({n / seconds:.0f}/s)", flush=True)
    Task.objects.all().delete()
    return Run(n, seconds, rss, notes)


def enqueue_raw(n: int, batch: int) -> None:
    """Child process: queue a warm-up task, wait for "go", queue ``n`` tasks."""
    import django
    from django.db import transaction

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django_q.tasks import async_task

    async_task(RAW_FUNC, 1, task_name="warmup")
    print("warm", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    began = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
    print(f"began {began}", flush=True)
    for start in range(0, n, batch):
        with transaction.atomic() if batch > 1 else contextlib.nullcontext():
            for _ in range(min(batch, n - start)):
                async_task(RAW_FUNC, 1)
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
    from longtask.fanin import CHUNK_JOB
    from longtask.models import FINISHED_STATUSES, LongTask, Status

    rows, cols = quilt_shape(n)
    print(f"(b) quilt {rows}x{cols}, N={n}: starting the clusters ...", flush=True)
    cpu = CpuWatch()
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
    ]
    notes += log_problems([c.log for c in clusters]) + ([noisy] if noisy else [])
    print(f"    SUCCEEDED in {seconds:.1f}s ({n / seconds:.0f} squares/s)", flush=True)
    delete_finished(LongTask.objects.all())
    return Run(n, seconds, rss, notes)


# Report ---------------------------------------------------------------------------


def report(raw: dict[int, Run], quilt: dict[int, Run]) -> str:
    lines = []
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
    lines.append(verdict(raw, quilt, base))
    return "\n".join(lines)


def verdict(raw: dict[int, Run], quilt: dict[int, Run], base: Run | None) -> str:
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
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs, database)")
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
    parser.add_argument("--parent-workers", type=int, default=1)
    parser.add_argument("--subtask-workers", type=int, default=2)
    parser.add_argument("--enqueue-raw", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.n = [n for n in (args.n or [10_000, 40_000]) if n > 0]
    args.raw_n = [n for n in (args.raw_n or [10_000]) if n > 0]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.enqueue_raw is not None:
        enqueue_raw(args.enqueue_raw, args.raw_batch)
        return 0
    for n in args.n:
        quilt_shape(n)

    SCRATCH.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="fanout-", dir=SCRATCH))
    os.environ.pop("Q_CLUSTER_NAME", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="quiltsite.settings",
        LONGTASK_DATA_DIR=str(data_dir),
        LONGTASK_WORKERS=str(args.parent_workers),
        LONGTASK_SUBTASK_WORKERS=str(args.subtask_workers),
    )
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process.
    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    sampler = RssSampler()
    bench = Bench(data_dir, sampler)
    raw: dict[int, Run] = {}
    quilt: dict[int, Run] = {}
    status = 0
    try:
        import logging

        import django
        from django.core.management import call_command

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
        for n in args.n:
            quilt[n] = run_quilt(bench, n, args.parent_workers, args.subtask_workers)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        status = 130
    finally:
        bench.stop_all()
        sampler.done.set()
    if raw or quilt:
        print()
        print(report(raw, quilt))
        notes = [note for run in [*raw.values(), *quilt.values()] for note in run.notes]
        if notes:
            print("notes:\n  " + "\n  ".join(notes))
    if args.keep or status:
        print(f"kept {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

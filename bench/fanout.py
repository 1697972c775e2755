"""Fan-out benchmark: django-q2 alone vs a longtask quilt, embedded or on services.

Run from the project root (nothing else heavy at the same time)::

    .venv/bin/python bench/fanout.py                 # quilts of 10,000 and 40,000, raw at 10,000
    .venv/bin/python bench/fanout.py --n 10000 --raw-n 10000 --raw-n 40000 --keep
    .venv/bin/python bench/fanout.py --services --n 10000 --raw-n 10000

By default everything runs on the embedded default (SQLite, django-q2's ORM broker;
DATABASE_URL and REDIS_URL are ignored). With ``--services`` both runs use PostgreSQL
and Redis instead, through DATABASE_URL and REDIS_URL as quiltsite/settings.py reads
them: a scratch database (``--pg-db``, default longtask_bench) that the bench creates,
migrates and drops, and a Redis database number of its own (``--redis-db``, default
11; the test suite uses 15), flushed at the start and at the end. The bench refuses
a database it did not create (it marks its own with a comment) and a non-empty Redis
database without its marker key; with ``--keep`` both are left for inspection. On
services, (b) runs on longtask's Redis broker (longtask.redis_broker). The servers'
CPU (the bench database's PostgreSQL backends, PostgreSQL's WAL writer, checkpointer
and background writer, redis-server) is not counted as foreign load, and each run's
notes say how the CPU of the timed part was shared between the workers and the servers.

(a) raw: django-q2 alone, tuned for throughput (bench/raw.py, bench/settings_raw.py);
    timed from the first of N ``async_task`` calls until N success rows are counted.
(b) quilt: ``longtask.start("quilt", rows x cols = N, work_ms=0)`` on the project's
    own settings (parents cluster 1 worker, subtask cluster 2 workers); timed from
    the call until the task is SUCCEEDED. On services the quilt should also reach
    TARGET_RATE squares/s at N=10,000.

The django.tasks comparison that ``--tasks-n`` ran here is bench/tasks.py.

Peak RSS is the VmHWM of every process in each cluster's process group, sampled
until the cluster is stopped. Everything runs in a fresh private data directory,
$TMPDIR/bench-fanout-* (removed at the end unless ``--keep``).

Exit status: 0 once every run finished (the targets are reported, not enforced),
1 if a run failed or timed out, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/fanout.py

from bench import raw as baseline
from bench._lib.processes import BenchError, log_problems, wait_until
from bench._lib.report import Run, print_results, table
from bench._lib.sampling import CpuWatch, Rss
from bench._lib.session import Bench, Session, add_scratch_args, sizes

TARGET_RATIO = 0.5
TARGET_RATE = 1000  # squares/s of the quilt at N=10,000, on services
MAX_SIDE = 200  # quiltsite.quilt.MAX_SIDE (not importable before django.setup())
FLAT_RSS = 1.2


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
    cpu = CpuWatch(bench.sampler)
    parents = bench.qcluster(f"quilt-{n}-parents", bench.env())
    subtasks = bench.qcluster(f"quilt-{n}-subtasks", bench.env(Q_CLUSTER_NAME="longtask-subtasks"))
    clusters = [parents, subtasks]
    pgids = [c.pgid for c in clusters]
    try:
        # Up = a tiny quilt went through both clusters.
        warm = longtask.start("quilt", {"rows": 1, "cols": 2, "work_ms": 0})
        wait_until(
            lambda: LongTask.objects.filter(pk=warm.pk, status=Status.SUCCEEDED).exists(),
            baseline.START_TIMEOUT,
            "a warm-up quilt",
            *clusters,
        )
        delete_finished(LongTask.objects.all())
        print(f"    clusters up; timing a quilt of {n} ...", flush=True)
        log_offset = subtasks.log.stat().st_size
        cpu.mark(pgids)
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

        what = f"the quilt of {n} (state {state})"
        wait_until(finished, baseline.RUN_TIMEOUT, what, *clusters)
        seconds = time.monotonic() - began
        rss = Rss.of(bench.sampler.peaks(pgids))
        noisy = cpu.foreign_note(f"quilt N={n}", pgids)
        usage = cpu.usage_note(f"quilt N={n}", pgids)
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


def verdict(raw: dict[int, Run], quilt: dict[int, Run], services: bool = False) -> str:
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, action="append", help="quilt sizes (10000 and 40000); 0 skips the quilt"
    )
    baseline.add_raw_args(parser)
    add_scratch_args(parser)
    parser.add_argument("--parent-workers", type=int, default=1)
    parser.add_argument("--subtask-workers", type=int, default=2)
    parser.add_argument("--tasks-n", type=int, action="append", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tasks_n and any(args.tasks_n):
        parser.error("the django.tasks comparison is bench/tasks.py --n N (--raw-n N)")
    args.n = [n for n in (args.n or [10_000, 40_000]) if n > 0]
    args.raw_n = sizes(args.raw_n, 10_000)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for n in args.n:
        quilt_shape(n)
    session = Session(
        args,
        "bench-fanout-",
        LONGTASK_WORKERS=str(args.parent_workers),
        LONGTASK_SUBTASK_WORKERS=str(args.subtask_workers),
    )
    raw: dict[int, Run] = {}
    quilt: dict[int, Run] = {}

    def body(bench: Bench) -> None:
        print(
            f"data dir {bench.data_dir}; {os.cpu_count()} CPUs; {baseline.describe(args)}; "
            f"quilt: {args.parent_workers} parent + {args.subtask_workers} subtask workers",
            flush=True,
        )
        for n in args.raw_n:
            raw[n] = baseline.run_raw(bench, n, args)
        for n in args.n:
            quilt[n] = run_quilt(bench, n, args.parent_workers, args.subtask_workers)

    session.run(body)
    if raw or quilt:
        lines = table(raw, quilt, "quilt", "squares/s", services=bool(session.services))
        lines.append(verdict(raw, quilt, bool(session.services)))
        print_results(lines, [*raw.values(), *quilt.values()])
    return session.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

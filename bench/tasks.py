"""django.tasks benchmark: N no-op ``@task`` runs through LongTaskBackend vs django-q2 alone.

Run from the project root (nothing else heavy at the same time)::

    .venv/bin/python bench/tasks.py                  # 10,000 of each
    .venv/bin/python bench/tasks.py --n 10000 --raw-n 10000 --services

(a) raw: django-q2 alone, tuned for throughput (bench/raw.py, bench/settings_raw.py);
    timed from the first of N ``async_task`` calls until N success rows are counted.
(c) django.tasks: N ``quiltsite.tasks.noop.enqueue()`` calls through LongTaskBackend
    (--raw-batch per transaction, from the bench process) run by a cluster of as many
    workers as (a), on the project's own settings; timed from the first enqueue until
    N tasks have finished. Goal: no slower than (a). Like (a), whose django-q2 logs at
    WARNING, the cluster writes no line per task (LONGTASK_LOG_LEVEL=WARNING; --log-level
    INFO keeps the project's four: started and finished, from longtask and django.tasks).

Embedded by default; ``--services`` runs both on a scratch PostgreSQL database and
Redis database, as bench/fanout.py does (see there). Everything runs in a fresh private
data directory, $TMPDIR/bench-tasks-* (removed at the end unless ``--keep``).

Exit status: 0 once every run finished (the goal is reported, not enforced), 1 if a
run failed or timed out, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/tasks.py

from bench import raw as baseline
from bench._lib.processes import BenchError, log_problems, wait_until
from bench._lib.report import Run, print_results, table
from bench._lib.sampling import CpuWatch, Rss
from bench._lib.session import Bench, Session, add_scratch_args, sizes


def run_tasks(bench: Bench, n: int, workers: int, batch: int, log_level: str) -> Run:
    from django.db import transaction

    from longtask.api import delete_finished
    from longtask.models import FINISHED_STATUSES, LongTask, Status
    from quiltsite.tasks import noop

    print(f"(c) django.tasks, N={n}: starting the cluster ...", flush=True)
    cpu = CpuWatch(bench.sampler)
    env = bench.env(LONGTASK_WORKERS=str(workers), LONGTASK_LOG_LEVEL=log_level)
    cluster = bench.qcluster(f"tasks-{n}", env)
    try:
        warm = noop.enqueue()
        wait_until(
            lambda: LongTask.objects.filter(pk=warm.id, status=Status.SUCCEEDED).exists(),
            baseline.START_TIMEOUT,
            "a warm-up task",
            cluster,
        )
        delete_finished(LongTask.objects.all())
        print(f"    cluster up; timing {n} enqueue() calls ...", flush=True)
        cpu.mark([cluster.pgid])
        began = time.monotonic()
        for start in range(0, n, batch):
            with transaction.atomic():
                for _ in range(min(batch, n - start)):
                    noop.enqueue()
        enqueued = time.monotonic() - began
        finished = LongTask.objects.filter(status__in=FINISHED_STATUSES)
        what = f"{n} tasks to finish"
        wait_until(lambda: finished.count() >= n, baseline.RUN_TIMEOUT, what, cluster)
        seconds = time.monotonic() - began
        rss = Rss.of(bench.sampler.peaks([cluster.pgid]))
        noisy = cpu.foreign_note(f"tasks N={n}", [cluster.pgid])
        usage = cpu.usage_note(f"tasks N={n}", [cluster.pgid])
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


def verdict(raw: dict[int, Run], tasks: dict[int, Run]) -> list[str]:
    """One line per size: django.tasks through longtask against raw django-q2."""
    lines = []
    for n, run in sorted(tasks.items()):
        line = f"django.tasks N={n}: {run.seconds:.1f}s ({run.rate:.0f}/s), RSS {run.rss}"
        if n in raw:
            ratio = run.seconds / raw[n].seconds
            verdict_ = "MET" if ratio <= 1 else "MISSED"
            line += f"; vs raw {raw[n].seconds:.1f}s: x{ratio:.2f} -> {verdict_} (<= x1.00)"
        lines.append(line)
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        "--tasks-n",
        dest="n",
        type=int,
        action="append",
        help="django.tasks sizes (10000); 0 skips them",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the django.tasks cluster's LONGTASK_LOG_LEVEL (WARNING: no line per task, as raw)",
    )
    baseline.add_raw_args(parser)
    add_scratch_args(parser)
    args = parser.parse_args(argv)
    args.n = sizes(args.n, 10_000)
    args.raw_n = sizes(args.raw_n, 10_000)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    session = Session(args, "bench-tasks-")
    raw: dict[int, Run] = {}
    tasks: dict[int, Run] = {}

    def body(bench: Bench) -> None:
        print(
            f"data dir {bench.data_dir}; {os.cpu_count()} CPUs; {baseline.describe(args)}; "
            f"django.tasks: {args.raw_workers} workers, {args.raw_batch} enqueue() a transaction, "
            f"log level {args.log_level}",
            flush=True,
        )
        for n in args.raw_n:
            raw[n] = baseline.run_raw(bench, n, args)
        for n in args.n:
            tasks[n] = run_tasks(bench, n, args.raw_workers, args.raw_batch, args.log_level)

    session.run(body)
    if raw or tasks:
        lines = table(raw, tasks, "tasks", "tasks/s", services=bool(session.services))
        lines += verdict(raw, tasks)
        print_results(lines, [*raw.values(), *tasks.values()])
    return session.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

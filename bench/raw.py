"""(a) raw: django-q2 alone, the baseline that fanout.py and tasks.py measure in the same run.

A django-q2 cluster of --raw-workers workers on bench/settings_raw.py (tuned for
throughput) runs N no-op tasks that a client process queues with ``async_task``,
--raw-batch calls per transaction; timed from the first enqueue until N success rows
are counted. On ``--services`` the client reuses one broker for all its ``async_task``
calls (one Redis connection, not one per call).

The no-op is ``operator.truth(1)``: a C builtin importable by dotted path in any
process, it does no work, and its result (True) pickles to a few bytes.

Run as ``python -m bench.raw N --batch B [--reuse-broker]`` (from the project root,
with DJANGO_SETTINGS_MODULE=bench.settings_raw) this module is that client process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from bench._lib.processes import BenchError, log_problems, wait_until
from bench._lib.report import Run
from bench._lib.sampling import CpuWatch, Rss
from bench._lib.session import Bench

RAW_FUNC = "operator.truth"
RUN_TIMEOUT = 600.0  # each timed run
START_TIMEOUT = 120.0  # cluster start-up and warm-up


def add_raw_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw-n", type=int, action="append", help="raw sizes (10000); 0 skips the raw baseline"
    )
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


def describe(args: argparse.Namespace) -> str:
    return (
        f"raw: {args.raw_workers} workers "
        f"(bulk {args.raw_bulk}, queue_limit {args.raw_queue_limit}, poll {args.raw_poll})"
    )


def run_raw(bench: Bench, n: int, args: argparse.Namespace) -> Run:
    from django_q.models import Task

    print(f"(a) raw django-q2, N={n}: starting the cluster ...", flush=True)
    Task.objects.all().delete()
    cpu = CpuWatch(bench.sampler)
    env = bench.env(
        DJANGO_SETTINGS_MODULE="bench.settings_raw",
        BENCH_RAW_WORKERS=str(args.raw_workers),
        BENCH_RAW_BULK=str(args.raw_bulk),
        BENCH_RAW_QUEUE_LIMIT=str(args.raw_queue_limit),
        BENCH_RAW_POLL=str(args.raw_poll),
    )
    cluster = bench.qcluster(f"raw-{n}", env)
    client = [sys.executable, "-m", "bench.raw", str(n), "--batch", str(args.raw_batch)]
    if bench.services:
        client.append("--reuse-broker")
    # Watched for its CPU only (its RSS is not a worker's).
    enqueuer = bench.spawn(f"raw-{n}-enqueuer", client, env, talk=True)
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
        cpu.mark([cluster.pgid, enqueuer.pgid])
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
        usage = cpu.usage_note(f"raw N={n}", [cluster.pgid, enqueuer.pgid])
    finally:
        bench.stop(enqueuer)
        bench.stop(cluster)
    notes = [f"raw N={n}: all enqueued after {enqueued:.1f}s"] + ([usage] if usage else [])
    notes += log_problems([cluster.log]) + ([noisy] if noisy else [])
    print(f"    {n} results in {seconds:.1f}s ({n / seconds:.0f}/s)", flush=True)
    Task.objects.all().delete()
    return Run(n, seconds, rss, notes)


def enqueue(n: int, batch: int, reuse_broker: bool = False) -> None:
    """The client: queue a warm-up task, wait for "go" on stdin, queue ``n`` tasks.

    With ``reuse_broker`` every call gets the same broker (on Redis: one connection
    for all of them instead of a new one per call).
    """
    import django
    from django.db import transaction

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The raw baseline's client process.")
    parser.add_argument("n", type=int)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reuse-broker", action="store_true")
    args = parser.parse_args()
    enqueue(args.n, args.batch, args.reuse_broker)

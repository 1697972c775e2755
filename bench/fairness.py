"""Fair share: a small quilt started behind a big one, with and without the fan-out window.

User A starts a big quilt (``--big``, work_ms per square); ``--delay`` seconds later user
B starts a 3x3. Printed for each setting of LONGTASK_FANOUT_WINDOW_JOBS (0: every square
queued at the split, FIFO, the baseline; and the default window): how long B's quilt
took from its start to SUCCEEDED, and A's squares/s. Real qcluster processes (one per
queue, as `make run` has them) on a private data directory.

    .venv/bin/python bench/fairness.py [--big 60 --work-ms 5 --delay 2] [--services]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/fairness.py

from bench._lib.processes import BenchError, wait_until
from bench._lib.session import Bench, Session, add_scratch_args

TIMEOUT = 600.0


def one_run(bench: Bench, args: argparse.Namespace, window: str) -> tuple[float, float]:
    import longtask
    from longtask.api import delete_finished
    from longtask.models import FINISHED_STATUSES, LongTask, Status

    env = {"LONGTASK_FANOUT_WINDOW_JOBS": window} if window else {}
    parents = bench.qcluster(f"parents-{window or 'default'}", bench.env(**env))
    subtasks = bench.qcluster(
        f"subtasks-{window or 'default'}", bench.env(Q_CLUSTER_NAME="longtask-subtasks", **env)
    )
    clusters = [parents, subtasks]
    try:
        warm = longtask.start("quilt", {"rows": 1, "cols": 2, "work_ms": 0})
        done = LongTask.objects.filter(pk=warm.pk, status=Status.SUCCEEDED)
        wait_until(done.exists, TIMEOUT, "a warm-up quilt", *clusters)
        began = time.monotonic()
        side = args.big
        big = longtask.start("quilt", {"rows": side, "cols": side, "work_ms": args.work_ms})
        wait_until(lambda: time.monotonic() - began >= args.delay, TIMEOUT, "the delay")
        small_began = time.monotonic()
        small = longtask.start("quilt", {"rows": 3, "cols": 3, "work_ms": args.work_ms})
        small_row = LongTask.objects.filter(pk=small.pk, status__in=FINISHED_STATUSES)
        wait_until(small_row.exists, TIMEOUT, "the small quilt", *clusters)
        small_seconds = time.monotonic() - small_began
        big_row = LongTask.objects.filter(pk=big.pk, status__in=FINISHED_STATUSES)
        wait_until(big_row.exists, TIMEOUT, "the big quilt", *clusters)
        big_seconds = time.monotonic() - began
        for task in (big, small):
            task.refresh_from_db()
            if task.status != Status.SUCCEEDED:
                raise BenchError(f"{task}: {task.status} {task.error}")
    finally:
        for cluster in reversed(clusters):
            bench.stop(cluster)
    delete_finished(LongTask.objects.all())
    return small_seconds, side * side / big_seconds


def body(args: argparse.Namespace, bench: Bench) -> None:
    rows = []
    for window in ("0", ""):
        label = "no window (FIFO)" if window == "0" else "window (default)"
        print(f"{label}: A starts a {args.big}x{args.big} quilt, B a 3x3 {args.delay}s later ...")
        small, rate = one_run(bench, args, window)
        rows.append((label, small, rate))
        print(f"    B took {small:.1f}s; A ran {rate:.0f} squares/s", flush=True)
    print(f"\n{'':<18} | {'B start->done s':>15} | {'A squares/s':>11}")
    print("-" * 50)
    for label, small, rate in rows:
        print(f"{label:<18} | {small:>15.1f} | {rate:>11.0f}")
    (_, base_small, base_rate), (_, small, rate) = rows
    print(
        f"B: {small:.1f}s vs {base_small:.1f}s without the window (x{small / base_small:.2f}); "
        f"A's throughput x{rate / base_rate:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=60, help="side of A's quilt (<= 200)")
    parser.add_argument("--work-ms", type=int, default=5, help="work per square (ms)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before B starts")
    add_scratch_args(parser)
    args = parser.parse_args()
    session = Session(args, "longtask-bench-fairness-")
    session.run(lambda bench: body(args, bench))
    return session.close()


if __name__ == "__main__":
    sys.exit(main())

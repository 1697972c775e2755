"""The dashboard's numbers at N finished tasks: the rollup against bounded windows.

Run from the project root::

    .venv/bin/python bench/stats.py                   # 100,000 finished tasks, SQLite
    .venv/bin/python bench/stats.py --services        # a scratch PostgreSQL database

It fills a scratch database with N finished tasks, all in the last day (the worst case
for a window) spread over 3 kinds, and the ``TaskMinute`` rows the state machine would
have written for them, then times, as the median of ``--repeat`` runs:

(a) the day's per-minute series read from the rollup (what ``longtask.stats`` does);
(b) the same series by bounded windows: started, succeeded and failed per minute from
    GROUP BYs over ``started_at`` and ``finished_at`` in the last 24 h, with an index on
    each (created for the run: the alternative's own cost); (b') the cheapest window of
    all, one COUNT of the tasks finished in the last 24 h;
(c) a whole ``longtask.stats.snapshot()``;
(d) one count of a transition (``tallies.add``: the upsert of two rows) inside an open
    transaction: what the rollup adds to each counted transition, whose commit is paid
    anyway.

Exit status: 0, 1 if a run failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/stats.py

from bench._lib.session import Bench, Session, add_scratch_args

KINDS = ("report", "quilt", "invoice")


def timed(call: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def fill(n: int) -> None:
    """N finished tasks in the last day, and the rollup rows that would count them."""
    from django.db import connection

    from longtask.models import TOTALS, LongTask, Status, TaskMinute

    now = datetime.datetime.now(datetime.UTC)
    fields = LongTask._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {LongTask._meta.db_table} ({columns}) VALUES ({marks})"  # noqa: S608
    counts: Counter[tuple[datetime.datetime, str, str]] = Counter()
    rows, rng = [], random.Random(16)
    for _ in range(n):
        finished = now - datetime.timedelta(seconds=rng.uniform(0, 86_000))
        started = finished - datetime.timedelta(seconds=rng.uniform(0.1, 30))
        kind = rng.choice(KINDS)
        status = Status.FAILED if rng.random() < 0.1 else Status.SUCCEEDED
        task = LongTask(
            id=uuid.UUID(int=rng.getrandbits(128)),
            kind=kind,
            queue="default",
            status=status,
            created_at=started,
            started_at=started,
            finished_at=finished,
            heartbeat_at=finished,
            attempts=1,
        )
        rows.append([f.get_db_prep_save(getattr(task, f.attname), connection) for f in fields])
        counts[started.replace(second=0, microsecond=0), kind, "started"] += 1
        counts[finished.replace(second=0, microsecond=0), kind, status.lower()] += 1
        counts[TOTALS, kind, "started"] += 1
        counts[TOTALS, kind, status.lower()] += 1
    with connection.cursor() as cursor:
        for first in range(0, n, 10_000):
            cursor.executemany(sql, rows[first : first + 10_000])
    minutes: dict[tuple[datetime.datetime, str], TaskMinute] = {}
    for (minute, kind, event), count in counts.items():
        row = minutes.setdefault((minute, kind), TaskMinute(minute=minute, kind=kind))
        setattr(row, event, count)
    TaskMinute.objects.bulk_create(minutes.values(), batch_size=2000)
    with connection.cursor() as cursor:
        # The windows' own indexes (the rollup needs none on the task table).
        cursor.execute("CREATE INDEX bench_started_at ON longtask_longtask (started_at)")
        cursor.execute("CREATE INDEX bench_finished_at ON longtask_longtask (finished_at)")
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE")
    print(f"    {n:,} finished tasks, {len(minutes):,} rollup rows", flush=True)


def windows() -> list[Any]:
    """(b): the day's series from the task rows themselves."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncMinute
    from django.utils import timezone

    from longtask.models import LongTask, Status

    since = timezone.now() - datetime.timedelta(days=1)
    started = (
        LongTask.objects.filter(started_at__gte=since)
        .annotate(minute=TruncMinute("started_at"))
        .values("minute")
        .annotate(n=Count("pk"))
        .order_by()
    )
    finished = (
        LongTask.objects.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .values("minute")
        .annotate(
            succeeded=Count("pk", filter=Q(status=Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Status.FAILED)),
        )
        .order_by()
    )
    return [*started, *finished]


def day_count() -> int:
    """(b'): the cheapest window: how many finished in the last day, one index range."""
    from django.utils import timezone

    from longtask.models import LongTask

    since = timezone.now() - datetime.timedelta(days=1)
    return LongTask.objects.filter(finished_at__gte=since).count()


def measure(bench: Bench, n: int, repeat: int) -> None:
    from django.db import connection, transaction
    from django.utils import timezone

    from longtask import stats
    from longtask.engine.states import tallies
    from longtask.stats import counts

    print(f"filling {connection.vendor} ...", flush=True)
    fill(n)
    now = timezone.now()

    def one_count() -> float:
        # Inside an open transaction, as in a transition, whose commit is paid anyway:
        # only the statement is timed.
        with transaction.atomic():
            began = time.perf_counter()
            tallies.add("report", timezone.now(), succeeded=1, runs=1, run_seconds=2.0)
            return (time.perf_counter() - began) * 1000

    figures = {
        "(a) series from the rollup": timed(lambda: counts._series(now), repeat),
        "(b) series by bounded windows": timed(windows, repeat),
        "(b') one count over the day's window": timed(day_count, repeat),
        "(c) stats.snapshot()": timed(stats.snapshot, repeat),
        "(d) one counted transition's upsert": statistics.median(
            one_count() for _ in range(repeat * 20)
        ),
    }
    print(f"\n{connection.vendor}, {n:,} finished tasks in the last day (median of {repeat}):")
    for label, ms in figures.items():
        print(f"  {label:38} {ms:8.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="finished tasks")
    parser.add_argument("--repeat", type=int, default=15)
    add_scratch_args(parser)
    # Clear of bench/fanout.py's and bench/tasks.py's scratch places, which may run at once.
    parser.set_defaults(pg_db="longtask_bench_stats", redis_db=12)
    args = parser.parse_args()
    session = Session(args, "bench-stats-")
    session.run(lambda bench: measure(bench, args.n, args.repeat), sample=False)
    return session.close()


if __name__ == "__main__":
    raise SystemExit(main())

"""What a task's pages cost for a fan-out of 10 subtasks and of a million.

For each size, a running fan-out (half its subtasks finished) is written straight to
the database; then the status page, its JSON and a websocket connect's snapshot are
read many times in this process through Django's test client and the live watcher's
snapshot read. Printed: queries per read and p50/p99 latency, the small task's figures
beside the big one's (the baseline measured in the same run).

    .venv/bin/python bench/reads.py [--n 10 --n 1000000] [--reads 200] [--services]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/reads.py

from bench._lib.session import Bench, Session, add_scratch_args, sizes

BATCH = 20_000


def fan_out(n: int) -> Any:
    """A running 'quilt-free' fan-out of ``n`` subtasks, half of them finished."""
    from django.db import connection, transaction
    from django.utils import timezone

    from longtask.models import LongTask, Status, SubTask

    now, done = timezone.now(), n // 2
    parent = LongTask.objects.create(
        kind="bench-reads",
        queue="default",
        status=Status.RUNNING,
        started_at=now,
        split_done=True,
        subtasks_total=n,
        subtasks_done=done,
        subtask_cursor=done,
    )
    table, columns = SubTask._meta.db_table, ("parent_id", "index", "parameters", "status")
    columns += ("attempts", "finish_seq", "result", "error", "created_at", "token", "worker")
    names = ", ".join(connection.ops.quote_name(column) for column in columns)
    marks = ", ".join(["%s"] * len(columns))
    sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608  (our own table)
    pk = parent.pk.hex if connection.vendor == "sqlite" else parent.pk
    for start in range(0, n, BATCH):
        rows = [row(pk, i, i < done, now) for i in range(start, min(n, start + BATCH))]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)
    return parent


def row(parent: Any, index: int, finished: bool, now: Any) -> tuple[Any, ...]:
    outcome = (index + 1, str(index)) if finished else (None, None)
    status = "SUCCEEDED" if finished else "QUEUED"
    return (parent, index, "{}", status, int(finished), *outcome, "", now, "", "")


def ok(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} from {response.request['PATH_INFO']}")
    return response


def measure(read: Any, reads: int) -> tuple[float, float, float]:
    from django.db import connection

    read()  # warm
    executed: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        executed.append(sql)  # (the test client's request_started clears queries_log)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        read()
    times = []
    for _ in range(reads):
        began = time.perf_counter()
        read()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return len(executed), statistics.median(times), p99


def body(args: argparse.Namespace, bench: Bench) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.test import Client

    from longtask.kinds import FanOutKind, register
    from longtask.live import watcher

    @register
    class BenchReads(FanOutKind):
        name = "bench-reads"

    client = Client(HTTP_HOST="127.0.0.1")
    rows = []
    for n in sizes(args.n, 0) or [10, 1_000_000]:
        began = time.perf_counter()
        task = fan_out(n)
        made = time.perf_counter() - began
        reads = {
            "status page": lambda t=task: ok(client.get(f"/tasks/{t.pk}/")),
            "status JSON": lambda t=task: ok(client.get(f"/tasks/{t.pk}.json")),
            "ws snapshot": lambda t=task: watcher.read_snapshot(AnonymousUser(), t.pk),
        }
        for what, read in reads.items():
            rows.append((n, what, *measure(read, args.reads), made))
    print(f"\n{'N':>9} | {'read':<12} | {'queries':>7} | {'p50 ms':>7} | {'p99 ms':>7}")
    print("-" * 56)
    for n, what, queries, p50, p99, _made in rows:
        print(f"{n:>9} | {what:<12} | {queries:>7} | {p50:>7.2f} | {p99:>7.2f}")
    small = {what: (q, p50) for n, what, q, p50, _p99, _m in rows if n == rows[0][0]}
    for n, what, queries, p50, _p99, _made in rows:
        if n != rows[0][0]:
            base_q, base_p50 = small[what]
            flat = queries == base_q and p50 <= 2 * base_p50 + 1  # 1 ms: the timer's noise here
            verdict = "FLAT" if flat else "GROWS"
            ratio = p50 / base_p50
            print(f"{what} at N={n}: queries {queries} vs {base_q}, p50 x{ratio:.2f} -> {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="subtasks (repeatable)")
    parser.add_argument("--reads", type=int, default=200, help="reads per measurement")
    add_scratch_args(parser)
    args = parser.parse_args()
    session = Session(args, "longtask-bench-reads-")
    session.run(lambda bench: body(args, bench), sample=False)
    return session.close()


if __name__ == "__main__":
    sys.exit(main())

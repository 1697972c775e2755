"""The numbers of the operations dashboard, ``/metrics`` and ``manage.py longtask top``.

``snapshot()`` reads them as aggregates, never row by row, in a fixed number of queries
whatever the size of the history (``tests/test_ops.py`` counts them with 10 and with
100,000 finished tasks in the table):

- **queues**: depth (ready, delayed) and the oldest waiting job's age from each
  cluster's broker through the dispatch seam (on the ORM broker, counts over its table
  of waiting jobs; on Redis, LLEN/ZCARD); the limits, and the concurrency leases in use
  from the ``slots:<queue>`` rows; running jobs from the grouped count below.
- **active tasks**: one grouped count of the QUEUED, RUNNING and RETRYING rows by kind,
  status, queue and worker (which also gives the running jobs per queue, and the
  workers by node), and one of the running subtasks by worker and parent kind. Both
  read active rows only (an index on status; the partial indexes of active rows on
  PostgreSQL), so finished rows cost nothing.
- **slowest running** and **stuck** tasks: RUNNING without a heartbeat for
  ``LONGTASK_STALE_AFTER``, QUEUED or RETRYING ``STALE_AFTER`` past their due time (the
  sweeper's bounds): the same partial index, a bounded list each.
- **per minute** (started, succeeded, failed over the last hour and day) and the
  **totals** behind the Prometheus counters: from ``TaskMinute``, a rollup the state
  machine adds to in the transaction of each counted transition.

Why a rollup rather than bounded windows (GROUP BYs over ``started_at``/``finished_at``
in the last 24 h, on indexes of their own): ``bench/stats.py`` with 100,000 finished
tasks, all in the last day (a window's worst case), 3 kinds, on a 2-core machine shared
with other test runs (load average about 5; the range of two runs' medians):

=================================  ===============  ==============================
                                   SQLite (WAL)     PostgreSQL 15 (+ Redis broker)
=================================  ===============  ==============================
(a) the day's series, rollup       15-58 ms         15-31 ms
(b) the same series, windows       3.9-4.0 s        164-406 ms
(b') one COUNT over the day        6 ms             26-53 ms
(c) the whole ``snapshot()``       69-189 ms        56-206 ms
(d) the upsert, per transition     0.3-0.4 ms       1 ms (0.13 ms in the server)
=================================  ===============  ==============================

A window's cost grows with the day's traffic (at 1,000 tasks a minute it reads 1.4
million rows per refresh; SQLite truncates each timestamp in a Python function), while
the rollup reads at most 1,440 rows per kind, whatever the traffic and the history. A
window also cannot give monotonic counters (rows leave it, ``purge`` deletes them) nor
count retries, which leave no row of their own. The rollup's price is on the write side,
(d): one statement per counted transition, in a transaction that commits anyway
(``longtask/engine/states/tallies.py``), on two rows per kind that concurrent transitions
of that kind take in the same order.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Count, Max, Q, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from longtask import dispatch
from longtask.conf import settings
from longtask.dispatch import queues
from longtask.kinds import FanOutKind, registry
from longtask.models import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    RUN_BUCKETS,
    TOTALS,
    LongTask,
    QueueState,
    Status,
    SubTask,
    TaskMinute,
)
from longtask.models.rollup import bucket_field

#: Rows shown in the lists (slowest running, stuck).
LIST_LIMIT = 20
#: The day's series has one point per this many minutes.
DAY_BIN_MINUTES = 15
#: The counters of the per-minute series, and of the totals.
SERIES = ("started", "succeeded", "failed")
TOTAL_FIELDS = (
    "started",
    "succeeded",
    "failed",
    "cancelled",
    "retried",
    "subtasks_done",
    "subtasks_failed",
    "runs",
    "run_seconds",
)


def snapshot(now: datetime.datetime | None = None) -> dict[str, Any]:
    """Every number of the dashboard, as JSON-ready values (times in ISO 8601, ages in s)."""
    now = now or timezone.now()
    stale_before = now - datetime.timedelta(seconds=settings.STALE_AFTER)
    active = _active_groups()
    subtasks = _running_subtask_groups()
    queue_rows = _queues(now, active, subtasks)
    return {
        "at": now.isoformat(),
        "stale_after": settings.STALE_AFTER,
        "queues": queue_rows,
        "active": _active_by_kind(active),
        "workers": _workers(now, active, subtasks),
        "series": _series(now),
        "recent": _recent_by_kind(now),
        "totals": _totals(),
        "slowest": _slowest(now),
        "stuck": _stuck(now, stale_before, {q["name"]: q for q in queue_rows}),
        "stuck_counts": _stuck_counts(stale_before),
        "stuck_subtasks": _stuck_subtasks(stale_before),
    }


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _age(now: datetime.datetime, then: datetime.datetime | None) -> float | None:
    return None if then is None else max(0.0, round((now - then).total_seconds(), 3))


# The grouped counts -------------------------------------------------------------------


def _active_groups() -> list[dict[str, Any]]:
    """Active tasks by status, kind, queue, worker and whether a run holds them: one query.

    ``status IN (active)`` is the predicate of the partial index ``longtask_active_heartbeat``,
    so only active rows are read.
    """
    return _dicts(
        LongTask.objects.filter(status__in=sorted(ACTIVE_STATUSES))
        .values("status", "kind", "queue", "worker")
        .annotate(
            count=Count("pk"),
            held=Count("pk", filter=~Q(token="")),
            last_heartbeat=Max("heartbeat_at", filter=~Q(token="")),
        )
        .order_by()
    )


def _running_subtask_groups() -> list[dict[str, Any]]:
    """Running subtasks by worker and parent kind: one query over the partial index
    ``subtask_running_heartbeat``."""
    return _dicts(
        SubTask.objects.filter(status=Status.RUNNING)
        .values("worker", "parent__kind")
        .annotate(count=Count("pk"), last_heartbeat=Max("heartbeat_at"))
        .order_by()
    )


def _subtask_queue(kind_name: str) -> str:
    kind = registry.find(kind_name)
    if isinstance(kind, FanOutKind):
        return kind.subtask_queue_name()
    return settings.SUBTASK_QUEUE


def _queues(
    now: datetime.datetime, active: list[dict[str, Any]], subtasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    running: dict[str, int] = defaultdict(int)
    waiting_on_subtasks: dict[str, int] = defaultdict(int)
    for group in active:
        if group["status"] == Status.RUNNING:
            running[group["queue"]] += group["held"]
            waiting_on_subtasks[group["queue"]] += group["count"] - group["held"]
    for group in subtasks:
        running[_subtask_queue(group["parent__kind"])] += group["count"]
    configured = [queues.get(name) for name in sorted(settings.QUEUES)]
    in_use = _leases_in_use(now, [q.name for q in configured if q.max_concurrency])
    brokers: dict[str | None, tuple[dispatch.Depth, datetime.datetime | None]] = {}
    rows = []
    for queue in configured:
        if queue.cluster not in brokers:
            brokers[queue.cluster] = (
                dispatch.depth(queue.cluster),
                dispatch.oldest_ready(queue.cluster),
            )
        depth, oldest = brokers[queue.cluster]
        rows.append(
            {
                "name": queue.name,
                "cluster": queue.cluster,
                "ready": depth.ready,
                "delayed": depth.delayed,
                "oldest_ready_at": _iso(oldest),
                "oldest_age_seconds": _age(now, oldest),
                "running": running.get(queue.name, 0),
                "waiting_on_subtasks": waiting_on_subtasks.get(queue.name, 0),
                "rate": queue.rate,
                # The configured burst, or its default: one second's worth, at least 1.
                "burst": (queue.burst or max(1, math.ceil(queue.rate))) if queue.rate else None,
                "max_concurrency": queue.max_concurrency,
                "concurrency_in_use": in_use.get(queue.name) if queue.max_concurrency else None,
            }
        )
    return rows


def _leases_in_use(now: datetime.datetime, names: list[str]) -> dict[str, int]:
    """Unexpired concurrency leases of each queue: one query for all of them."""
    if not names:
        return {}
    moment = now.timestamp()
    keys = {f"slots:{name}": name for name in names}
    found = dict.fromkeys(names, 0)
    for key, leases in QueueState.objects.filter(key__in=list(keys)).values_list("key", "leases"):
        found[keys[key]] = sum(1 for until in (leases or {}).values() if until > moment)
    return found


def _active_by_kind(active: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for group in active:
        counts[group["kind"], group["status"]] += group["count"]
    return [
        {"kind": kind, "status": status, "count": count}
        for (kind, status), count in sorted(counts.items())
    ]


def _workers(
    now: datetime.datetime, active: list[dict[str, Any]], subtasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Nodes that run something now (a worker idle on every queue has no row to show)."""
    nodes: dict[str, dict[str, Any]] = {}

    def node(name: str) -> dict[str, Any]:
        return nodes.setdefault(
            name, {"node": name, "last": None, "tasks": 0, "subtasks": 0, "kinds": {}}
        )

    def seen(entry: dict[str, Any], when: datetime.datetime | None) -> None:
        if when is not None and (entry["last"] is None or when > entry["last"]):
            entry["last"] = when

    for group in active:
        if group["status"] == Status.RUNNING and group["held"]:
            entry = node(group["worker"] or "?")
            entry["tasks"] += group["held"]
            entry["kinds"][group["kind"]] = entry["kinds"].get(group["kind"], 0) + group["held"]
            seen(entry, group["last_heartbeat"])
    for group in subtasks:
        entry = node(group["worker"] or "?")
        entry["subtasks"] += group["count"]
        label = f"{group['parent__kind']} (subtasks)"
        entry["kinds"][label] = entry["kinds"].get(label, 0) + group["count"]
        seen(entry, group["last_heartbeat"])
    rows = []
    for entry in sorted(nodes.values(), key=lambda e: e["node"]):
        age = _age(now, entry["last"])
        rows.append(
            {
                "node": entry["node"],
                "last_heartbeat": _iso(entry["last"]),
                "heartbeat_age_seconds": age,
                "alive": age is not None and age < settings.STALE_AFTER,
                "tasks": entry["tasks"],
                "subtasks": entry["subtasks"],
                "running": dict(sorted(entry["kinds"].items())),
            }
        )
    return rows


# The rollup ---------------------------------------------------------------------------


def _minute(now: datetime.datetime) -> datetime.datetime:
    return now.astimezone(datetime.UTC).replace(second=0, microsecond=0)


def _series(now: datetime.datetime) -> dict[str, Any]:
    """Started, succeeded and failed per minute (last hour) and per 15 minutes (last day).

    One query: the day's minute rows summed over the kinds (at most 1,440 rows).
    """
    current = _minute(now)
    first = current - datetime.timedelta(minutes=24 * 60 - 1)
    rows = (
        TaskMinute.objects.filter(minute__gte=first, minute__lte=current)
        .values("minute")
        .annotate(**{name: Sum(name) for name in SERIES})
        .order_by()
    )
    hour = {name: [0] * 60 for name in SERIES}
    bins = 24 * 60 // DAY_BIN_MINUTES
    day = {name: [0] * bins for name in SERIES}
    for row in _dicts(rows):
        back = int((current - row["minute"]).total_seconds() // 60)  # 0: this minute
        for name in SERIES:
            value = int(row[name] or 0)
            if back < 60:
                hour[name][59 - back] += value
            day[name][bins - 1 - back // DAY_BIN_MINUTES] += value
    return {
        "hour": {"bin_minutes": 1, "ends_at": current.isoformat(), **hour},
        "day": {"bin_minutes": DAY_BIN_MINUTES, "ends_at": current.isoformat(), **day},
    }


def _recent_by_kind(now: datetime.datetime) -> list[dict[str, Any]]:
    """Per kind: started, succeeded and failed in the last hour and day (one query)."""
    current = _minute(now)
    hour_from = current - datetime.timedelta(minutes=59)
    day_from = current - datetime.timedelta(minutes=24 * 60 - 1)
    sums = {}
    for name in SERIES:
        sums[f"{name}_hour"] = Coalesce(Sum(name, filter=Q(minute__gte=hour_from)), 0)
        sums[f"{name}_day"] = Coalesce(Sum(name), 0)
    rows = (
        TaskMinute.objects.filter(minute__gte=day_from, minute__lte=current)
        .values("kind")
        .annotate(**sums)
        .order_by("kind")
    )
    return _dicts(rows)


def _totals() -> list[dict[str, Any]]:
    """Each kind's totals row: the counters since the table began (never pruned)."""
    names = [*TOTAL_FIELDS, *(bucket_field(bound) for bound in RUN_BUCKETS)]
    rows = TaskMinute.objects.filter(minute=TOTALS).order_by("kind").values("kind", *names)
    totals = []
    for row in rows:
        entry = {"kind": row["kind"], **{name: row[name] for name in TOTAL_FIELDS}}
        entry["run_buckets"] = [[bound, row[bucket_field(bound)]] for bound in RUN_BUCKETS]
        totals.append(entry)
    return totals


# Lists ---------------------------------------------------------------------------------


def _task_row(task: LongTask) -> dict[str, Any]:
    return {
        "id": str(task.pk),
        "kind": task.kind,
        "name": task.name,
        "status": task.status,
        "queue": task.queue,
        "worker": task.worker,
        "attempts": task.attempts,
        "started_at": _iso(task.started_at),
        "heartbeat_at": _iso(task.heartbeat_at),
        "due_at": _iso(task.due_at),
    }


_LIST_FIELDS = (
    "pk",
    "kind",
    "name",
    "status",
    "queue",
    "worker",
    "attempts",
    "started_at",
    "heartbeat_at",
    "due_at",
    "created_at",
    "token",
)


def _slowest(now: datetime.datetime) -> list[dict[str, Any]]:
    """The tasks that have been running longest (held by a run now)."""
    rows = (
        LongTask.objects.filter(status=Status.RUNNING)
        .exclude(token="")
        .only(*_LIST_FIELDS)
        .order_by("started_at")[:LIST_LIMIT]
    )
    return [
        {
            **_task_row(task),
            "running_seconds": _age(now, task.started_at),
            "heartbeat_age_seconds": _age(now, task.heartbeat_at),
        }
        for task in rows
    ]


def _stuck(
    now: datetime.datetime, stale_before: datetime.datetime, by_queue: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Runs without a heartbeat for STALE_AFTER; tasks waiting STALE_AFTER past their due time.

    The sweeper (``manage.py longtask_worker``) takes both up by itself within
    SWEEP_INTERVAL; a list that stays here means no sweeper runs, or it cannot act.
    """
    silent = (
        LongTask.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale_before)
        .exclude(token="")
        .only(*_LIST_FIELDS)
        .order_by("heartbeat_at")[:LIST_LIMIT]
    )
    late = (
        LongTask.objects.filter(status__in=CLAIMABLE_STATUSES)
        .filter(Q(due_at__lt=stale_before) | Q(due_at__isnull=True, created_at__lt=stale_before))
        .only(*_LIST_FIELDS)
        .order_by(Coalesce("due_at", "created_at"))[:LIST_LIMIT]
    )
    # Two queries, each on the active rows of its statuses: one with an OR across both
    # made SQLite scan the whole table (42 ms at 100,000 finished tasks).
    rows = [*silent, *late]
    stuck = []
    for task in rows:
        entry = _task_row(task)
        if task.status == Status.RUNNING:
            entry["reason"] = "no heartbeat"
            entry["seconds"] = _age(now, task.heartbeat_at)
        else:
            due = task.due_at or task.created_at
            entry["seconds"] = _age(now, due)
            oldest = by_queue.get(task.queue, {}).get("oldest_ready_at")
            behind = oldest is not None and datetime.datetime.fromisoformat(oldest) <= due
            entry["reason"] = "waiting behind older jobs" if behind else "job lost"
        stuck.append(entry)
    return stuck


def _stuck_counts(stale_before: datetime.datetime) -> dict[str, int]:
    """How many tasks are stuck (the list stops at LIST_LIMIT): two counts of active rows."""
    return {
        "no_heartbeat": LongTask.objects.filter(
            status=Status.RUNNING, heartbeat_at__lt=stale_before
        )
        .exclude(token="")
        .count(),
        "late": LongTask.objects.filter(status__in=CLAIMABLE_STATUSES)
        .filter(Q(due_at__lt=stale_before) | Q(due_at__isnull=True, created_at__lt=stale_before))
        .count(),
    }


def _stuck_subtasks(stale_before: datetime.datetime) -> dict[str, int]:
    """Subtasks quiet or late for STALE_AFTER: two counts over their partial indexes."""
    return {
        "no_heartbeat": SubTask.objects.filter(
            status=Status.RUNNING, heartbeat_at__lt=stale_before
        ).count(),
        "late": SubTask.objects.filter(_waiting_subtask(), due_at__lt=stale_before).count(),
    }


def _waiting_subtask() -> RawSQL:
    """``status IN ('QUEUED', 'RETRYING')`` written out, the predicate of ``subtask_waiting_due``.

    SQLite uses a partial index only for a query that repeats its predicate with the
    same literals: with the statuses as parameters (the ORM's ``status__in``) it read
    every subtask (300,000 finished ones: a full scan; written out: the index).
    """
    column = (
        f"{connection.ops.quote_name(SubTask._meta.db_table)}.{connection.ops.quote_name('status')}"
    )
    statuses = ", ".join(f"'{status}'" for status in sorted(CLAIMABLE_STATUSES))
    # Constants of the model only: no value from outside reaches this SQL.
    return RawSQL(f"{column} IN ({statuses})", [], output_field=BooleanField())  # noqa: S611


def _dicts(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``values()`` as plain dicts (the checker types them as TypedDicts)."""
    return [dict(row) for row in rows]

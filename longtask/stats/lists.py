"""The slowest running tasks and the stuck ones, a bounded list each."""

from __future__ import annotations

import datetime
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from longtask.models import (
    CLAIMABLE_STATUSES,
    LongTask,
    Status,
    SubTask,
)
from longtask.stats.common import LIST_LIMIT, _age, _iso


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
    """``status IN ('QUEUED', 'RETRYING')`` written out, in the predicate of
    ``subtask_dispatched_due`` (whose ``due_at IS NOT NULL`` any ``due_at`` comparison meets).

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

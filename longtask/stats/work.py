"""Queues, workers and the active tasks: grouped counts of the active rows only."""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from typing import Any

from django.db.models import Count, Max, Q

from longtask import dispatch
from longtask.conf import settings
from longtask.dispatch import concurrency, queues
from longtask.kinds import FanOutKind, registry
from longtask.models import (
    ACTIVE_STATUSES,
    LongTask,
    Status,
    SubTask,
)
from longtask.stats.common import _age, _dicts, _iso


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
    ``subtask_running_beat`` (a running subtask always has a heartbeat: its claim sets it)."""
    return _dicts(
        SubTask.objects.filter(status=Status.RUNNING, heartbeat_at__isnull=False)
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
    """Unexpired concurrency leases of each queue (in Redis or the database): one round trip."""
    return concurrency.in_use_many(names, now.timestamp()) if names else {}


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

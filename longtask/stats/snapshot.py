"""The whole snapshot: every part read in one call."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from longtask.conf import settings
from longtask.stats.counts import _recent_by_kind, _series, _totals
from longtask.stats.lists import _slowest, _stuck, _stuck_counts, _stuck_subtasks
from longtask.stats.work import (
    _active_by_kind,
    _active_groups,
    _queues,
    _running_subtask_groups,
    _workers,
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

"""Counts per minute and since the start, from the TaskMinute rollup."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

from longtask.models import (
    RUN_BUCKETS,
    TOTALS,
    TaskMinute,
)
from longtask.models.rollup import bucket_field
from longtask.stats.common import _dicts

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

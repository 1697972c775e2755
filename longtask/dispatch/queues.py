"""Named queues: which django-q2 cluster runs a job, how fast and how many at once.

``LONGTASK_QUEUES`` maps a queue name to its options::

    LONGTASK_QUEUES = {
        "default": {"cluster": None},               # Q_CLUSTER's own cluster
        "subtasks": {"cluster": "longtask-subtasks", "rate": "20/s", "burst": 20},
        "mail": {"cluster": "longtask-mail", "max_concurrency": 2},
    }

- ``cluster``: the django-q2 cluster serving the queue (a key of Q_CLUSTER's
  ALT_CLUSTERS, run by ``manage.py longtask_worker --queue NAME``).
- ``rate`` ("N/s", "N/m", "N/h") and ``burst``: at most ``burst`` jobs start in any
  ``burst / rate`` seconds, across every worker on every machine (the ``limits``
  library's moving window, in Redis or in the database). For a fan-out, each
  subtask counts. ``burst`` defaults to one second's worth (at least 1).
- ``max_concurrency``: at most this many of the queue's jobs (a task's run, or a
  chunk of subtasks) run at once across all machines (leases in the database,
  which expire after LONGTASK_STALE_AFTER if their worker dies).

A job over a limit waits in its worker for up to LONGTASK_LIMIT_WAIT seconds; a
longer wait puts it back on the broker, delayed until the limit should allow it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings

from longtask.conf import settings
from longtask.exceptions import LongTaskError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class UnknownQueue(LongTaskError, ValueError):
    """A queue name that LONGTASK_QUEUES does not define."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown queue {name!r} (see LONGTASK_QUEUES)")
        self.name = name


def parse_rate(text: str | float | int) -> float:
    """Jobs per second from "20/s", "90/m", "100/h" or a number; ValueError otherwise."""
    if isinstance(text, (int, float)):
        rate = float(text)
    else:
        match = _RATE.match(str(text))
        if not match:
            raise ValueError(f"bad rate {text!r}: write it as N/s, N/m or N/h")
        rate = float(match[1]) / _PER[match[2]]
    if not rate > 0:
        raise ValueError(f"bad rate {text!r}: it must be above zero")
    return rate


@dataclass(frozen=True)
class Queue:
    name: str
    #: django-q2 cluster name (Q_CLUSTER's own name for the default queue).
    cluster: str | None
    #: Jobs per second, or None for no rate limit.
    rate: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """(amount, seconds) of the moving window that enforces rate and burst."""
        if self.rate is None:
            return None
        # The window is whole seconds (limits' granularity): a burst under one second's
        # worth is raised to it.
        burst = self.burst or math.ceil(self.rate)
        seconds = max(1, round(burst / self.rate))
        return max(1, round(self.rate * seconds)), seconds


def get(name: str | None) -> Queue:
    """The queue called ``name`` (None: the default queue); UnknownQueue if undefined."""
    name = name or settings.DEFAULT_QUEUE
    options = settings.QUEUES.get(name)
    if options is None:
        raise UnknownQueue(name)
    return Queue(
        name=name,
        cluster=options.get("cluster") or default_cluster(),
        rate=_optional(options, "rate", parse_rate),
        burst=_optional(options, "burst", int),
        max_concurrency=_optional(options, "max_concurrency", int),
    )


def _optional[T](options: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T | None:
    value = options.get(key)
    return None if value in (None, "") else parse(value)


def default_cluster() -> str:
    """Q_CLUSTER's own cluster, by name.

    Not None: django-q2 reads None as "this process's cluster", which in a worker of
    another queue (Q_CLUSTER_NAME set) is that queue's cluster.
    """
    return str(getattr(django_settings, "Q_CLUSTER", {}).get("name", "default"))


def any_limited() -> bool:
    """Say whether some queue has a rate limit or a concurrency limit."""
    return any(
        options.get(key) not in (None, "")
        for options in settings.QUEUES.values()
        for key in ("rate", "max_concurrency")
    )


def get_or_default(name: str | None) -> Queue:
    """The queue ``name``, or the default queue if it is no longer defined."""
    try:
        return get(name)
    except UnknownQueue:
        return get(None)


def cluster_for(name: str | None) -> str | None:
    """The django-q2 cluster of queue ``name``; an unknown name falls back to the default."""
    return get_or_default(name).cluster

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
import secrets
import time
from dataclasses import dataclass
from functools import cache
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


def _optional(options: dict[str, Any], key: str, parse: Any) -> Any:
    value = options.get(key)
    return None if value in (None, "") else parse(value)


def default_cluster() -> str:
    """Q_CLUSTER's own cluster, by name.

    Not None: django-q2 reads None as "this process's cluster", which in a worker of
    another queue (Q_CLUSTER_NAME set) is that queue's cluster.
    """
    return str(getattr(django_settings, "Q_CLUSTER", {}).get("name", "default"))


def get_or_default(name: str | None) -> Queue:
    """The queue ``name``, or the default queue if it is no longer defined."""
    try:
        return get(name)
    except UnknownQueue:
        return get(None)


def cluster_for(name: str | None) -> str | None:
    """The django-q2 cluster of queue ``name``; an unknown name falls back to the default."""
    return get_or_default(name).cluster


# Rate limits ---------------------------------------------------------------------


@cache
def _limiter() -> Any:
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    uri = settings.RATE_LIMIT_STORAGE
    return MovingWindowRateLimiter(storage_from_string(uri) if uri else database_storage())


def _item(queue: Queue) -> Any:
    from limits import RateLimitItemPerSecond

    amount, seconds = queue.window or (1, 1)
    return RateLimitItemPerSecond(amount, seconds, namespace="longtask")


def take_token(queue: Queue) -> float:
    """Take one start from ``queue``'s rate limit: 0.0 if taken, else seconds until one frees.

    Nothing is taken when the answer is not 0. A queue without a rate always answers 0.
    """
    if queue.rate is None:
        return 0.0
    limiter, item = _limiter(), _item(queue)
    if limiter.hit(item, queue.name):
        return 0.0
    reset, _remaining = limiter.get_window_stats(item, queue.name)
    return max(0.01, reset - time.time())


def wait_for_token(queue: Queue, budget: float, stop: Any = None) -> float:
    """Take a start, waiting for it up to ``budget`` seconds; 0.0 if taken, else the wait left.

    ``stop`` (a threading.Event) cuts the wait short. A storage that does not answer
    (Redis restarting) is waited for like a full window.
    """
    deadline = time.monotonic() + budget
    while True:
        try:
            wait = take_token(queue)
        except Exception:  # the limiter's storage is down: try again shortly
            import logging

            logging.getLogger("longtask").warning("rate limiter storage failed", exc_info=True)
            wait = 1.0
        if not wait:
            return 0.0
        left = deadline - time.monotonic()
        if wait > left:
            return wait
        if stop is not None:
            if stop.wait(wait):
                return wait
        else:
            time.sleep(wait)


@cache
def _database_storage_class() -> type:
    from django.db import DatabaseError, transaction
    from limits.storage import MovingWindowSupport, Storage

    from longtask.queuestate import QueueState

    class DatabaseStorage(Storage, MovingWindowSupport):
        """A ``limits`` moving-window storage in the database (QueueState rows).

        For sites without Redis: each hit locks its key's row for one short
        transaction, so the window is exact across processes and machines. Only the
        moving window is supported (that is the strategy longtask uses).
        """

        STORAGE_SCHEME = ["longtask-db"]

        @property
        def base_exceptions(self) -> type[Exception]:
            return DatabaseError

        def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
            now = time.time()
            with transaction.atomic():
                QueueState.objects.get_or_create(key=key)
                row = QueueState.objects.select_for_update().get(key=key)
                hits = [at for at in row.hits if at > now - expiry]
                admitted = len(hits) + amount <= limit
                if admitted:
                    hits.extend([now] * amount)
                if admitted or len(hits) != len(row.hits):
                    QueueState.objects.filter(key=key).update(hits=hits)
                return admitted

        def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
            now = time.time()
            row = QueueState.objects.filter(key=key).values_list("hits", flat=True).first()
            hits = sorted(at for at in row or [] if at > now - expiry)[-limit:]
            return (hits[0] if hits else now), len(hits)

        def incr(self, key: str, expiry: int, amount: int = 1) -> int:
            raise NotImplementedError("longtask's database storage has only the moving window")

        def get(self, key: str) -> int:
            return self.get_moving_window(key, 1 << 30, 1 << 30)[1]

        def get_expiry(self, key: str) -> float:
            raise NotImplementedError("longtask's database storage has only the moving window")

        def check(self) -> bool:
            return True

        def reset(self) -> int | None:
            return QueueState.objects.exclude(key__startswith="slots:").delete()[0]

        def clear(self, key: str) -> None:
            QueueState.objects.filter(key=key).delete()

    return DatabaseStorage


def database_storage() -> Any:
    """A new ``limits`` storage keeping moving windows in the database."""
    return _database_storage_class()()


# Concurrency -----------------------------------------------------------------------


def acquire_slot(queue: Queue) -> str | None:
    """Take one of ``queue``'s max_concurrency slots: a lease token, or None if all are taken.

    A queue without max_concurrency gives "" (nothing to release). A lease lasts
    LONGTASK_STALE_AFTER seconds unless ``renew_slot`` extends it, so the slot of a
    worker that died comes free by itself.
    """
    if queue.max_concurrency is None:
        return ""
    from django.db import transaction

    from longtask.queuestate import QueueState

    key, now = f"slots:{queue.name}", time.time()
    with transaction.atomic():
        QueueState.objects.get_or_create(key=key)
        row = QueueState.objects.select_for_update().get(key=key)
        leases = {token: until for token, until in row.leases.items() if until > now}
        if len(leases) >= queue.max_concurrency:
            return None
        token = secrets.token_hex(8)
        leases[token] = now + settings.STALE_AFTER
        QueueState.objects.filter(key=key).update(leases=leases)
    return token


def renew_slot(queue: Queue, token: str) -> None:
    """Extend a lease (called with each heartbeat)."""
    _change_slot(queue, token, time.time() + settings.STALE_AFTER)


def release_slot(queue: Queue, token: str) -> None:
    _change_slot(queue, token, None)


def _change_slot(queue: Queue, token: str, until: float | None) -> None:
    if not token:
        return
    from django.db import transaction

    from longtask.queuestate import QueueState

    key = f"slots:{queue.name}"
    with transaction.atomic():
        row = QueueState.objects.select_for_update().filter(key=key).first()
        if row is None or token not in row.leases:
            return
        leases = dict(row.leases)
        if until is None:
            del leases[token]
        else:
            leases[token] = until
        QueueState.objects.filter(key=key).update(leases=leases)


def acquire_slot_waiting(queue: Queue, budget: float, stop: Any = None) -> str | None:
    """``acquire_slot``, polling for up to ``budget`` seconds; None if still full."""
    deadline = time.monotonic() + budget
    while (token := acquire_slot(queue)) is None:
        pause = min(0.2, deadline - time.monotonic())
        if pause <= 0:
            return None
        if stop is not None:
            if stop.wait(pause):
                return None
        else:
            time.sleep(pause)
    return token

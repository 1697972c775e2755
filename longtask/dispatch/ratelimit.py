"""Rate limits of the queues: a moving window per queue, in Redis or in the database."""

from __future__ import annotations

import logging
import threading
import time
from functools import cache

from django.db import DatabaseError, transaction
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from longtask.conf import settings
from longtask.dispatch.queues import Queue
from longtask.models import QueueState

logger = logging.getLogger("longtask")


def pause(seconds: float, stop: threading.Event | None = None) -> bool:
    """Wait ``seconds``, cut short by ``stop`` (a threading.Event); True if stopped."""
    if stop is not None:
        return bool(stop.wait(seconds))
    time.sleep(seconds)
    return False


@cache
def _limiter() -> MovingWindowRateLimiter:
    uri = settings.RATE_LIMIT_STORAGE
    return MovingWindowRateLimiter(storage_from_string(uri) if uri else database_storage())


def _item(queue: Queue) -> RateLimitItem:
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


def wait_for_token(queue: Queue, budget: float, stop: threading.Event | None = None) -> float:
    """Take a start, waiting for it up to ``budget`` seconds; 0.0 if taken, else the wait left.

    ``stop`` (a threading.Event) cuts the wait short. A storage that does not answer
    (Redis restarting) is waited for like a full window.
    """
    deadline = time.monotonic() + budget
    while True:
        try:
            wait = take_token(queue)
        except Exception:  # the limiter's storage is down: try again shortly
            logger.warning("rate limiter storage failed", exc_info=True)
            wait = 1.0
        if not wait:
            return 0.0
        left = deadline - time.monotonic()
        if wait > left:
            return wait
        if pause(wait, stop):
            return wait


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


def database_storage() -> DatabaseStorage:
    """A new ``limits`` storage keeping moving windows in the database."""
    return DatabaseStorage()

"""Concurrency limits of the queues: leases, in Redis when there is one, else in the database.

A lease lasts LONGTASK_STALE_AFTER seconds unless renewed, so the slot of a worker
that died comes free by itself. With ``LONGTASK_RATE_LIMIT_STORAGE`` a Redis URL, the
leases of a queue are one sorted set (token -> expiry) changed by atomic scripts, so no
database row is locked by every acquire, renew and release; otherwise they are one
``QueueState`` row per queue, locked while it changes.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time

import redis
from django.db import transaction

from longtask.conf import settings
from longtask.dispatch.queues import Queue
from longtask.dispatch.ratelimit import pause
from longtask.models import QueueState

# KEYS[1]: the queue's lease set. ARGV: now, the new lease's expiry, max, token.
ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


@functools.cache
def _redis(uri: str) -> redis.Redis:
    return redis.Redis.from_url(uri)


def _store() -> redis.Redis | None:
    uri = settings.RATE_LIMIT_STORAGE
    return _redis(uri) if uri and uri.startswith(("redis://", "rediss://", "unix://")) else None


def _key(queue: Queue) -> str:
    return f"slots:{queue.name}"


def acquire_slot(queue: Queue) -> str | None:
    """Take one of ``queue``'s max_concurrency slots: a lease token, or None if all are taken.

    A queue without max_concurrency gives "" (nothing to release). A lease lasts
    LONGTASK_STALE_AFTER seconds unless ``renew_slot`` extends it, so the slot of a
    worker that died comes free by itself.
    """
    if queue.max_concurrency is None:
        return ""
    key, now, token = _key(queue), time.time(), secrets.token_hex(8)
    until = now + settings.STALE_AFTER
    if (store := _store()) is not None:
        taken = store.eval(ACQUIRE, 1, f"longtask:{key}", now, until, queue.max_concurrency, token)
        return token if taken else None
    with transaction.atomic():
        QueueState.objects.get_or_create(key=key)
        row = QueueState.objects.select_for_update().get(key=key)
        leases = {token: until for token, until in row.leases.items() if until > now}
        if len(leases) >= queue.max_concurrency:
            return None
        leases[token] = until
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
    key = _key(queue)
    if (store := _store()) is not None:
        if until is None:
            store.zrem(f"longtask:{key}", token)
        else:  # only a lease still held (XX): an expired one is not brought back
            store.zadd(f"longtask:{key}", {token: until}, xx=True)
        return
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


def acquire_slot_waiting(
    queue: Queue, budget: float, stop: threading.Event | None = None
) -> str | None:
    """``acquire_slot``, polling for up to ``budget`` seconds; None if still full."""
    deadline = time.monotonic() + budget
    while (token := acquire_slot(queue)) is None:
        wait = min(0.2, deadline - time.monotonic())
        if wait <= 0:
            return None
        if pause(wait, stop):
            return None
    return token


def in_use(queue: Queue) -> int:
    """How many of ``queue``'s slots are leased now (for the operators' views)."""
    now = time.time()
    if (store := _store()) is not None:
        return int(store.zcount(f"longtask:{_key(queue)}", f"({now}", "+inf"))
    row = QueueState.objects.filter(key=_key(queue)).values_list("leases", flat=True).first()
    return sum(1 for until in (row or {}).values() if until > now)


def in_use_many(names: list[str], now: float | None = None) -> dict[str, int]:
    """``in_use`` of several queues by name: one round trip (a Redis pipeline, or one query)."""
    now = time.time() if now is None else now
    if (store := _store()) is not None:
        pipe = store.pipeline(transaction=False)
        for name in names:
            pipe.zcount(f"longtask:slots:{name}", f"({now}", "+inf")
        return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}
    found = dict.fromkeys(names, 0)
    keys = {f"slots:{name}": name for name in names}
    for key, leases in QueueState.objects.filter(key__in=list(keys)).values_list("key", "leases"):
        found[keys[key]] = sum(1 for until in (leases or {}).values() if until > now)
    return found

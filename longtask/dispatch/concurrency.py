"""Concurrency limits of the queues: leases in one database row per queue.

A lease lasts LONGTASK_STALE_AFTER seconds unless renewed, so the slot of a worker
that died comes free by itself.
"""

from __future__ import annotations

import secrets
import threading
import time

from django.db import transaction

from longtask.conf import settings
from longtask.dispatch.queues import Queue
from longtask.dispatch.ratelimit import pause
from longtask.models import QueueState


def acquire_slot(queue: Queue) -> str | None:
    """Take one of ``queue``'s max_concurrency slots: a lease token, or None if all are taken.

    A queue without max_concurrency gives "" (nothing to release). A lease lasts
    LONGTASK_STALE_AFTER seconds unless ``renew_slot`` extends it, so the slot of a
    worker that died comes free by itself.
    """
    if queue.max_concurrency is None:
        return ""
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

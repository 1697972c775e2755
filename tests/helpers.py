"""Shared test helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for[T](condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def drain_queue(limit: int = 100_000) -> int:
    """Run every job on django-q2's ORM queue in this process, like a worker would."""
    from django.utils.module_loading import import_string
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    ran = 0
    while ran < limit:
        row = OrmQ.objects.order_by("id").first()
        if row is None:
            return ran
        package = SignedPackage.loads(row.payload)
        row.delete()
        import_string(package["func"])(*package["args"], **package["kwargs"])
        ran += 1
    raise AssertionError(f"queue not empty after {limit} jobs")

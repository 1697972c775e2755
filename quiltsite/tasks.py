"""The demo's django.tasks functions: run by longtask's workers through LongTaskBackend.

from quiltsite.tasks import count_to
result = count_to.enqueue(50, step_ms=100)   # /tasks/<result.id>/ shows its progress
"""

from __future__ import annotations

import time

from django.tasks import task

import longtask
from longtask.kinds import RetryPolicy


@task()
def noop() -> None:
    """Do nothing (the benchmark's unit of work)."""


@task(retry=RetryPolicy(max_attempts=3, min_backoff=1))
def count_to(n: int, step_ms: int = 100) -> dict[str, int]:
    """Count to ``n``, one step every ``step_ms`` milliseconds, reporting progress."""
    for i in range(n):
        if longtask.cancelled():
            raise longtask.Cancelled("asked to stop")
        time.sleep(step_ms / 1000)  # the demo's stand-in for real work
        longtask.set_progress(i + 1, n, f"counted {i + 1} of {n}")
    return {"counted": n}

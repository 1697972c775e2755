"""django.tasks functions for the backend's tests, after the shape of Django's own sample tasks."""

from __future__ import annotations

import os
import time
from typing import Any

from django.tasks import TaskContext, task

import longtask
from longtask.kinds import RetryPolicy

#: Attempts of ``flaky_task`` that still fail, and calls seen, per test.
FLAKY: dict[str, int] = {"fail": 0, "calls": 0}


@task()
def noop_task(*args: Any, **kwargs: Any) -> None:
    return None


@task
def noop_task_from_bare_decorator(*args: Any, **kwargs: Any) -> None:
    return None


@task(dedup=True)
def dedup_echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task()
async def noop_task_async(*args: Any, **kwargs: Any) -> None:
    return None


@task()
async def add_async(a: int, b: int) -> int:
    return a + b


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task()
def failing_task_value_error() -> None:
    raise ValueError("This task failed due to ValueError")


@task()
def failing_task_system_exit() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task()
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task()
def exit_task() -> None:
    exit(1)


@task()
def not_json_return() -> object:
    return object()


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def check_context(context: TaskContext, attempt: int) -> int:
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt
    return context.attempt


@task()
def with_progress(steps: int) -> int:
    for step in range(steps):
        longtask.set_progress(step + 1, steps, f"step {step + 1}")
    return steps


@task(retry=RetryPolicy(max_attempts=3, min_backoff=0.01, jitter=0))
def flaky_task() -> int:
    FLAKY["calls"] += 1
    if FLAKY["fail"] > 0:
        FLAKY["fail"] -= 1
        raise ConnectionError("not yet")
    return FLAKY["calls"]


@task(retry=RetryPolicy(max_attempts=3, min_backoff=0.01, jitter=0), fatal_exceptions=(KeyError,))
def fatal_task() -> None:
    raise KeyError("no such thing")


@task(takes_context=True)
def cancel_self(context: TaskContext) -> None:
    from longtask import api
    from longtask.models import LongTask

    api.cancel(LongTask.objects.get(pk=context.task_result.id))
    if longtask.cancelled():  # a cooperative stop
        raise longtask.Cancelled("asked to stop")


@task(retry=RetryPolicy(max_attempts=2, min_backoff=0.1, jitter=0))
def wait_for_file(path: str) -> str:
    """Report progress until ``path`` exists (the test creates it); return its text."""
    beats = 0
    while not os.path.exists(path):
        beats += 1
        longtask.set_progress(beats, None, "waiting for the file")
        time.sleep(0.05)  # polling a file the test writes, not synchronisation of the test
    with open(path) as handle:
        return handle.read()


@task(time_limit=7)
def over_time() -> None:
    """Act out django-q2 stopping a job at its time limit (it raises this in the worker)."""
    from django_q.exceptions import TimeoutException

    raise TimeoutException("timed out")

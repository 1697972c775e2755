"""Entry points that django-q2 workers import by dotted path.

Only task ids cross the broker; everything else is read from the database. Keep
this module thin: the logic lives in ``longtask.runner`` and is tested without a cluster.
"""

from __future__ import annotations

from longtask import fanout, runner


def run_task(task_id: str) -> None:
    """Run one LongTask."""
    from django_q.exceptions import TimeoutException

    try:
        runner.run(task_id)
    except TimeoutException:
        # django-q2 stopped the run at the kind's time limit: a failed attempt. Re-raise
        # so that django-q2 replaces the worker process, as it does after a timeout.
        runner.time_limit_exceeded(task_id)
        raise


def run_chunk(parent_id: str, first: int, last: int, indexes: list[int] | None = None) -> None:
    """Run one chunk of a fan-out task's subtasks."""
    fanout.run_chunk(parent_id, first, last, indexes)

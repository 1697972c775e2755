"""Entry points that django-q2 workers import by dotted path.

Only task ids cross the broker; everything else is read from the database. Keep
this module thin: the logic lives in ``longtask.engine`` and is tested without a cluster.
"""

from __future__ import annotations

from longtask.engine import batch, chunks, run


def run_task(task_id: str) -> None:
    """Run one LongTask (its work, a fan-out's split, or its gather)."""
    run.run(task_id)


def run_tasks(task_ids: list[str]) -> None:
    """Run several quick tasks queued by one transaction, one after another."""
    batch.run_tasks(task_ids)


def run_chunk(parent_id: str, first: int, last: int, indexes: list[int] | None = None) -> None:
    """Run one chunk of a fan-out task's subtasks."""
    chunks.run_chunk(parent_id, first, last, indexes)

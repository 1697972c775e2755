"""Entry points that django-q2 workers import by dotted path.

Only task ids cross the broker; everything else is read from the database. Keep
this module thin: the logic lives in ``longtask.runner`` and is tested without a cluster.
"""

from __future__ import annotations

from longtask import runner


def run_task(task_id: str) -> None:
    """Run one LongTask."""
    runner.run(task_id)

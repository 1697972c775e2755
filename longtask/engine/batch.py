"""A job of several quick tasks: run one after another, the rest handed off when slow.

Quick tasks queued by one transaction share a job (``enqueue.task_job``): django-q2's
own work per job (the pusher's take, the signed package, the worker's loop, the
monitor) cost about as much as a no-op task's whole run. Each task is still claimed,
run and finished on its own, as ``run.run`` does for a job of one. A kind is quick
when no run of it has taken over a second; should one now, the tasks after it wait for
it once: a batch that has run BATCH_BUDGET seconds hands its remaining tasks to jobs of
their own, which any worker takes.
"""

from __future__ import annotations

import contextlib
import logging
import time

from longtask.engine import enqueue, run, states
from longtask.models import LongTask

logger = logging.getLogger("longtask")

#: Seconds a batch runs tasks before it hands the rest to jobs of their own.
BATCH_BUDGET = 1.0


def run_tasks(task_ids: list[str]) -> None:
    """Run the batch's tasks in order; hand the rest off past BATCH_BUDGET or on an error."""
    began = time.monotonic()
    for position, task_id in enumerate(task_ids):
        if position and time.monotonic() - began > BATCH_BUDGET:
            hand_off(task_ids[position:])
            return
        try:
            run.run(task_id)
        except BaseException:  # the worker is going away (a time limit, a database error)
            with contextlib.suppress(Exception):
                hand_off(task_ids[position + 1 :])
            raise


def hand_off(task_ids: list[str]) -> None:
    """Queue a job of its own for each of these tasks still waiting to run."""
    waiting = LongTask.objects.filter(pk__in=task_ids, status__in=states.CLAIMABLE).only(
        "pk", "kind", "queue"
    )
    for task in waiting:
        enqueue.task_job(task)
    logger.info("handed %s tasks of a batch to jobs of their own", len(task_ids))

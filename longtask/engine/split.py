"""A fan-out's split: save its subtasks in batches and queue their chunks, resumably."""

from __future__ import annotations

import logging

from django.db import connection, transaction

from longtask.conf import settings
from longtask.engine import states, window
from longtask.engine.values import to_json
from longtask.kinds import FanOutKind
from longtask.models import LongTask
from longtask.serialize import JSONObject

logger = logging.getLogger("longtask")

#: SPLIT_BATCH when not set, by database (see longtask.conf).
BATCH_SIZES = {"postgresql": 5000}
DEFAULT_BATCH_SIZE = 1000


def batch_size() -> int:
    """Subtasks saved per transaction: SPLIT_BATCH, else what suits the database."""
    size = settings.SPLIT_BATCH
    return size if size is not None else BATCH_SIZES.get(connection.vendor, DEFAULT_BATCH_SIZE)


def split(run: states.Run, task: LongTask, kind: FanOutKind) -> None:
    """Create and queue the subtasks of ``task``; resumable after a crash, a cancel or a failure.

    Rows saved by an earlier attempt are kept; those still waiting are queued again
    first (their jobs may be gone), then the split goes on from where it stopped.
    """
    already = task.subtasks_total
    if already:
        with transaction.atomic():
            if not states.holds(run):
                return
            window.redispatch_below_line(task)
            window.refill(task, kind)
    if not task.split_done:
        size = batch_size()
        batch: list[JSONObject] = []
        for position, params in enumerate(kind.split(task.parameters)):
            if position < already:
                continue
            batch.append(to_json(params))
            if len(batch) >= size:
                if not states.save_split_batch(run, task, kind, batch):
                    return
                batch = []
        if batch and not states.save_split_batch(run, task, kind, batch):
            return
    if states.finish_split(run, task):
        logger.info("LongTask id=%s split into %s subtasks", task.pk, task.subtasks_total)

"""Iterative tasks (Melange's pattern): walk a queryset in batches with a keyset cursor.

Each batch is its own job: it processes up to ``batch_size`` rows after the cursor
and, in the same transaction, moves the cursor past them (fenced by the run's token);
then it queues the next batch. No run is long, and a crash loses at most the batch in
flight, which is done again from the last committed cursor.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import transaction
from django.db.models import Model

from longtask.engine import states
from longtask.kinds import IterativeKind
from longtask.models import LongTask
from longtask.serialize import JSON


class BatchTaken(Exception):
    """The run no longer holds its task: this batch is rolled back."""


def run_batch(run: states.Run, task: LongTask, kind: IterativeKind[Any]) -> tuple[bool, JSON]:
    """Process the next batch; return (finished, result)."""
    params = task.parameters
    rows_qs = kind.queryset(params).order_by(kind.cursor_field)
    if task.rows_total is None:
        task.rows_total = rows_qs.count()
        LongTask.objects.filter(pk=task.pk, token=run.token).update(rows_total=task.rows_total)
    if task.cursor is not None:
        rows_qs = rows_qs.filter(**{f"{kind.cursor_field}__gt": task.cursor})
    fetched = list(rows_qs[: kind.batch_size + 1])
    more = len(fetched) > kind.batch_size
    batch = fetched[: kind.batch_size]
    began = time.monotonic()
    step = max(1, kind.batch_size // 10)
    done = 0
    with transaction.atomic():
        for start in range(0, len(batch), step):
            if kind.soft_deadline and done and time.monotonic() - began > kind.soft_deadline:
                more = True  # the rest of this batch goes to the next job
                break
            kind.process(task, batch[start : start + step], params)
            done += len(batch[start : start + step])
        if done:
            cursor = _key(batch[done - 1], kind.cursor_field)
            if not states.move_cursor(run, cursor, task.rows_done + done):
                raise BatchTaken(f"batch after {task.cursor!r}: the run lost its task")
            task.cursor, task.rows_done = cursor, task.rows_done + done
    total = max(task.rows_total or 0, task.rows_done)
    task.progress(task.rows_done, total, f"{task.rows_done} of {total} rows done")
    if more:
        return False, None
    return True, kind.finish(task, params)


def _key(row: Model, field: str) -> int | str | float:
    value = row.pk if field == "pk" else getattr(row, field)
    return value if isinstance(value, int | str | float) else str(value)

"""Iterative tasks (Melange's pattern): walk a queryset in batches with a keyset cursor.

Each batch is its own job: it processes up to ``batch_size`` rows after the cursor
and, in the same transaction, moves the cursor past them; then it queues the next
batch. No run is long, and a crash loses at most the batch in flight, which is
done again from the last committed cursor.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from django.db import transaction
from django.db.models import QuerySet

from longtask.kinds import Kind
from longtask.models import LongTask, Status

if TYPE_CHECKING:
    from collections.abc import Sequence


class BatchTaken(Exception):
    """Another run already committed this batch (rolls this one back)."""


class IterativeKind(Kind):
    """A kind that processes every row of a queryset, one batch per job."""

    #: Rows per batch (the fetch asks for one more, to know whether more remain).
    batch_size: ClassVar[int] = 1000
    #: Stop a batch early after this many seconds and continue in the next job.
    soft_deadline: ClassVar[float | None] = None
    #: A unique, ordered field to walk by (the keyset cursor).
    cursor_field: ClassVar[str] = "pk"

    def queryset(self, params: dict[str, Any]) -> QuerySet:
        """Return the rows to walk (ordering is applied by the walker)."""
        raise NotImplementedError

    def process(self, task: LongTask, rows: Sequence[Any], params: dict[str, Any]) -> None:
        """Process some rows; runs inside the transaction that moves the cursor."""
        raise NotImplementedError

    def finish(self, task: LongTask, params: dict[str, Any]) -> Any:
        """Return the task's result once every row is done."""
        return {"rows": task.rows_done}

    def run(self, task: LongTask, params: dict[str, Any]) -> Any:
        raise TypeError("an iterative kind runs batch by batch, not through run")


def run_batch(task: LongTask, kind: IterativeKind) -> tuple[bool, Any]:
    """Process the next batch; return (finished, result)."""
    params = task.parameters
    rows_qs = kind.queryset(params).order_by(kind.cursor_field)
    if task.rows_total is None:
        task.rows_total = rows_qs.count()
        LongTask.objects.filter(pk=task.pk).update(rows_total=task.rows_total)
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
            # Only the run that started from this cursor, on this attempt, may move it.
            if not LongTask.objects.filter(
                pk=task.pk, status=Status.RUNNING, rows_done=task.rows_done, attempts=task.attempts
            ).update(cursor=cursor, rows_done=task.rows_done + done):
                raise BatchTaken(f"batch after {task.cursor!r} was already done")
            task.cursor, task.rows_done = cursor, task.rows_done + done
    total = max(task.rows_total or 0, task.rows_done)
    task.progress(task.rows_done, total, f"{task.rows_done} of {total} rows done")
    if more:
        return False, None
    return True, kind.finish(task, params)


def _key(row: Any, field: str) -> Any:
    value = row.pk if field == "pk" else getattr(row, field)
    return value if isinstance(value, int | str | float) else str(value)

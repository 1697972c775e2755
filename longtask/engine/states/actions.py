"""A user's transitions of a task: cancel it, or queue a finished one again (retry)."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from longtask.engine import enqueue
from longtask.engine.states import tallies
from longtask.engine.states.common import CANCELLED, CLAIMABLE, RUNNING, TASK_TRANSITIONS, move_task
from longtask.engine.states.subtasks import reset_subtasks, skip_subtasks
from longtask.models import LongTask
from longtask.progress import push


def cancel(task: LongTask) -> bool:
    """Cancel the task; False if it has already finished.

    A queued or retrying task becomes CANCELLED at once and never runs; so does a
    fan-out waiting for its subtasks (or splitting them): its waiting subtasks are
    skipped and gather never runs. A running run is asked to stop: it raises
    ``Cancelled`` at its next ``progress()`` call and then becomes CANCELLED.
    """
    now = timezone.now()
    with transaction.atomic():
        row = LongTask.objects.select_for_update().filter(pk=task.pk).first()
        if row is None:
            return False
        in_run = row.status == RUNNING and (row.fan_in_at is not None or not row.is_fanout)
        if row.status in CLAIMABLE or (row.status == RUNNING and not in_run):
            move_task("cancel", row.pk, None, finished_at=now, cancel_requested_at=now)
            skip_subtasks(row.pk)
            tallies.finished(row.kind, CANCELLED, now, row.started_at)
            moved = True
        elif row.status == RUNNING:
            if row.cancel_requested_at is None:
                LongTask.objects.filter(pk=row.pk).update(cancel_requested_at=now)
                transaction.on_commit(lambda: push.notify(row.pk))
            moved = True
        else:
            moved = False
    task.refresh_from_db()
    return moved


def requeue(task: LongTask) -> bool:
    """Queue a failed or cancelled task again with a fresh attempt budget.

    A fan-out keeps its succeeded subtasks; the failed, skipped and still-running ones
    go back to QUEUED (which fences off any chunk still busy with them), and its next
    run resumes the split, queues them, and gathers once they have finished.
    """
    now = timezone.now()
    with transaction.atomic():
        row = LongTask.objects.select_for_update().filter(pk=task.pk).first()
        if row is None or row.status not in TASK_TRANSITIONS["requeue"].sources:
            return False
        failed = reset_subtasks(row.pk)
        move_task(
            "requeue",
            row.pk,
            None,
            history=[*row.history, row.event("retried", row.error)],
            error="",
            traceback="",
            finished_at=None,
            fan_in_at=None,
            attempts=0,
            cancel_requested_at=None,
            next_attempt_at=None,
            token="",
            due_at=now,
            subtasks_done=F("subtasks_done") - failed,
            subtasks_failed=F("subtasks_failed") - failed,
        )
        enqueue.task_job(row)
        tallies.add(row.kind, now, retried=1)
    task.refresh_from_db()
    return True

"""The JSON status document, shared by the JSON endpoint and (later) the websocket."""

from __future__ import annotations

import datetime
import logging
import math
import time
from typing import NotRequired, TypedDict, cast
from uuid import UUID

from django.db.models import Count
from django.utils import timezone

from longtask import dispatch, progress
from longtask.dispatch import queues
from longtask.kinds import FanOutKind, registry
from longtask.models import CLAIMABLE_STATUSES, LongTask, Status, SubTask
from longtask.progress import ProgressPayload, ProgressRecord
from longtask.serialize import JSON

logger = logging.getLogger("longtask")

#: Most finished subtasks returned by one subtasks.json page.
SUBTASK_PAGE_SIZE = 1000


class SubtaskCounts(TypedDict):
    """A fan-out's subtasks by outcome, from its counters (``skipped``: never ran)."""

    total: int
    succeeded: int
    failed: int
    pending: int
    skipped: int


class SubtaskBreakdown(TypedDict):
    """A fan-out's subtasks by state, counted (``skipped``: cancelled before they ran)."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    skipped: int


class Waiting(TypedDict):
    """Where a task that waits for a worker stands in its queue."""

    #: The queue whose workers it waits for (a fan-out's: its subtasks' queue).
    queue: str
    #: Jobs the queue's workers take first (see ``waiting_for_worker``); None when the
    #: broker did not answer.
    jobs_ahead: int | None


class StatusDocument(TypedDict):
    """The public JSON description of a task (``/tasks/<uuid>.json``, the live frames)."""

    id: str
    kind: str
    name: str | None
    status: str
    progress: ProgressPayload
    eta_seconds: int | None
    attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    status_url: str
    #: A fan-out's only.
    subtasks: NotRequired[SubtaskCounts]
    #: A succeeded task's only.
    result: NotRequired[JSON]
    #: Only while the task waits for a worker (``eta_seconds`` is then None).
    waiting: NotRequired[Waiting]


class FinishedSubtask(TypedDict):
    """One finished subtask, as subtasks.json and the live frames tell it."""

    index: int
    status: str
    result: JSON
    error: str | None


class SubtasksPage(TypedDict):
    """One page of subtasks.json: ``cursor`` is where the next page starts."""

    subtasks: list[FinishedSubtask]
    cursor: int
    more: bool


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def status_document(
    task: LongTask, record: ProgressRecord | None, *, status_url: str
) -> StatusDocument:
    """Return the public JSON description of ``task`` given its progress ``record``."""
    document: StatusDocument = {
        "id": str(task.pk),
        "kind": task.kind,
        "name": task.name,
        "status": task.status,
        "progress": progress.payload(record),
        "eta_seconds": None if task.is_finished else progress.eta_seconds(record, time.time()),
        "attempts": task.attempts,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "error": task.error or None,
        "status_url": status_url,
    }
    if task.is_fanout:
        document["subtasks"] = subtask_counts(task)
    if task.status == Status.SUCCEEDED:
        document["result"] = task.result
    waiting = waiting_for_worker(task)
    if waiting is not None:
        document["waiting"] = waiting
        document["eta_seconds"] = None  # no clock runs while nobody works on it
    return document


def waiting_for_worker(task: LongTask) -> Waiting | None:
    """Where ``task`` stands in its queue while it only waits for a worker; None otherwise.

    Waiting: QUEUED or RETRYING with its job due (no backoff, rate limit or ``run_after``
    delays it), or a split fan-out RUNNING with no subtask running or finished. One read
    of the queue (``dispatch.jobs_ahead``), two indexed subtask reads more for a fan-out,
    nothing for any other task (docs/status-pages.md, "Waiting for a worker").
    """
    queue, due = _wait(task)
    if queue is None:
        return None
    try:
        ahead: int | None = dispatch.jobs_ahead(queues.cluster_for(queue), due)
    except Exception:  # the broker is away: the page still answers
        logger.exception("LongTask id=%s: the jobs ahead in %s cannot be counted", task.pk, queue)
        ahead = None
    return {"queue": queue, "jobs_ahead": ahead}


def _wait(task: LongTask) -> tuple[str | None, datetime.datetime | None]:
    """The queue ``task`` waits in and when its job there became due; (None, None): none."""
    if task.status in CLAIMABLE_STATUSES:
        due, now = task.due_at or task.created_at, timezone.now()
        retry_at = task.next_attempt_at if task.status == Status.RETRYING else None
        if due > now or (retry_at is not None and retry_at > now):
            return None, None  # it waits for its time (a retry's, a rate limit's), not a worker
        return task.queue, due
    kind = registry.find(task.kind)
    if task.status != Status.RUNNING or not isinstance(kind, FanOutKind):
        return None, None
    if not task.split_done or task.fan_in_at or task.subtasks_done:
        return None, None
    subtasks = SubTask.objects.filter(parent_id=task.pk)
    # heartbeat_at (set by every claim) lets it read the running rows' partial index.
    if subtasks.filter(status=Status.RUNNING, heartbeat_at__isnull=False).exists():
        return None, None
    first_due = subtasks.filter(index=0).values_list("due_at", flat=True).first()
    return kind.subtask_queue_name(), first_due


def subtask_counts(task: LongTask) -> SubtaskCounts:
    """A fan-out's subtasks by outcome, from the row's own counters: no subtask is read.

    The counters move in the transaction that moves the subtasks, so this costs the same
    for 10 subtasks and for a million. ``pending`` are queued, retrying or running (or not
    split yet); once the task has finished, those that never ran are ``skipped``.
    """
    done, failed, total = task.subtasks_done, task.subtasks_failed, task.subtasks_total
    left = max(0, total - done)
    return {
        "total": total,
        "succeeded": done - failed,
        "failed": failed,
        "pending": 0 if task.is_finished else left,
        "skipped": left if task.is_finished else 0,
    }


def subtask_breakdown(task: LongTask) -> SubtaskBreakdown:
    """Count a fan-out task's subtasks by state, exactly (one grouped query: operators' views)."""
    by_status = dict(
        SubTask.objects.filter(parent=task)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return {
        "total": task.subtasks_total,
        "queued": by_status.get(Status.QUEUED, 0) + by_status.get(Status.RETRYING, 0),
        "running": by_status.get(Status.RUNNING, 0),
        "succeeded": by_status.get(Status.SUCCEEDED, 0),
        "failed": by_status.get(Status.FAILED, 0),
        "skipped": by_status.get(Status.CANCELLED, 0),
    }


def subtask_events(
    task_id: UUID | str, after: int, upto: int | None = None, limit: int = SUBTASK_PAGE_SIZE
) -> list[tuple[int, FinishedSubtask]]:
    """The subtasks that finished in the cursor range (after, upto], in finishing order:
    ``(cursor, {index, status, result, error})`` pairs. The one read of finished subtasks,
    for the cursor endpoint and every live transport."""
    rows = SubTask.objects.filter(parent_id=task_id, finish_seq__gt=after)  # type: ignore[misc]
    if upto is not None:
        rows = rows.filter(finish_seq__lte=upto)
    return [
        # finish_seq is set on every finished row (a CheckConstraint holds it).
        (
            cast(int, seq),
            {"index": index, "status": status, "result": result, "error": error or None},
        )
        for seq, index, status, result, error in rows.order_by("finish_seq").values_list(
            "finish_seq", "index", "status", "result", "error"
        )[:limit]
    ]


def finished_subtasks(task: LongTask, since: int, limit: int = SUBTASK_PAGE_SIZE) -> SubtasksPage:
    """Return the subtasks that finished after cursor ``since``, in finishing order."""
    events = subtask_events(task.pk, since, limit=limit + 1)
    more = len(events) > limit
    events = events[:limit]
    return {
        "subtasks": [event for _, event in events],
        "cursor": events[-1][0] if events else since,
        "more": more,
    }


def row_percent(task: LongTask) -> int | None:
    """Percent done from the row alone (no cache read): last progress, or fan-out counters."""
    if task.is_finished:
        percent = progress.payload(task.last_progress)["percent"]
        if percent is None and task.status == Status.SUCCEEDED:
            return 100
        return percent
    if task.started_at and (task.subtasks_total or task.is_fanout):
        return progress.payload(task.fanout_progress())["percent"]
    if task.status == Status.RETRYING and task.last_progress:  # kept from the failed attempt
        return progress.payload(task.last_progress)["percent"]
    if task.rows_total:  # an iterative task counts its rows on the row
        return min(100, math.floor(100 * task.rows_done / task.rows_total))
    return None

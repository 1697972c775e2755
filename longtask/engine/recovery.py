"""Crash recovery: find work whose worker vanished or whose job was lost, and move it on.

django-q2 does not notice a killed worker in time (the ORM broker re-delivers only
after ``retry`` and does not count the attempt; the Redis broker loses the job), so
every run keeps a heartbeat and every waiting row its due time, and ``sweep()`` (run
every SWEEP_INTERVAL by ``manage.py longtask_worker``) does five independent steps:

1. runs (a task's attempt, a split, a gather) quiet for STALE_AFTER: a failed attempt,
   written for the run it found (its token and heartbeat), so a run that beats again
   in between wins;
2. subtasks of a chunk quiet for STALE_AFTER: a failed attempt each, recorded like any
   outcome (fenced by the chunk's token);
3. tasks and 4. subtasks still waiting STALE_AFTER past their due time, with no job
   older than that due time left in their queue: their job was lost (a killed
   cluster, a push that never happened): dispatched again. So nothing waits longer than
   STALE_AFTER + SWEEP_INTERVAL once its queue has caught up, on either broker;
5. fan-outs whose last subtask finished without queueing the gather: queued now.
   Gather itself never runs in a sweeper.

Each step, and each row in it, is isolated: one bad row (a kind removed by a deploy)
is failed with a clear error and the rest go on. Several sweepers on several
machines may run at once: every write is conditional.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import cast
from uuid import UUID

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from longtask import dispatch
from longtask.conf import settings
from longtask.dispatch import queues
from longtask.engine import enqueue, stalled, states
from longtask.engine.failures import handle_failure
from longtask.kinds import FanOutKind, registry
from longtask.models import FINISHED_STATUSES, LongTask, Status, SubTask

logger = logging.getLogger("longtask")

WORKER_LOST = "WorkerLost: no heartbeat for {seconds:.0f}s (the worker died or was killed)"
#: Rows looked at per step and sweep (the next sweep takes the rest).
SWEEP_LIMIT = 10_000


def sweep(now: datetime.datetime | None = None) -> dict[str, int]:
    """Recover stale runs, lost jobs and missed fan-ins; return what each step did."""
    now = now or timezone.now()
    stale_before = now - datetime.timedelta(seconds=settings.STALE_AFTER)
    oldest = _OldestReady()
    stalled.bound_lock_waits()
    steps: dict[str, Callable[[], int]] = {
        "unblocked": stalled.terminate_stalled_lock_holders,
        "tasks": lambda: _recover_runs(now, stale_before),
        "subtasks": lambda: _recover_subtasks(now, stale_before),
        "requeued": lambda: _redispatch_tasks(stale_before, oldest),
        "subtasks_requeued": lambda: _redispatch_subtasks(stale_before, oldest),
        "fan_ins": _recover_fan_ins,
    }
    counts = {}
    for name, step in steps.items():
        try:
            counts[name] = step()
        except Exception:  # one step's failure must not stop the others
            logger.exception("longtask sweep step %s failed", name)
            counts[name] = 0
    if any(counts.values()):
        logger.warning("longtask sweep recovered %s", counts)
    return counts


def _isolated(what: str, pk: object, action: Callable[[], int]) -> int:
    try:
        return action()
    except Exception:
        logger.exception("longtask sweep: %s of LongTask id=%s failed", what, pk)
        return 0


def _recover_runs(now: datetime.datetime, stale_before: datetime.datetime) -> int:
    """Runs that stopped beating: retry, fail or finish their cancel."""
    stale = (
        LongTask.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale_before)
        .exclude(token="")
        .defer("parameters")  # one row Python cannot decode must not stop the step
        .order_by("heartbeat_at")[:SWEEP_LIMIT]
    )
    return sum(_isolated("recovery", task.pk, partial(_recover_run, now, task)) for task in stale)


def _recover_run(now: datetime.datetime, task: LongTask) -> int:
    run = states.Run(task.pk, task.token, heartbeat_at=task.heartbeat_at)
    kind = registry.find(task.kind)
    if kind is None:
        return int(
            states.fail(
                run,
                task,
                states.Failure(f"unknown task kind {task.kind!r}", progress=task.last_progress),
            )
        )
    if task.cancel_requested_at:
        cancelled = states.finish_cancelled(run, task.progress_record())
        if cancelled:
            kind.on_finished(task)
        return int(cancelled)
    seconds = (now - task.heartbeat_at).total_seconds() if task.heartbeat_at else 0
    handle_failure(run, task, kind, RuntimeError(WORKER_LOST.format(seconds=seconds)), "")
    return 1


def take_up(task_id: UUID | str, now: datetime.datetime | None = None) -> bool:
    """Take up one stuck task at once, as a sweep would; False if it is not stuck (any more).

    A run quiet for STALE_AFTER is a failed attempt (retried or failed by the kind's
    policy; a requested cancel finishes), fenced by the heartbeat read here; a task
    waiting STALE_AFTER past its due time has its job dispatched again, conditional on
    that due time (a duplicate job is harmless: the claim takes the task once).
    """
    now = now or timezone.now()
    stale_before = now - datetime.timedelta(seconds=settings.STALE_AFTER)
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None:
        return False
    if task.status == Status.RUNNING:
        if task.token and task.heartbeat_at and task.heartbeat_at < stale_before:
            return bool(_recover_run(now, task))
        return False
    if task.status in states.CLAIMABLE and (task.due_at or task.created_at) < stale_before:
        return bool(_redispatch_task(task))
    return False


def _recover_subtasks(now: datetime.datetime, stale_before: datetime.datetime) -> int:
    """Subtasks claimed by a chunk that stopped beating: record a failed attempt each."""
    stale = SubTask.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale_before)
    by_parent: dict[UUID, list[states.Outcome]] = defaultdict(list)
    rows = stale.values_list("pk", "parent_id", "index", "attempts", "heartbeat_at", "token")
    for pk, parent_id, index, attempts, heartbeat_at, token in rows.order_by("heartbeat_at")[
        :SWEEP_LIMIT
    ]:
        # heartbeat_at__lt leaves out the rows without one.
        quiet = now - cast("datetime.datetime", heartbeat_at)
        error = WORKER_LOST.format(seconds=quiet.total_seconds())
        outcome = states.Outcome(pk, index, attempts, 0, token=token, error=error)
        by_parent[parent_id].append(outcome)
    return sum(
        _isolated("subtask recovery", parent_id, partial(_record, parent_id, outcomes))
        for parent_id, outcomes in by_parent.items()
    )


def _record(parent_id: UUID, outcomes: list[states.Outcome]) -> int:
    parent = LongTask.objects.filter(pk=parent_id).only("kind").first()
    if parent is None:
        return 0  # deleted meanwhile, and its subtasks with it
    kind = registry.find(parent.kind)
    if not isinstance(kind, FanOutKind):
        _fail_unknown(parent_id)
        return states.abandon_subtasks(parent_id)
    states.record(str(parent_id), kind, outcomes)
    return len(outcomes)


def _fail_unknown(parent_id: UUID) -> None:
    """A fan-out whose kind is gone (a deploy removed it) fails with a clear error."""
    task = LongTask.objects.get(pk=parent_id)
    if task.status == Status.RUNNING:
        run = states.Run(task.pk, task.token)
        states.fail(
            run,
            task,
            states.Failure(f"unknown task kind {task.kind!r}", progress=task.last_progress),
        )


class _OldestReady:
    """``dispatch.oldest_ready`` per cluster, asked once per sweep."""

    def __init__(self) -> None:
        self._seen: dict[str | None, datetime.datetime | None] = {}

    def __call__(self, queue_name: str) -> datetime.datetime | None:
        cluster = queues.cluster_for(queue_name)
        if cluster not in self._seen:
            self._seen[cluster] = dispatch.oldest_ready(cluster)
        return self._seen[cluster]

    def lost(self, queue_name: str, due_at: datetime.datetime) -> bool:
        """Nothing that became due before ``due_at`` still waits in the queue."""
        oldest = self(queue_name)
        # A job is made a moment after its row's due time is written: allow for that.
        return oldest is None or oldest > due_at + states.DUE_TOLERANCE


def _redispatch_tasks(stale_before: datetime.datetime, oldest: _OldestReady) -> int:
    """Tasks waiting STALE_AFTER past their due time with nothing older in their queue."""
    waiting = (
        LongTask.objects.filter(
            Q(due_at__lt=stale_before) | Q(due_at__isnull=True, created_at__lt=stale_before),
            status__in=states.CLAIMABLE,
        )
        .only("pk", "kind", "queue", "due_at", "created_at")
        .order_by("due_at")[:SWEEP_LIMIT]
    )
    requeued = 0
    for task in waiting:
        due = task.due_at or task.created_at
        if not oldest.lost(task.queue, due):
            continue
        requeued += _isolated("re-dispatch", task.pk, partial(_redispatch_task, task))
    return requeued


def _redispatch_task(task: LongTask) -> int:
    with transaction.atomic():
        # Conditional on the due time seen: one sweeper of several wins.
        won = LongTask.objects.filter(
            pk=task.pk, status__in=states.CLAIMABLE, due_at=task.due_at
        ).update(due_at=timezone.now())
        if won:
            enqueue.task_job(task)
    return won


def _redispatch_subtasks(stale_before: datetime.datetime, oldest: _OldestReady) -> int:
    """Subtasks waiting STALE_AFTER past their due time with nothing older in their queue."""
    waiting = SubTask.objects.filter(
        status__in=states.CLAIMABLE, due_at__lt=stale_before
    ).values_list("pk", "parent_id", "due_at")
    by_parent: dict[UUID, list[tuple[int, datetime.datetime]]] = defaultdict(list)
    for pk, parent_id, due_at in waiting.order_by("due_at")[:SWEEP_LIMIT]:
        # due_at__lt leaves out the rows without one.
        by_parent[parent_id].append((pk, cast("datetime.datetime", due_at)))
    return sum(
        _isolated("subtask re-dispatch", parent_id, partial(_redispatch, parent_id, rows, oldest))
        for parent_id, rows in by_parent.items()
    )


def _redispatch(
    parent_id: UUID, rows: list[tuple[int, datetime.datetime]], oldest: _OldestReady
) -> int:
    parent = LongTask.objects.filter(pk=parent_id).first()
    if parent is None:
        return 0
    if parent.status in FINISHED_STATUSES:  # orphans of a stopped parent: skip them
        return states.skip_subtasks(parent_id)
    if parent.status != Status.RUNNING:
        return 0  # the parent's next run queues them
    kind = registry.find(parent.kind)
    if not isinstance(kind, FanOutKind):
        _fail_unknown(parent_id)
        return 0
    queue = kind.subtask_queue_name()
    lost = [pk for pk, due_at in rows if oldest.lost(queue, due_at)]
    if not lost:
        return 0
    with transaction.atomic():
        indexes = states.redispatched(
            lost, max(due for _, due in rows) + datetime.timedelta(microseconds=1)
        )
        enqueue.chunk_indexes(parent, indexes)
    return len(indexes)


def _recover_fan_ins() -> int:
    """Fan-outs whose subtasks have all finished but whose gather was never queued."""
    ready = LongTask.objects.filter(
        status=Status.RUNNING,
        split_done=True,
        fan_in_at__isnull=True,
        token="",
        subtasks_done=F("subtasks_total"),
    ).values_list("pk", flat=True)[:SWEEP_LIMIT]
    return sum(_isolated("fan-in", pk, partial(_start_fan_in, pk)) for pk in ready)


def _start_fan_in(pk: UUID) -> int:
    return int(states.start_fan_in(pk))

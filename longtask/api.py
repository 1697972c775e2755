"""Starting tasks: the one entry point shared by the web, the CLI and Python callers."""

from __future__ import annotations

import contextvars
import datetime
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from longtask import progress
from longtask.dispatch import queues
from longtask.engine import enqueue, recovery, states
from longtask.engine.current import current_task
from longtask.guards import abuse, sizes
from longtask.kinds import Kind, registry
from longtask.models import FINISHED_STATUSES, TOTALS, HistoryEntry, LongTask, SubTask, TaskMinute
from longtask.serialize import JSON

if TYPE_CHECKING:
    from longtask.guards.abuse import Actor
    from longtask.guards.access import AnyUser

logger = logging.getLogger("longtask")


def start(
    kind: str | Kind,
    params: Mapping[str, JSON] | None = None,
    *,
    owner: AnyUser | None = None,
    name: str | None = None,
    queue: str | None = None,
    dedup_window: datetime.timedelta | None = None,
    actor: Actor | None = None,
    run_after: datetime.datetime | None = None,
) -> LongTask:
    """Validate ``params``, save a LongTask and queue it once the transaction commits.

    With ``run_after`` its job is delivered no earlier than then.

    Raises ``UnknownKind`` or ``InvalidParameters``; nothing is saved then. With a
    ``name`` that a task already has, that task is returned and nothing is started
    (``task.deduplicated`` is True), unless that task finished longer than
    ``dedup_window`` ago: then it gives up the name and a new task starts.

    With an ``actor`` (the web and the CLI pass one) the kind's login and permission
    rule, the parameters' size and the abuse limits apply: ``NotAllowed``,
    ``ParametersTooLarge`` or ``LimitExceeded`` then. Without one nothing is limited.
    """
    kind = registry.get(kind) if isinstance(kind, str) else kind
    queue = queues.get(queue or kind.queue).name  # UnknownQueue before anything is saved
    if actor is not None:
        abuse.check_allowed(kind, actor)
    parameters = kind.clean_parameters(params or {})
    if actor is not None:
        sizes.check_parameters_size(parameters)
    existing = LongTask.objects.filter(name=name).first() if name else None
    if existing is not None and not _release_name(existing, dedup_window):
        existing.deduplicated = True
        return existing
    if actor is not None:
        abuse.check_start(kind, actor)
    if owner is not None and not owner.is_authenticated:
        owner = None
    try:
        # A savepoint only where an IntegrityError is expected (a name taken meanwhile).
        with transaction.atomic(savepoint=name is not None):
            task = LongTask(
                kind=kind.name,
                parameters=parameters,
                owner=owner,
                name=name or None,
                queue=queue,
                due_at=run_after or timezone.now(),
            )
            states.insert(task)
            # In this transaction: on the ORM broker the job commits with the row.
            enqueue.task_job(task, eta=run_after)
    except IntegrityError:
        if name:  # lost a race with a concurrent start under the same name
            existing = LongTask.objects.get(name=name)
            existing.deduplicated = True
            return existing
        raise
    task.deduplicated = False
    if actor is not None:
        abuse.record_start(task, actor)
    logger.info("LongTask id=%s kind=%s status=%s", task.pk, task.kind, task.status)
    return task


def _release_name(task: LongTask, window: datetime.timedelta | None) -> bool:
    """Free a finished task's name once ``window`` has passed since it finished."""
    if window is None or task.finished_at is None:
        return False
    if task.finished_at > timezone.now() - window:
        return False
    event: HistoryEntry = {
        "event": "name released",
        "error": task.name or "",  # the name it had (found by it, so never empty)
        "at": timezone.now().isoformat(),
    }
    return bool(
        LongTask.objects.filter(pk=task.pk, name=task.name).update(
            name=None, history=[*task.history, event]
        )
    )


def retry(task: LongTask) -> bool:
    """Run a failed (or cancelled) task again with a fresh attempt budget; False if it is not.

    A fan-out keeps its succeeded subtasks: its next run resumes the split where it
    stopped, queues the failed, skipped and unfinished subtasks again, and gathers
    once they have finished.
    """
    if not states.requeue(task):
        return False
    logger.info("LongTask id=%s kind=%s status=%s (retry)", task.pk, task.kind, task.status)
    return True


def cancel(task: LongTask) -> bool:
    """Cancel the task (see ``engine.states.cancel``); False if it has already finished."""
    return states.cancel(task)


def recover(task: LongTask) -> bool:
    """Take up a stuck task now instead of at the next sweep; False if it is not stuck.

    Stuck: RUNNING without a heartbeat for LONGTASK_STALE_AFTER (its worker died; the
    attempt fails and is retried under the kind's policy, or a requested cancel
    finishes), or QUEUED/RETRYING that long past its due time (its job is dispatched
    again). See ``engine.recovery.take_up``.
    """
    if not recovery.take_up(task.pk):
        return False
    task.refresh_from_db()
    logger.info("LongTask id=%s kind=%s status=%s (recovered)", task.pk, task.kind, task.status)
    return True


#: Tasks deleted per transaction by ``delete_finished``.
DELETE_BATCH = 500


def delete_finished(queryset: QuerySet[LongTask]) -> tuple[int, int]:
    """Delete the finished tasks of ``queryset`` and their subtasks; return both counts.

    Active tasks are never deleted: each batch re-checks the status under lock, so a
    task retried since it was selected is kept.
    """
    tasks = subtasks = 0
    finished = queryset.filter(status__in=FINISHED_STATUSES)
    while candidates := list(finished.values_list("pk", flat=True)[:DELETE_BATCH]):
        with transaction.atomic():
            batch = list(
                LongTask.objects.select_for_update()
                .filter(pk__in=candidates, status__in=FINISHED_STATUSES)
                .values_list("pk", flat=True)
            )
            subtasks += SubTask.objects.filter(parent_id__in=batch).delete()[0]
            tasks += LongTask.objects.filter(pk__in=batch).delete()[1].get(LongTask._meta.label, 0)
        for pk in batch:
            progress.delete_progress(pk)
    logger.info("LongTask deleted tasks=%s subtasks=%s (finished only)", tasks, subtasks)
    return tasks, subtasks


#: Per-minute counts younger than this are never pruned: the dashboard draws the last day.
COUNTS_KEPT = datetime.timedelta(days=1)


def old_counts(before: datetime.datetime) -> QuerySet[TaskMinute]:
    """The per-minute counts older than ``before`` (and than a day), to count or delete.

    The totals rows are never among them: the /metrics counters never go back.
    """
    before = min(before, timezone.now() - COUNTS_KEPT)
    return TaskMinute.objects.filter(minute__lt=before).exclude(minute=TOTALS)


def set_progress(current: float, total: float | None = None, message: str = "") -> None:
    """Report the running task's progress; does nothing outside a task's run.

    Raises ``longtask.Cancelled`` once the task has been cancelled, like ``task.progress``.
    """
    task = current_task()
    if task is not None:
        task.progress(current, total, message)


def cancelled() -> bool:
    """Say whether the running task has been asked to stop (False outside a task's run)."""
    task = current_task()
    return task is not None and task.cancelled


_owner: contextvars.ContextVar[AnyUser | None] = contextvars.ContextVar(
    "longtask_owner", default=None
)


@contextmanager
def using_owner(user: AnyUser | None) -> Iterator[None]:
    """Make ``user`` the owner of the django.tasks tasks enqueued in the block."""
    token = _owner.set(user)
    try:
        yield
    finally:
        _owner.reset(token)


def current_owner() -> AnyUser | None:
    """The owner set by ``using_owner`` around this code, or None."""
    return _owner.get()

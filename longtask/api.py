"""Starting tasks: the one entry point shared by the web, the CLI and Python callers."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from longtask import limits, progress, queues
from longtask.kinds import Kind, registry
from longtask.models import FINISHED_STATUSES, LongTask, SubTask

if TYPE_CHECKING:
    from longtask.limits import Actor

logger = logging.getLogger("longtask")

RUN_JOB = "longtask.jobs.run_task"


def start(
    kind: str | Kind,
    params: Mapping[str, Any] | None = None,
    *,
    owner: Any = None,
    name: str | None = None,
    queue: str | None = None,
    dedup_window: datetime.timedelta | None = None,
    actor: Actor | None = None,
) -> LongTask:
    """Validate ``params``, save a LongTask and queue it once the transaction commits.

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
        limits.check_allowed(kind, actor)
    parameters = kind.clean_parameters(params or {})
    if actor is not None:
        limits.check_parameters_size(parameters)
    existing = LongTask.objects.filter(name=name).first() if name else None
    if existing is not None and not _release_name(existing, dedup_window):
        existing.deduplicated = True
        return existing
    if actor is not None:
        limits.check_start(kind, actor)
    if owner is not None and not owner.is_authenticated:
        owner = None
    try:
        with transaction.atomic():
            task = LongTask.objects.create(
                kind=kind.name,
                parameters=parameters,
                owner=owner,
                name=name or None,
                queue=queue,
            )
            transaction.on_commit(lambda: enqueue(task))
    except IntegrityError:
        if name:  # lost a race with a concurrent start under the same name
            existing = LongTask.objects.get(name=name)
            existing.deduplicated = True
            return existing
        raise
    task.deduplicated = False
    if actor is not None:
        limits.record_start(task, actor)
    logger.info("LongTask id=%s kind=%s status=%s", task.pk, task.kind, task.status)
    return task


def _release_name(task: LongTask, window: datetime.timedelta | None) -> bool:
    """Free a finished task's name once ``window`` has passed since it finished."""
    if window is None or task.finished_at is None:
        return False
    if task.finished_at > timezone.now() - window:
        return False
    event = {"event": "name released", "error": task.name, "at": timezone.now().isoformat()}
    return bool(
        LongTask.objects.filter(pk=task.pk, name=task.name).update(
            name=None, history=[*task.history, event]
        )
    )


def retry(task: LongTask) -> bool:
    """Run a failed (or cancelled) task again; False if it is not in such a state.

    A fan-out task whose split had finished keeps its succeeded subtasks: only the
    failed and skipped ones are queued again, and gather runs once they finish.
    """
    from longtask import fanout

    with transaction.atomic():
        task = LongTask.objects.select_for_update().get(pk=task.pk)
        if not task.requeue():
            return False
        if task.is_fanout and task.split_done:
            indexes = fanout.reset_unfinished_subtasks(task)
            transaction.on_commit(lambda: fanout.enqueue_indexes(task, indexes))
        else:
            transaction.on_commit(lambda: enqueue(task))
    logger.info("LongTask id=%s kind=%s status=%s (retry)", task.pk, task.kind, task.status)
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


def enqueue(task: LongTask, eta: datetime.datetime | None = None) -> None:
    """Hand a saved task to the django-q2 workers, to run no earlier than ``eta``."""
    from longtask import q2

    kind = registry.find(task.kind)
    timeout = kind.time_limit if kind else None
    q2.enqueue_many(
        RUN_JOB,
        [(str(task.pk),)],
        name=f"longtask-{task.pk}",
        cluster=queues.cluster_for(task.queue),
        eta=eta,
        timeout=timeout,
    )

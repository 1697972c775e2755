"""Starting tasks: the one entry point shared by the web, the CLI and Python callers."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction

from longtask.conf import settings
from longtask.kinds import Kind, registry
from longtask.models import LongTask

logger = logging.getLogger("longtask")

RUN_JOB = "longtask.jobs.run_task"


def start(
    kind: str | Kind,
    params: Mapping[str, Any] | None = None,
    *,
    owner: Any = None,
    name: str | None = None,
    queue: str | None = None,
) -> LongTask:
    """Validate ``params``, save a LongTask and queue it once the transaction commits.

    Raises ``UnknownKind`` or ``InvalidParameters``; nothing is saved then. With a
    ``name`` that a task already has, that task is returned and nothing is started.
    """
    kind = registry.get(kind) if isinstance(kind, str) else kind
    parameters = kind.clean_parameters(params or {})
    if name and (existing := LongTask.objects.filter(name=name).first()) is not None:
        return existing
    if owner is not None and not owner.is_authenticated:
        owner = None
    try:
        with transaction.atomic():
            task = LongTask.objects.create(
                kind=kind.name,
                parameters=parameters,
                owner=owner,
                name=name or None,
                queue=queue or kind.queue or settings.DEFAULT_QUEUE,
            )
            transaction.on_commit(lambda: enqueue(task))
    except IntegrityError:
        if name:  # lost a race with a concurrent start under the same name
            return LongTask.objects.get(name=name)
        raise
    logger.info("LongTask id=%s kind=%s status=%s", task.pk, task.kind, task.status)
    return task


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


def enqueue(task: LongTask, eta: datetime.datetime | None = None) -> None:
    """Hand a saved task to the django-q2 workers, to run no earlier than ``eta``."""
    from longtask import q2

    kind = registry.find(task.kind)
    timeout = kind.time_limit if kind else None
    q2.enqueue_many(
        RUN_JOB, [(str(task.pk),)], name=f"longtask-{task.pk}", eta=eta, timeout=timeout
    )

"""Running a task in a worker: claim, run the kind, record the outcome."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from longtask import fanout
from longtask.kinds import FanOutKind, registry
from longtask.models import LongTask, Status, SubTask

logger = logging.getLogger("longtask")


def to_json(value: Any) -> Any:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def run(task_id: str) -> None:
    """Run the task once if it can be claimed; a duplicate delivery does nothing."""
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None:
        logger.warning("LongTask id=%s not found; skipping", task_id)
        return
    if not task.claim():
        logger.info("LongTask id=%s status=%s not claimable; skipping", task.pk, task.status)
        return
    logger.info(
        "LongTask id=%s kind=%s status=RUNNING attempt=%s", task.pk, task.kind, task.attempts
    )
    try:
        kind = registry.get(task.kind)
        if isinstance(kind, FanOutKind):
            # The parent's job only splits; the last subtask's recorder gathers.
            fanout.split(task, kind)
            return
        result = to_json(kind.run(task, task.parameters))
    except Exception as exc:
        record = fanout.fanout_record(task) if task.is_fanout else task.progress_reporter.flush()
        if task.fail(f"{type(exc).__name__}: {exc}", traceback.format_exc(), record):
            SubTask.objects.filter(parent=task, status__in=fanout.CLAIMABLE).update(
                status=Status.CANCELLED
            )
        logger.exception("LongTask id=%s kind=%s status=FAILED", task.pk, task.kind)
        return
    task.succeed(result, task.progress_reporter.flush())
    logger.info("LongTask id=%s kind=%s status=SUCCEEDED", task.pk, task.kind)

"""A django.tasks backend: every ``@task`` enqueued becomes a LongTask run by longtask's workers."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial

from django.core import checks
from django.core.exceptions import ValidationError
from django.db import transaction
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.dateparse import parse_datetime
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from longtask import api
from longtask.conf import settings
from longtask.kinds import TASK_KIND_PREFIX, Kind, RetryPolicy, registry
from longtask.models import LongTask, Status
from longtask.serialize import JSON, JSONObject

logger = logging.getLogger("longtask")

#: Django's semantics by default: a task that raises has failed, once.
ONE_ATTEMPT = RetryPolicy(max_attempts=1)
#: Longest kind name the ``kind`` column holds.
KIND_MAX_LENGTH = LongTask._meta.get_field("kind").max_length or 100

STATUS_MAP: dict[str, TaskResultStatus] = {
    Status.QUEUED: TaskResultStatus.READY,
    Status.RETRYING: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.CANCELLED: TaskResultStatus.FAILED,
}
#: The history events that end a failed attempt.
FAILURE_EVENTS = frozenset({"attempt failed", "failed"})
#: Class path of a failure recorded without one (e.g. by a kind removed since).
UNKNOWN_EXCEPTION = "longtask.exceptions.LongTaskError"
CANCELLED_EXCEPTION = "longtask.exceptions.Cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class LongTaskTask(Task):
    """A django.tasks Task with longtask's opt-in extras, given as ``@task(...)`` kwargs."""

    #: Retries of a failed attempt; None means one attempt, as in Django.
    retry: RetryPolicy | None = None
    #: Seconds an attempt may run before it is stopped and counted as failed.
    time_limit: int | None = None
    #: Exceptions that fail the task at once even when retries are left.
    fatal_exceptions: tuple[type[BaseException], ...] = ()
    #: While a call with the same arguments (and owner) is unfinished, enqueue returns it.
    dedup: bool = False


def kind_name(task: Task[..., JSON]) -> str:
    return f"{TASK_KIND_PREFIX}{task.module_path}"


def dedup_name(task: Task[..., JSON], parameters: JSONObject, owner: object) -> str:
    """The LongTask name of a ``dedup`` call: ``task:<path>:<sha256 of args, kwargs, owner>``."""
    owner_id = getattr(owner, "pk", None)  # any primary key type (a UUID, say) as text
    key = json.dumps([parameters, None if owner_id is None else str(owner_id)], sort_keys=True)
    return f"{kind_name(task)}:{hashlib.sha256(key.encode()).hexdigest()}"


class FunctionKind(Kind):
    """The kind that runs one django.tasks function, found by its module path."""

    keeps_runs = True

    def __init__(self, task: Task[..., JSON]) -> None:
        self.task = task
        # Instance attributes override Kind's class-level declarations.
        self.name = kind_name(task)  # type: ignore[misc]
        self.title = f"task: {task.module_path}"  # type: ignore[misc]
        self.retry = getattr(task, "retry", None) or ONE_ATTEMPT  # type: ignore[misc]
        self.time_limit = getattr(task, "time_limit", None)  # type: ignore[misc]
        self.fatal_exceptions = tuple(getattr(task, "fatal_exceptions", ()))  # type: ignore[misc]

    def clean_parameters(self, data: Mapping[str, JSON]) -> JSONObject:
        """Keep the call's arguments as JSON: ``{"args": [...], "kwargs": {...}}``."""
        return {
            "args": normalize_json(list(data.get("args", []))),
            "kwargs": normalize_json(dict(data.get("kwargs", {}))),
        }

    def run(self, task: LongTask, params: JSONObject) -> JSON:
        result = to_task_result(task, self.task)
        task_started.send(sender=LongTaskBackend, task_result=result)
        args = params.get("args", [])
        if self.task.takes_context:
            args = [TaskContext(task_result=result), *args]
        return normalize_json(self.task.call(*args, **params.get("kwargs", {})))

    def on_finished(self, task: LongTask) -> None:
        # The run's own copy is current once it succeeded; other endings read the row.
        try:
            row = task if task.status == Status.SUCCEEDED else LongTask.objects.get(pk=task.pk)
            result = to_task_result(row, self.task)
        except (ValueError, RecursionError):  # arguments Python cannot decode: no TaskResult
            logger.warning("LongTask id=%s: no task_finished signal (unreadable row)", task.pk)
            return
        # The outcome is recorded already: a receiver that raises must not look like a
        # failure of the job (or of the sweep that finished it).
        for receiver, error in task_finished.send_robust(LongTaskBackend, task_result=result):
            if isinstance(error, Exception):
                logger.error(
                    "LongTask id=%s task_finished receiver %r raised %r", row.pk, receiver, error
                )


def find_task(name: str) -> Task[..., JSON] | None:
    """Import the django.tasks Task a ``task:`` kind name points at, or None.

    The name comes from a row, so an import that fails in any way means "no such Task":
    ``task:.x`` raises ValueError, ``task:..`` TypeError, a module that cannot load its
    library ImproperlyConfigured. Raised, those stopped the dispatch of the task's job,
    the worker's job before its claim (the task stayed QUEUED), every sweep's re-dispatch
    of it, and the task's pages (a 500).
    """
    try:
        found = import_string(name.removeprefix(TASK_KIND_PREFIX))
    except ImportError:
        return None
    except Exception as exc:
        logger.warning("kind %r cannot be imported: %s: %s", name, type(exc).__name__, exc)
        return None
    return found if isinstance(found, Task) else None


def resolve_kind(name: str) -> FunctionKind | None:
    task = find_task(name)
    return FunctionKind(task) if task is not None else None


registry.add_resolver(TASK_KIND_PREFIX, resolve_kind)


def _errors(row: LongTask) -> list[TaskError]:
    """One TaskError per failed attempt; only the latest keeps its whole traceback.

    ``traceback`` always belongs to the latest failure (a user's retry clears it).
    """
    failures = [e for e in row.history if e.get("event") in FAILURE_EVENTS]
    errors = []
    for position, entry in enumerate(failures):
        latest = position == len(failures) - 1 and row.traceback
        errors.append(
            TaskError(
                exception_class_path=entry.get("exception") or UNKNOWN_EXCEPTION,
                traceback=row.traceback if latest else entry.get("error", ""),
            )
        )
    if row.status == Status.CANCELLED:
        errors.append(
            TaskError(
                exception_class_path=CANCELLED_EXCEPTION,
                traceback=f"Cancelled: task {row.pk} was cancelled",
            )
        )
    return errors


def _parse(value: str | None) -> datetime.datetime | None:
    return parse_datetime(value) if value else None


def to_task_result[**P, R](row: LongTask, task: Task[P, R]) -> TaskResult[P, R]:
    """The django.tasks view of a LongTask row."""
    runs = row.runs or []
    result = TaskResult(
        task=task,
        id=str(row.pk),
        status=STATUS_MAP[row.status],
        enqueued_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        last_attempted_at=_parse(runs[-1].get("at")) if runs else None,
        args=row.parameters.get("args", []),
        kwargs=row.parameters.get("kwargs", {}),
        backend=task.backend,
        errors=_errors(row),
        worker_ids=[run.get("worker", "") for run in runs],
    )
    if row.status == Status.SUCCEEDED:
        object.__setattr__(result, "_return_value", row.result)
    return result


class LongTaskBackend(BaseTaskBackend):
    """Runs django.tasks functions as durable LongTasks on longtask's queues."""

    task_class = LongTaskTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    # Jobs are delivered in queue order: a priority would not change which runs first.
    supports_priority = False

    def validate_task(self, task: Task[..., JSON]) -> None:
        super().validate_task(task)
        if len(kind_name(task)) > KIND_MAX_LENGTH:
            raise InvalidTask(f"Task path {task.module_path!r} is too long to store.")
        if task.queue_name not in settings.QUEUES:
            raise InvalidTask(f"Queue {task.queue_name!r} is not a longtask queue.")

    def enqueue[**P, R](
        self, task: Task[P, R], args: list[JSON], kwargs: dict[str, JSON]
    ) -> TaskResult[P, R]:
        self.validate_task(task)
        kind = FunctionKind(task)
        parameters = kind.clean_parameters({"args": args, "kwargs": kwargs})
        owner = api.current_owner()
        # dedup: the unique name is taken while the task is unfinished; a finished task
        # gives it up to the next enqueue (a dedup window of zero).
        dedup = getattr(task, "dedup", False)
        row = api.start(
            kind,
            parameters,
            owner=owner,
            name=dedup_name(task, parameters, owner) if dedup else None,
            dedup_window=datetime.timedelta(0),
            queue=task.queue_name,
            run_after=task.run_after,
        )
        result = to_task_result(row, task)
        if not row.deduplicated:  # an unfinished call returned: nothing was enqueued
            transaction.on_commit(partial(task_enqueued.send, type(self), task_result=result))
        return result

    def get_result(self, result_id: str) -> TaskResult[..., JSON]:
        try:
            row = LongTask.objects.get(pk=result_id, kind__startswith=TASK_KIND_PREFIX)
        except (LongTask.DoesNotExist, ValidationError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        task = find_task(row.kind)
        if task is None:
            raise TaskResultDoesNotExist(f"{result_id}: {row.kind!r} is not a Task (any more)")
        # A queue no longer among this backend's keeps the function's default.
        with contextlib.suppress(InvalidTask):
            task = replace(task, queue_name=row.queue, backend=self.alias)
        return to_task_result(row, task)

    def check(self, **kwargs: object) -> list[checks.CheckMessage]:
        unknown = sorted(set(self.queues) - set(settings.QUEUES))
        if not unknown:
            return []
        return [
            checks.Error(
                f"TASKS[{self.alias!r}]['QUEUES'] names {unknown}, not in LONGTASK_QUEUES",
                hint="Name longtask's queues only (LONGTASK_QUEUES defines them).",
                id="longtask.E020",
            )
        ]

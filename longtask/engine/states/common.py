"""The transition tables, the run token, and the fenced UPDATE every transition makes."""

from __future__ import annotations

import datetime
import logging
import secrets
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from django.db import connection, transaction
from django.db.models import Field

from longtask import progress
from longtask.engine.states import statements
from longtask.models import (
    CLAIMABLE_STATUSES,
    FINISHED_STATUSES,
    LongTask,
    LongTaskQuerySet,
    Status,
    SubTask,
)
from longtask.progress import ProgressRecord, push

logger = logging.getLogger("longtask")

QUEUED, RUNNING, RETRYING = Status.QUEUED, Status.RUNNING, Status.RETRYING
SUCCEEDED, FAILED, CANCELLED = Status.SUCCEEDED, Status.FAILED, Status.CANCELLED

#: Statuses a worker may claim (a RETRYING subtask only once it is due).
CLAIMABLE = CLAIMABLE_STATUSES
#: A job delivered this much before its row's due time still counts as due (clock skew).
DUE_TOLERANCE = datetime.timedelta(seconds=1)


class Transition(NamedTuple):
    sources: tuple[str, ...]
    target: str
    #: Who makes it, for the docs' table.
    by: str


TASK_TRANSITIONS: dict[str, Transition] = {
    "claim": Transition(CLAIMABLE, RUNNING, "a worker's job (new token, attempt + 1)"),
    "succeed": Transition((RUNNING,), SUCCEEDED, "the run holding the token"),
    "fail": Transition((RUNNING,), FAILED, "the run holding the token; the sweeper for it"),
    "schedule_retry": Transition((RUNNING,), RETRYING, "the run holding the token; the sweeper"),
    "finish_cancelled": Transition((RUNNING,), CANCELLED, "the run holding the token; sweeper"),
    "continue_later": Transition((RUNNING,), QUEUED, "an iterative batch holding the token"),
    "start_fan_in": Transition((RUNNING,), QUEUED, "whoever finishes the last subtask or split"),
    "fail_fast": Transition((RUNNING,), FAILED, "the recorder of a subtask failed for good"),
    "cancel": Transition((QUEUED, RETRYING, RUNNING), CANCELLED, "a user (not a running run)"),
    "requeue": Transition((FAILED, CANCELLED), QUEUED, "a user's retry"),
}

SUBTASK_TRANSITIONS: dict[str, Transition] = {
    "claim": Transition(CLAIMABLE, RUNNING, "a chunk job (new token, attempt + 1)"),
    "succeed": Transition((RUNNING,), SUCCEEDED, "the chunk holding the token"),
    "fail": Transition((RUNNING,), FAILED, "the chunk holding the token; the sweeper for it"),
    "retry": Transition((RUNNING,), RETRYING, "the chunk holding the token; the sweeper"),
    "stop": Transition((RUNNING,), CANCELLED, "the chunk holding the token, parent stopped"),
    "abandon": Transition((RUNNING,), CANCELLED, "the sweeper, parent finished, kind gone"),
    "give_back": Transition((RUNNING,), QUEUED, "the chunk holding the token (rate limit)"),
    "skip": Transition(CLAIMABLE, CANCELLED, "the parent's fail or cancel; the sweeper"),
    "reset": Transition((FAILED, CANCELLED, RUNNING), QUEUED, "a user's retry of the parent"),
}


def new_token() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Run:
    """One attempt at a task, as held by the worker that claimed it."""

    task_id: UUID | str
    token: str
    #: The sweeper acting for a run it found stale also requires the heartbeat it saw.
    heartbeat_at: datetime.datetime | None = None
    #: The task's kind and first start, as the claim read them (for the counts; a Run
    #: made without them has them read from the row when it finishes).
    kind: str = ""
    started_at: datetime.datetime | None = None


def task_rows(name: str, task_id: UUID | str, run: Run | None) -> LongTaskQuerySet:
    rows = LongTask.objects.filter(pk=task_id, status__in=TASK_TRANSITIONS[name].sources)
    if run is not None:
        rows = rows.filter(token=run.token)
        if run.heartbeat_at is not None:
            rows = rows.filter(heartbeat_at=run.heartbeat_at)
    return rows


def changed(task_id: UUID | str, *, finished: bool = False, progress_cached: bool = True) -> None:
    """After the commit of a change: tell the watchers; a finished task's live progress
    leaves the cache (its last value is on the row), so the cache holds active tasks only."""
    if finished and progress_cached:
        progress.delete_progress(task_id)
    push.notify(task_id)


def move_task(
    name: str,
    task_id: UUID | str,
    run: Run | None,
    *,
    progress_cached: bool = True,
    **changes: Any,
) -> bool:
    return prepare_move(name, task_id, run, **changes).apply(progress_cached=progress_cached)


@dataclass(frozen=True)
class Move:
    """A transition's fenced UPDATE, its values prepared (``prepare_move``) so that a
    caller can build it before its transaction and hold the write lock for the statement
    only; ``apply`` runs it inside the transaction."""

    name: str
    task_id: UUID | str
    run: Run | None
    changes: dict[str, Any]
    statement: tuple[str, list[Any]] | None

    def apply(
        self, *, progress_cached: bool = True, statement: tuple[str, list[Any]] | None = None
    ) -> bool:
        """Make the move; ``statement``, if given, is this move's UPDATE with more to it
        (``tallies.after_move``), which changes rows only if the UPDATE moved its row."""
        target = TASK_TRANSITIONS[self.name].target
        statement = statement or self.statement
        if statement is None:
            moved = task_rows(self.name, self.task_id, self.run).update(
                status=target, **self.changes
            )
        else:  # the same UPDATE, its SQL prepared once (the hot path of every run)
            moved = statements.execute(*statement)
        task_id = self.task_id
        if moved:
            finished = target in FINISHED_STATUSES
            transaction.on_commit(
                lambda: changed(task_id, finished=finished, progress_cached=progress_cached)
            )
        elif self.run is not None:
            logger.warning(
                "LongTask id=%s %s refused: the run (token %s) no longer holds the task",
                task_id,
                self.name,
                self.run.token,
            )
        return bool(moved)


def prepare_move(name: str, task_id: UUID | str, run: Run | None, **changes: Any) -> Move:
    """The transition ``name`` of the task (fenced by ``run`` when given), ready to apply."""
    sources, target = TASK_TRANSITIONS[name].sources, TASK_TRANSITIONS[name].target
    statement = None
    if not any(hasattr(value, "resolve_expression") for value in changes.values()):
        token = None if run is None else run.token
        heartbeat_at = None if run is None else run.heartbeat_at
        statement = statements.update_statement(
            task_id, sources, {"status": target, **changes}, token, heartbeat_at
        )
    return Move(name, task_id, run, changes, statement)


@dataclass(frozen=True)
class Failure:
    """What a failed attempt leaves on its task."""

    error: str
    traceback: str = ""
    progress: ProgressRecord | None = None
    #: The exception's class path, if known.
    exception: str = ""


def subtask_field(name: str) -> Field[Any, Any]:
    """One of SubTask's own fields (``get_field`` may also answer a reverse relation)."""
    field = SubTask._meta.get_field(name)
    assert isinstance(field, Field)
    return field


def subtask_column(field: Field[Any, Any]) -> str:
    """The field's quoted column (every concrete field has one), for raw statements."""
    assert field.column is not None
    return connection.ops.quote_name(field.column)

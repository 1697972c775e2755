"""Transitions of a task (and of a fan-out parent: its split and its fan-in)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, cast
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from longtask.dispatch import taken
from longtask.engine import enqueue
from longtask.engine.heartbeat import node_name
from longtask.engine.states import statements, tallies
from longtask.engine.states.common import (
    CANCELLED,
    CLAIMABLE,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TASK_TRANSITIONS,
    Failure,
    Run,
    logger,
    move_task,
    new_token,
    prepare_move,
)
from longtask.engine.states.subtasks import skip_subtasks
from longtask.kinds import TASK_KIND_PREFIX
from longtask.models import LongTask, RunEntry, one_line, rows
from longtask.progress import ProgressRecord, push
from longtask.serialize import JSON


def claim(
    task_id: UUID | str,
    *,
    keep_runs: Callable[[str], bool] = lambda kind: False,
    runs_by_prefix: bool = False,
) -> tuple[Run, LongTask] | None:
    """Mark a queued task RUNNING under a new token; None if it is not claimable now.

    One ``UPDATE ... RETURNING`` moves the row only if it is claimable at that instant
    and returns it (``statements.claim``): the run's copy of the row is the one it
    claimed. When ``keep_runs(kind)`` says so, the attempt is added to ``runs`` in the
    same transaction, so a worker killed right after its claim still leaves its entry.
    ``runs_by_prefix``: only kinds named under ``TASK_KIND_PREFIX`` keep runs.

    On PostgreSQL, when nothing else has to join the claim (no ORM broker's job to take,
    no entry but the statement's own), the first start's count joins the statement too,
    and it runs as a transaction of its own: one round trip instead of four.
    """
    now, token, worker = timezone.now(), new_token(), node_name()
    claim_ = TASK_TRANSITIONS["claim"]
    entry = _run_entry(worker, now)
    # Where the statement can, a django.tasks function's attempt joins ``runs`` in it.
    appended = statements.appends_runs(connection.vendor)
    statement = statements.claim_statement(
        task_id,
        claim_.sources,
        claim_.target,
        token,
        worker,
        now,
        (TASK_KIND_PREFIX, entry) if appended else None,
    )
    runs: list[RunEntry] | None = None
    if (
        appended
        and runs_by_prefix
        and connection.vendor in tallies.ONE_STATEMENT
        and not taken.in_hand(task_id)
    ):
        row = statements.claim(*tallies.after_claim(statement, now, started=1))
        if row is None:
            return None
        transaction.on_commit(lambda: push.notify(task_id))
    else:
        with transaction.atomic():
            row = statements.claim(*statement)
            if row is None:
                return None
            kind = str(rows.value(row, "kind"))
            taken.take(task_id)  # the ORM broker's job: done once this commits (dispatch/taken.py)
            if keep_runs(kind):
                runs = cast("list[RunEntry]", rows.value(row, "runs"))
                if not (appended and kind.startswith(TASK_KIND_PREFIX)):
                    runs = [*runs, entry]
                    statements.update(task_id, (RUNNING,), {"runs": runs}, token=token)
            transaction.on_commit(lambda: push.notify(task_id))
            # started_at is set by the first claim only (COALESCE): ours set it iff it is ``now``.
            if rows.value(row, "started_at") == now:  # a later claim keeps started_at
                tallies.add(kind, now, started=1)
    # The model is made once the write lock is released. Parameters Python cannot decode
    # are left deferred: the run reads them in stored_parameters and fails the task.
    task = rows.instance(row)
    if runs is not None:
        task.runs = runs
    return Run(task_id, token, kind=task.kind, started_at=task.started_at), task


def _run_entry(worker: str, now: datetime.datetime) -> RunEntry:
    return {"worker": worker, "at": now.isoformat()}


def beat(run: Run) -> bool:
    """Move the run's heartbeat; False once it should stop (cancel asked, or fenced off)."""
    return bool(
        LongTask.objects.filter(
            pk=run.task_id, status=RUNNING, token=run.token, cancel_requested_at__isnull=True
        ).update(heartbeat_at=timezone.now())
    )


def holds(run: Run) -> bool:
    """Say whether the run still holds its task."""
    return LongTask.objects.filter(pk=run.task_id, status=RUNNING, token=run.token).exists()


def succeed(
    run: Run,
    result: JSON,
    progress: ProgressRecord | None,
    task: LongTask | None = None,
    progress_cached: bool = True,
) -> bool:
    """Store the result; ``task``, the run's copy of the row, then shows what was written
    (so that what follows, ``on_finished`` say, needs no read of it). With
    ``progress_cached`` False (nothing can be there) the cache's record is not deleted."""
    now = timezone.now()
    changes: dict[str, object] = {
        "result": result,
        "last_progress": progress,
        "error": "",
        "finished_at": now,
    }
    # Prepared before the transaction: the write lock is held for the statements only.
    move = prepare_move("succeed", run.task_id, run, **changes)
    counts = tallies.finished_counts(SUCCEEDED, now, run.started_at) if run.kind else {}
    if counts and move.statement is not None and connection.vendor in tallies.ONE_STATEMENT:
        # One statement, a transaction of its own: the move and its count, or neither.
        counted = tallies.after_move(move.statement, run.kind, now, **counts)
        moved = move.apply(progress_cached=progress_cached, statement=counted)
    else:
        count = tallies.prepare(run.kind, now, **counts) if counts else None
        with transaction.atomic():
            moved = move.apply(progress_cached=progress_cached)
            if moved and count is not None:
                statements.execute(*count)
            elif moved:
                tallies.run_finished(run, SUCCEEDED, now)
    if moved and task is not None:
        for name, value in {**changes, "status": TASK_TRANSITIONS["succeed"].target}.items():
            setattr(task, name, value)
    return moved


def _record_failure(
    name: str, event: str, run: Run, task: LongTask, failure: Failure, **changes: Any
) -> bool:
    # Inside the caller's transaction: the failure and the job or skip that follows it.
    error = one_line(failure.error)
    return move_task(
        name,
        run.task_id,
        run,
        history=[*task.history, task.event(event, error, failure.exception)],
        error=error,
        traceback=failure.traceback,
        last_progress=failure.progress,
        **changes,
    )


def fail(run: Run, task: LongTask, failure: Failure) -> bool:
    """Fail the task for good; its subtasks still waiting are skipped with it."""
    now = timezone.now()
    with transaction.atomic():
        moved = _record_failure("fail", "failed", run, task, failure, finished_at=now)
        if moved:
            skip_subtasks(run.task_id)
            tallies.finished(task.kind, FAILED, now, task.started_at)
    return moved


def schedule_retry(run: Run, task: LongTask, failure: Failure, next_at: datetime.datetime) -> bool:
    """Put the task in RETRYING until ``next_at`` and queue that attempt's job with it."""
    with transaction.atomic():
        moved = _record_failure(
            "schedule_retry",
            "attempt failed",
            run,
            task,
            failure,
            next_attempt_at=next_at,
            due_at=next_at,
        )
        if moved:
            enqueue.task_job(task, eta=next_at)
            tallies.add(task.kind, timezone.now(), retried=1)
    return moved


def finish_cancelled(run: Run, progress: ProgressRecord | None) -> bool:
    now = timezone.now()
    with transaction.atomic():
        moved = move_task(
            "finish_cancelled",
            run.task_id,
            run,
            last_progress=progress,
            finished_at=now,
        )
        if moved:
            skip_subtasks(run.task_id)
            tallies.run_finished(run, CANCELLED, now)
    return moved


def continue_later(run: Run, task: LongTask) -> bool:
    """Hand an iterative task back to the queue for its next batch (a fresh attempt budget)."""
    now = timezone.now()
    with transaction.atomic():
        moved = move_task(
            "continue_later", run.task_id, run, attempts=0, heartbeat_at=now, due_at=now
        )
        if moved:
            enqueue.task_job(task)
    return moved


def move_cursor(run: Run, cursor: JSON, rows_done: int) -> bool:
    """Move an iterative task's cursor (inside the batch's transaction); False if fenced off."""
    moved = LongTask.objects.filter(pk=run.task_id, status=RUNNING, token=run.token).update(
        cursor=cursor, rows_done=rows_done
    )
    if not moved:
        logger.warning("LongTask id=%s cursor move refused (token %s)", run.task_id, run.token)
    return bool(moved)


def defer(task: LongTask, eta: datetime.datetime) -> None:
    """Queue a claimable task's job again for ``eta`` (a rate or concurrency limit said wait)."""
    with transaction.atomic():
        if LongTask.objects.filter(pk=task.pk, status__in=CLAIMABLE).update(due_at=eta):
            enqueue.task_job(task, eta=eta)

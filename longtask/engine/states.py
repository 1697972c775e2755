"""The state machine: every change of a task's or a subtask's status, in one module.

Each transition is one conditional UPDATE from the statuses in ``TASK_TRANSITIONS`` or
``SUBTASK_TRANSITIONS`` (docs/guarantees shows both tables). No other code writes
``status``. Three rules hold throughout:

- **Fencing.** A run (a task's attempt, a chunk of subtasks) carries the token it got
  when it claimed its rows; every write it makes is conditional on that token. A run
  that lost its rows (the sweeper re-queued it while it was slow but alive, a retry
  reset them) has its writes refused, and the refusal is logged.
- **Counters move by what moved**: a parent's ``subtasks_done``/``subtasks_failed`` move
  by the rowcount of the UPDATE that moved its subtasks, in the same transaction,
  under the parent's row lock (every writer that moves a RUNNING subtask takes it).
- **Dispatch with the change**: a job a transition needs is handed to the broker in
  the same transaction (the ORM broker's queue is a table: it commits with the row; on
  Redis it is pushed after the commit and the sweeper re-dispatches a lost one).
"""

from __future__ import annotations

import datetime
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from longtask import push
from longtask.engine import enqueue
from longtask.engine.heartbeat import node_name
from longtask.kinds import FanOutKind, Kind
from longtask.models import LongTask, Status, SubTask, one_line

logger = logging.getLogger("longtask")

QUEUED, RUNNING, RETRYING = Status.QUEUED, Status.RUNNING, Status.RETRYING
SUCCEEDED, FAILED, CANCELLED = Status.SUCCEEDED, Status.FAILED, Status.CANCELLED

#: Statuses a worker may claim (a RETRYING subtask only once it is due).
CLAIMABLE = (QUEUED, RETRYING)
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


def _task_rows(name: str, task_id: UUID | str, run: Run | None) -> Any:
    rows = LongTask.objects.filter(pk=task_id, status__in=TASK_TRANSITIONS[name].sources)
    if run is not None:
        rows = rows.filter(token=run.token)
        if run.heartbeat_at is not None:
            rows = rows.filter(heartbeat_at=run.heartbeat_at)
    return rows


def _move_task(name: str, task_id: UUID | str, run: Run | None, **changes: Any) -> bool:
    moved = _task_rows(name, task_id, run).update(status=TASK_TRANSITIONS[name].target, **changes)
    if moved:
        transaction.on_commit(lambda: push.notify(task_id))
    elif run is not None:
        logger.warning(
            "LongTask id=%s %s refused: the run (token %s) no longer holds the task",
            task_id,
            name,
            run.token,
        )
    return bool(moved)


# Tasks ----------------------------------------------------------------------------


def claim(task_id: UUID | str, *, keep_runs: bool = False) -> tuple[Run, LongTask] | None:
    """Mark a queued task RUNNING under a new token; None if it is not claimable now.

    With ``keep_runs`` the attempt is added to ``runs`` in the same transaction, so a
    worker killed right after its claim still leaves its entry.
    """
    now, token = timezone.now(), new_token()
    with transaction.atomic():
        moved = _task_rows("claim", task_id, None).update(
            status=RUNNING,
            token=token,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), now),
            heartbeat_at=now,
            next_attempt_at=None,
            worker=node_name(),
        )
        if not moved:
            return None
        transaction.on_commit(lambda: push.notify(task_id))
        # The parameters are read (and checked) by the run: a row that Python cannot
        # decode must fail there, not make the claim raise and the job vanish.
        run, task = Run(task_id, token), LongTask.objects.defer("parameters").get(pk=task_id)
        if keep_runs:
            record_run(run, task)
    return run, task


def record_run(run: Run, task: LongTask) -> bool:
    """Append the claimed attempt's worker and start to ``runs`` (fenced by the run's token)."""
    entry = {"worker": task.worker, "at": (task.heartbeat_at or timezone.now()).isoformat()}
    task.runs = [*task.runs, entry]
    return bool(
        LongTask.objects.filter(pk=run.task_id, status=RUNNING, token=run.token).update(
            runs=task.runs
        )
    )


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


def succeed(run: Run, result: Any, progress: dict[str, Any] | None) -> bool:
    return _move_task(
        "succeed",
        run.task_id,
        run,
        result=result,
        last_progress=progress,
        error="",
        finished_at=timezone.now(),
    )


def fail(
    run: Run,
    task: LongTask,
    error: str,
    tb: str,
    progress: dict[str, Any] | None,
    exception: str = "",
) -> bool:
    """Fail the task for good; its subtasks still waiting are skipped with it."""
    error = one_line(error)
    with transaction.atomic():
        moved = _move_task(
            "fail",
            run.task_id,
            run,
            history=[*task.history, task.event("failed", error, exception)],
            error=error,
            traceback=tb,
            last_progress=progress,
            finished_at=timezone.now(),
        )
        if moved:
            skip_subtasks(run.task_id)
    return moved


def schedule_retry(
    run: Run,
    task: LongTask,
    error: str,
    tb: str,
    next_at: datetime.datetime,
    progress: dict[str, Any] | None,
    exception: str = "",
) -> bool:
    """Put the task in RETRYING until ``next_at`` and queue that attempt's job with it."""
    error = one_line(error)
    with transaction.atomic():
        moved = _move_task(
            "schedule_retry",
            run.task_id,
            run,
            history=[*task.history, task.event("attempt failed", error, exception)],
            error=error,
            traceback=tb,
            last_progress=progress,
            next_attempt_at=next_at,
            due_at=next_at,
        )
        if moved:
            enqueue.task_job(task, eta=next_at)
    return moved


def finish_cancelled(run: Run, progress: dict[str, Any] | None) -> bool:
    with transaction.atomic():
        moved = _move_task(
            "finish_cancelled",
            run.task_id,
            run,
            last_progress=progress,
            finished_at=timezone.now(),
        )
        if moved:
            skip_subtasks(run.task_id)
    return moved


def continue_later(run: Run, task: LongTask) -> bool:
    """Hand an iterative task back to the queue for its next batch (a fresh attempt budget)."""
    now = timezone.now()
    with transaction.atomic():
        moved = _move_task(
            "continue_later", run.task_id, run, attempts=0, heartbeat_at=now, due_at=now
        )
        if moved:
            enqueue.task_job(task)
    return moved


def move_cursor(run: Run, cursor: Any, rows_done: int) -> bool:
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
            _move_task("cancel", row.pk, None, finished_at=now, cancel_requested_at=now)
            skip_subtasks(row.pk)
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
        _move_task(
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
    task.refresh_from_db()
    return True


# Fan-out parents -------------------------------------------------------------------


def save_split_batch(
    run: Run, task: LongTask, kind: FanOutKind, batch: list[dict[str, Any]]
) -> bool:
    """Save one batch of subtasks and queue their chunks, fenced; False if the run lost it."""
    first, now = task.subtasks_total, timezone.now()
    with transaction.atomic():
        moved = LongTask.objects.filter(pk=run.task_id, status=RUNNING, token=run.token).update(
            subtasks_total=F("subtasks_total") + len(batch)
        )
        if not moved:  # cancelled, failed fast, or taken over while splitting
            return False
        SubTask.objects.bulk_create(
            [
                SubTask(parent_id=run.task_id, index=first + offset, parameters=params, due_at=now)
                for offset, params in enumerate(batch)
            ]
        )
        enqueue.chunk_ranges(task, kind, first, len(batch))
    task.subtasks_total = first + len(batch)
    return True


def finish_split(run: Run, task: LongTask) -> bool:
    """Mark the split done and let go of the parent (it waits on its subtasks now)."""
    with transaction.atomic():
        moved = LongTask.objects.filter(pk=run.task_id, status=RUNNING, token=run.token).update(
            split_done=True, token=""
        )
        if moved:
            start_fan_in(run.task_id)
    return bool(moved)


def start_fan_in(parent_id: UUID | str) -> bool:
    """Queue the gather step once every subtask has finished; True for the one who does.

    The parent goes back to QUEUED with ``fan_in_at`` set and a fresh attempt budget:
    gather then runs as the task's own run (claimed, fenced, heart-beaten, under the
    kind's time limit, retried alone when it fails), never inside a recorder or sweeper.
    """
    now = timezone.now()
    with transaction.atomic():
        moved = (
            _task_rows("start_fan_in", parent_id, None)
            .filter(
                split_done=True,
                fan_in_at__isnull=True,
                token="",
                subtasks_done=F("subtasks_total"),
            )
            .update(status=QUEUED, fan_in_at=now, attempts=0, due_at=now)
        )
        if moved:
            transaction.on_commit(lambda: push.notify(parent_id))
            enqueue.task_job(LongTask.objects.get(pk=parent_id))
    return bool(moved)


# Subtasks --------------------------------------------------------------------------


def skip_subtasks(parent_id: UUID | str) -> int:
    """Skip a stopped parent's subtasks that have not started (they are not counted)."""
    return SubTask.objects.filter(parent_id=parent_id, status__in=CLAIMABLE).update(
        status=CANCELLED, token=""
    )


def abandon_subtasks(parent_id: UUID | str) -> int:
    """Stop the running subtasks of a finished parent whose chunks are gone (kind removed)."""
    with transaction.atomic():
        parent = _lock_parent(parent_id)
        if parent is None or parent.status not in (SUCCEEDED, FAILED, CANCELLED):
            return 0
        return SubTask.objects.filter(parent_id=parent_id, status=RUNNING).update(
            status=CANCELLED, token=""
        )


def reset_subtasks(parent_id: UUID | str) -> int:
    """Put a parent's failed, skipped and running subtasks back to QUEUED; return the failed.

    Call with the parent's row locked. Running ones are taken from their chunk (its
    token no longer matches), so nothing it writes later counts.
    """
    rows = SubTask.objects.filter(parent_id=parent_id)
    changes: dict[str, Any] = {
        "status": QUEUED,
        "finish_seq": None,
        "finished_at": None,
        "attempts": 0,
        "token": "",
        "error": "",
        "due_at": timezone.now(),
    }
    failed = rows.filter(status=FAILED).update(**changes)
    rows.filter(status__in=SUBTASK_TRANSITIONS["reset"].sources).update(**changes)
    return failed


@dataclass
class Claimed:
    token: str
    #: (pk, index, parameters, attempt) of each subtask, in index order.
    rows: list[tuple[int, int, Any, int]] = field(default_factory=list)


def claim_subtasks(
    parent_id: UUID | str, first: int, last: int, indexes: Sequence[int] | None
) -> Claimed:
    """Mark a chunk's claimable subtasks RUNNING under one new token."""
    now, claimed = timezone.now(), Claimed(new_token())
    with transaction.atomic():
        rows = SubTask.objects.filter(
            Q(status=QUEUED) | Q(due_at__isnull=True) | Q(due_at__lte=now + DUE_TOLERANCE),
            parent_id=parent_id,
            parent__status=RUNNING,
            status__in=CLAIMABLE,
        )
        if indexes is not None:
            rows = rows.filter(index__in=list(indexes))
        else:
            rows = rows.filter(index__gte=first, index__lte=last)
        picked = list(
            rows.select_for_update(skip_locked=True, of=("self",))
            .order_by("index")
            .values_list("pk", "index", "parameters", "attempts")
        )
        if picked:
            SubTask.objects.filter(pk__in=[row[0] for row in picked], status__in=CLAIMABLE).update(
                status=RUNNING,
                token=claimed.token,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                worker=node_name(),
            )
    claimed.rows = [(pk, index, params, attempts + 1) for pk, index, params, attempts in picked]
    return claimed


def beat_subtasks(token: str, pks: Sequence[int]) -> int:
    """Move the heartbeat of the chunk's subtasks still running under its token."""
    return SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token).update(
        heartbeat_at=timezone.now()
    )


def _lock_parent(parent_id: UUID | str) -> LongTask | None:
    return (
        LongTask.objects.select_for_update()
        .only("pk", "status", "kind", "queue", "subtask_cursor", "history", "attempts")
        .filter(pk=parent_id)
        .first()
    )


def stop_subtasks(parent_id: UUID | str, token: str, pks: Sequence[int]) -> int:
    """A chunk gives up the subtasks it has not run, because its parent stopped.

    Under the parent's lock: if the parent runs after all, they are queued again.
    """
    with transaction.atomic():
        parent = _lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is not None and parent.status == RUNNING:
            return _give_back(parent, rows, timezone.now())
        return rows.update(status=CANCELLED, token="")


def give_back(parent_id: UUID | str, token: str, pks: Sequence[int], eta: datetime.datetime) -> int:
    """A chunk hands back subtasks it claimed but did not start, to run at ``eta``."""
    with transaction.atomic():
        parent = _lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is None or parent.status != RUNNING:
            return rows.update(status=CANCELLED, token="")
        return _give_back(parent, rows, eta)


def _give_back(parent: LongTask, rows: Any, eta: datetime.datetime) -> int:
    indexes = list(rows.order_by("index").values_list("index", flat=True))
    moved = rows.update(status=QUEUED, attempts=F("attempts") - 1, worker="", token="", due_at=eta)
    enqueue.chunk_indexes(parent, indexes, eta=eta)
    return moved


def redispatched(pks: Iterable[int], due_before: datetime.datetime) -> list[int]:
    """Mark waiting subtasks as dispatched now; return the indexes this caller won."""
    now = timezone.now()
    rows = SubTask.objects.filter(pk__in=list(pks), status__in=CLAIMABLE, due_at__lt=due_before)
    indexes = list(rows.select_for_update(skip_locked=True).values_list("index", flat=True))
    SubTask.objects.filter(pk__in=list(pks), index__in=indexes, status__in=CLAIMABLE).update(
        due_at=now
    )
    return sorted(indexes)


# Recording outcomes ------------------------------------------------------------------


@dataclass
class Outcome:
    pk: int
    index: int
    attempts: int
    seconds: float
    #: The token of the run that produced it: only that run's claim is recorded.
    token: str = ""
    result: Any = None
    error: str = ""
    traceback: str = ""
    #: The failure may not be retried (FatalError or one of the kind's fatal exceptions).
    fatal: bool = False
    #: A delay asked for with RetryLater, instead of the policy's backoff.
    retry_in: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error


class Recorded(NamedTuple):
    #: How many outcomes moved their row (the rest were refused: fenced or duplicate).
    moved: int
    #: The parent was still RUNNING when they were recorded (read under its lock).
    parent_running: bool


def record(parent_id: UUID | str, kind: FanOutKind, outcomes: list[Outcome]) -> Recorded:
    """Record outcomes exactly once, each only if its row still runs under its token.

    Finished rows get the next places in the finishing order; the parent's counters
    move by the rowcounts of those same UPDATEs. Failures with attempts left become
    RETRYING (their jobs queued in the transaction) while the parent runs, and are
    skipped when it no longer does. A failure for good under FAIL_FAST fails the parent.
    """
    now = timezone.now()
    policy = kind.subtask_retry
    with transaction.atomic():
        parent = _lock_parent(parent_id)
        if parent is None:
            return Recorded(0, parent_running=False)
        running = parent.status == RUNNING
        tokens = {o.pk: o.token for o in outcomes}
        live = {
            pk: created_at
            for pk, token, created_at in SubTask.objects.filter(
                pk__in=list(tokens), status=RUNNING
            ).values_list("pk", "token", "created_at")
            if token == tokens[pk]
        }
        if len(live) < len(tokens):
            logger.warning(
                "LongTask id=%s: %s subtask outcome(s) refused (their run no longer holds them)",
                parent_id,
                len(tokens) - len(live),
            )
        seq = parent.subtask_cursor
        finished: dict[str, list[list[Any]]] = {SUCCEEDED: [], FAILED: []}
        retrying: dict[datetime.datetime, list[Outcome]] = {}
        skipped: list[Outcome] = []
        seconds, first_failure = 0.0, None
        for o in outcomes:
            created_at = live.pop(o.pk, None)  # the same subtask twice counts once
            if created_at is None:
                continue
            age = (now - created_at).total_seconds()
            if not o.ok and not o.fatal and not policy.gives_up(o.attempts, age):
                if not running:
                    skipped.append(o)
                    continue
                delay = o.retry_in if o.retry_in is not None else policy.backoff(o.attempts)
                # Subtasks on the same attempt share one delay (and one job).
                due = now + datetime.timedelta(seconds=round(delay, 1))
                retrying.setdefault(due, []).append(o)
                continue
            seq += 1
            seconds += o.seconds
            if not o.ok:
                first_failure = first_failure or o
            status = SUCCEEDED if o.ok else FAILED
            finished[status].append(
                [o.result if o.ok else None, o.error, o.seconds, seq, now, o.pk, o.token]
            )
        fields = ["status", "result", "error", "seconds", "finish_seq", "finished_at"]
        done = {
            s: _update_running(fields, [[s, *row] for row in rows]) for s, rows in finished.items()
        }
        moved = done[SUCCEEDED] + done[FAILED]
        for due, group in retrying.items():
            rows = [[RETRYING, o.error, due, "", o.pk, o.token] for o in group]
            if _update_running(["status", "error", "due_at", "token"], rows):
                enqueue.chunk_indexes(parent, [o.index for o in group], eta=due)
        if skipped:
            _update_running(
                ["status", "error", "token"],
                [[CANCELLED, o.error, "", o.pk, o.token] for o in skipped],
            )
        if moved:
            LongTask.objects.filter(pk=parent_id).update(
                subtasks_done=F("subtasks_done") + moved,
                subtask_cursor=F("subtask_cursor") + (seq - parent.subtask_cursor),
                subtasks_failed=F("subtasks_failed") + done[FAILED],
                subtask_seconds=F("subtask_seconds") + seconds,
            )
            transaction.on_commit(lambda: push.notify(parent_id))
        if (
            first_failure
            and done[FAILED]
            and kind.failure_policy == FanOutKind.FAIL_FAST
            and running
        ):
            _fail_fast(parent, kind, first_failure)
            running = False
        elif moved and running:
            start_fan_in(parent_id)
    return Recorded(moved, parent_running=running)


def _update_running(fields: list[str], rows: list[list[Any]]) -> int:
    """Write ``fields`` of each row where it is still RUNNING under the given token.

    Each row is [*values, pk, token]. One executemany; returns the rows it moved.
    (Django's bulk_update builds a CASE expression per field and row, which cost more
    than the work itself for small subtasks: 28 s of 45 s for a 10,000-square quilt.)
    """
    if not rows:
        return 0
    meta = SubTask._meta
    quote = connection.ops.quote_name
    columns = [meta.get_field(name) for name in fields]
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in columns)
    # Only quoted column names from the model's own _meta are interpolated; values are params.
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = %s AND {quote(meta.get_field('status').column)} = %s "
        f"AND {quote(meta.get_field('token').column)} = %s"
    )
    params = [
        [f.get_db_prep_save(value, connection) for f, value in zip(columns, row[:-2], strict=True)]
        + [row[-2], RUNNING.value, row[-1]]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
        moved = cursor.rowcount
    if moved != len(rows):
        logger.warning(
            "subtask writes refused: %s of %s (fenced or recorded before)",
            len(rows) - moved,
            len(rows),
        )
    return moved


def _fail_fast(parent: LongTask, kind: Kind, failure: Outcome) -> None:
    """Fail the parent for one subtask's failure and skip the subtasks not yet run."""
    error = one_line(f"subtask {failure.index} failed: {failure.error}")
    full = LongTask.objects.get(pk=parent.pk)  # the counters as this transaction left them
    if _move_task(
        "fail_fast",
        parent.pk,
        None,
        history=[*full.history, full.event("failed", error)],
        error=error,
        traceback=failure.traceback,
        last_progress=full.fanout_progress(),
        finished_at=timezone.now(),
        token="",
    ):
        skip_subtasks(parent.pk)
        logger.info(
            "LongTask id=%s status=FAILED (fail_fast at subtask %s)", parent.pk, failure.index
        )

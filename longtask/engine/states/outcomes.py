"""Recording the outcomes of a chunk of subtasks: counters, failures, the fan-in."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import F, Field
from django.utils import timezone

from longtask.engine import enqueue, window
from longtask.engine.states import bulk, tallies
from longtask.engine.states.common import (
    CANCELLED,
    FAILED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    logger,
    move_task,
    subtask_field,
)
from longtask.engine.states.fanout import start_fan_in
from longtask.engine.states.subtasks import lock_parent, skip_subtasks
from longtask.kinds import FanOutKind, Kind
from longtask.models import FINISHED_STATUSES, LongTask, SubTask, one_line
from longtask.progress import push
from longtask.serialize import JSON


@dataclass
class Outcome:
    pk: int
    index: int
    attempts: int
    seconds: float
    #: The token of the run that produced it: only that run's claim is recorded.
    token: str = ""
    result: JSON = None
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
    RETRYING (their jobs queued in the transaction) while the parent runs, wait for its
    next attempt to queue them while it is between attempts, and are skipped once it has
    finished. A failure for good under FAIL_FAST fails the parent.
    """
    now = timezone.now()
    policy = kind.subtask_retry
    with transaction.atomic():
        parent = lock_parent(parent_id)
        if parent is None:
            return Recorded(0, parent_running=False)
        running = parent.status == RUNNING
        # Not running and not finished: between two attempts; its next one runs the rest.
        parent_finished = parent.status in FINISHED_STATUSES
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
        finished: dict[str, list[list[object]]] = {SUCCEEDED: [], FAILED: []}
        retrying: dict[datetime.datetime, list[Outcome]] = {}
        skipped: list[Outcome] = []
        seconds, first_failure = 0.0, None
        for o in outcomes:
            created_at = live.pop(o.pk, None)  # the same subtask twice counts once
            if created_at is None:
                continue
            age = (now - created_at).total_seconds()
            if not o.ok and not o.fatal and not policy.gives_up(o.attempts, age):
                if parent_finished:
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
            if _update_running(["status", "error", "due_at", "token"], rows) and running:
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
            tallies.add(parent.kind, now, subtasks_done=moved, subtasks_failed=done[FAILED])
        if (
            first_failure
            and done[FAILED]
            and kind.failure_policy == FanOutKind.FAIL_FAST
            and running
        ):
            _fail_fast(parent, kind, first_failure)
            running = False
        elif moved and running and not start_fan_in(parent_id):
            window.refill(parent, kind)  # room for the next chunks, at the queue's tail
    return Recorded(moved, parent_running=running)


def _update_running(fields: list[str], rows: list[list[object]]) -> int:
    """Write ``fields`` of each row where it is still RUNNING under the given token.

    Each row is [*values, pk, token]. One statement per batch (bulk.update_where);
    returns the rows it moved. (Django's bulk_update builds a CASE expression per field
    and row, which cost more than the work itself for small subtasks: 28 s of 45 s for a
    10,000-square quilt.)
    """
    if not rows:
        return 0
    columns = [subtask_field(name) for name in fields]
    db = connections[DEFAULT_DB_ALIAS]  # not the proxy: each of its reads is a Local lookup
    # A value repeated down a column (the status, the finish time, a no-op's None) is
    # prepared once: preparing each field of each row was most of a record's time.
    memos: list[dict[tuple[type, object], object]] = [{} for _ in columns]
    params = [
        [
            _prepared(f, value, db, memo)
            for f, value, memo in zip(columns, row[:-2], memos, strict=True)
        ]
        + [row[-2], row[-1]]
        for row in rows
    ]
    moved = bulk.update_where(
        columns,
        params,
        SubTask._meta.pk,
        [(subtask_field("status"), RUNNING.value), (subtask_field("token"), None)],
    )
    if moved != len(rows):
        logger.warning(
            "subtask writes refused: %s of %s (fenced or recorded before)",
            len(rows) - moved,
            len(rows),
        )
    return moved


def _prepared(
    field: Field[Any, Any], value: object, db: Any, memo: dict[tuple[type, object], object]
) -> object:
    """``field.get_db_prep_save(value, db)``, kept in ``memo`` by the value and its type
    (so that 1, 1.0 and True stay apart); a value that cannot be a key is prepared each time."""
    try:
        return memo[type(value), value]
    except KeyError:
        prepared = memo[type(value), value] = field.get_db_prep_save(value, db)
        return prepared
    except TypeError:  # unhashable: a list or dict result
        return field.get_db_prep_save(value, db)


def _fail_fast(parent: LongTask, kind: Kind, failure: Outcome) -> None:
    """Fail the parent for one subtask's failure and skip the subtasks not yet run."""
    error = one_line(f"subtask {failure.index} failed: {failure.error}")
    full = LongTask.objects.get(pk=parent.pk)  # the counters as this transaction left them
    now = timezone.now()
    if move_task(
        "fail_fast",
        parent.pk,
        None,
        history=[*full.history, full.event("failed", error)],
        error=error,
        traceback=failure.traceback,
        last_progress=full.fanout_progress(),
        finished_at=now,
        token="",
    ):
        skip_subtasks(parent.pk)
        tallies.finished(full.kind, FAILED, now, full.started_at)
        logger.info(
            "LongTask id=%s status=FAILED (fail_fast at subtask %s)", parent.pk, failure.index
        )

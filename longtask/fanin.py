"""Fan-in: record subtask outcomes exactly once and gather the results once.

A subtask counts only if a conditional UPDATE moves it from RUNNING to finished,
and the parent's counter moves by exactly the number of rows that moved, in the
same transaction. Whoever sees ``done == total`` with the split finished tries a
compare-and-set on ``fan_in_at``; the one winner runs ``gather``.
"""

from __future__ import annotations

import datetime
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from longtask import limits, push, q2
from longtask.conf import settings
from longtask.exceptions import ResultTooLarge
from longtask.kinds import FanOutKind, registry
from longtask.models import LongTask, Status, SubTask

logger = logging.getLogger("longtask")

CLAIMABLE = [Status.QUEUED, Status.RETRYING]
CHUNK_JOB = "longtask.jobs.run_chunk"


@dataclass
class Outcome:
    pk: int
    index: int
    attempts: int
    seconds: float
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


class Recorder:
    """Collects outcomes and records them apart from the work, in few transactions."""

    def __init__(self, parent_id: str, kind: FanOutKind) -> None:
        self.parent_id = parent_id
        self.kind = kind
        self.pending: list[Outcome] = []
        self.stopped = False
        self._last_flush = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            _limit_result(outcome)
        self.pending.append(outcome)
        if time.monotonic() - self._last_flush >= settings.RECORD_INTERVAL:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        recorded = record(self.parent_id, self.kind, pending)
        push.notify(self.parent_id)
        enqueue_retries(self.parent_id, self.kind, recorded.retries)
        self.stopped = not recorded.parent_running
        if recorded.parent_running:
            try_fan_in(self.parent_id)


def _limit_result(outcome: Outcome) -> None:
    """Turn a too-large subtask result into a failure that is not retried (it would recur)."""
    try:
        limits.check_result_size(limits.json_size(outcome.result))
    except ResultTooLarge as exc:
        outcome.result = None
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.fatal = True


def subtask_cluster(kind: FanOutKind) -> str | None:
    """The django-q2 cluster that runs ``kind``'s subtasks."""
    from longtask import queues

    return queues.cluster_for(kind.subtask_queue_name())


def enqueue_retries(parent_id: str, kind: FanOutKind, retries: dict[float, list[int]]) -> None:
    """Queue the subtasks to run again, one job per delay (after the record committed)."""
    now = timezone.now()
    for delay, indexes in retries.items():
        q2.enqueue_many(
            CHUNK_JOB,
            [(parent_id, 0, 0, indexes)],
            cluster=subtask_cluster(kind),
            eta=now + datetime.timedelta(seconds=delay),
        )


class Recorded(NamedTuple):
    #: Indexes of the subtasks to run again, by delay.
    retries: dict[float, list[int]]
    #: The parent was still RUNNING when the outcomes were recorded (read under its lock).
    parent_running: bool


def record(parent_id: str, kind: FanOutKind, outcomes: list[Outcome]) -> Recorded:
    """Record outcomes exactly once; say what to run again and whether the parent runs on."""
    now = timezone.now()
    policy = kind.subtask_retry
    retry: dict[float, list[int]] = {}
    with transaction.atomic():
        parent = (
            LongTask.objects.select_for_update()
            .only("pk", "status", "subtask_cursor")
            .filter(pk=parent_id)
            .first()
        )
        if parent is None:
            return Recorded({}, parent_running=False)
        # Only subtasks still RUNNING count: a duplicate delivery, a retried job or a
        # subtask skipped by fail_fast finds its row already moved and changes nothing.
        live = dict(
            SubTask.objects.filter(
                pk__in=[o.pk for o in outcomes], status=Status.RUNNING
            ).values_list("pk", "created_at")
        )
        finished: list[SubTask] = []
        retrying: list[SubTask] = []
        seq = parent.subtask_cursor
        failed = 0
        seconds = 0.0
        first_failure: Outcome | None = None
        for o in outcomes:
            if o.pk not in live:
                continue
            created_at = live.pop(o.pk)  # the same subtask twice in one flush counts once too
            age = (now - created_at).total_seconds()
            if not o.ok and not o.fatal and not policy.gives_up(o.attempts, age):
                retrying.append(SubTask(pk=o.pk, status=Status.RETRYING, error=o.error))
                # Subtasks on the same attempt share one delay (and one job).
                delay = o.retry_in if o.retry_in is not None else policy.backoff(o.attempts)
                retry.setdefault(round(delay, 1), []).append(o.index)
                continue
            seq += 1
            seconds += o.seconds
            if not o.ok:
                failed += 1
                first_failure = first_failure or o
            finished.append(
                SubTask(
                    pk=o.pk,
                    status=Status.SUCCEEDED if o.ok else Status.FAILED,
                    result=o.result if o.ok else None,
                    error=o.error,
                    seconds=o.seconds,
                    finish_seq=seq,
                    finished_at=now,
                )
            )
        _update_running(
            finished, ["status", "result", "error", "seconds", "finish_seq", "finished_at"]
        )
        _update_running(retrying, ["status", "error"])
        if finished:
            LongTask.objects.filter(pk=parent_id).update(
                subtasks_done=F("subtasks_done") + len(finished),
                subtask_cursor=F("subtask_cursor") + len(finished),
                subtasks_failed=F("subtasks_failed") + failed,
                subtask_seconds=F("subtask_seconds") + seconds,
                heartbeat_at=now,
            )
        if first_failure and kind.failure_policy == FanOutKind.FAIL_FAST:
            _fail_fast(parent, first_failure)
    return Recorded(retry, parent_running=parent.status == Status.RUNNING)


def _update_running(rows: list[SubTask], fields: list[str]) -> None:
    """Write ``fields`` of each row, only where it is still RUNNING, in one executemany.

    Django's bulk_update builds a CASE expression per field and row, which cost more
    than the work itself for small subtasks (28 s of 45 s for a 10,000-square quilt).
    """
    if not rows:
        return
    meta = SubTask._meta
    quote = connection.ops.quote_name
    columns = [meta.get_field(name) for name in fields]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in columns)
    # Only quoted column names from the model's own _meta are interpolated; values are params.
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = %s AND {quote(meta.get_field('status').column)} = %s"
    )
    params = [
        [field.get_db_prep_save(getattr(row, field.attname), connection) for field in columns]
        + [row.pk, Status.RUNNING.value]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _fail_fast(parent: LongTask, failure: Outcome) -> None:
    """Fail the parent for one subtask's failure and skip the subtasks not yet run."""
    if parent.status != Status.RUNNING:
        return
    error = f"subtask {failure.index} failed: {failure.error}"
    if parent.fail(error, failure.traceback, progress=fanout_record(parent)):
        SubTask.objects.filter(parent_id=parent.pk, status__in=CLAIMABLE).update(
            status=Status.CANCELLED
        )
        logger.info(
            "LongTask id=%s status=FAILED (fail_fast at subtask %s)", parent.pk, failure.index
        )


# Fan-in --------------------------------------------------------------------------


class Results:
    """The subtasks' results in index order, read in pages rather than all at once."""

    def __init__(self, parent_id: str, total: int) -> None:
        self.parent_id = parent_id
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Any]:
        rows = (
            SubTask.objects.filter(parent_id=self.parent_id)
            .order_by("index")
            .values_list("result", flat=True)
        )
        return rows.iterator(chunk_size=2000)


def try_fan_in(parent_id: str) -> bool:
    """Run gather if every subtask has finished and nobody else has; return True if we did."""
    won = LongTask.objects.filter(
        pk=parent_id,
        status=Status.RUNNING,
        split_done=True,
        fan_in_at__isnull=True,
        subtasks_done=F("subtasks_total"),
    ).update(fan_in_at=timezone.now())
    if not won:
        return False
    parent = LongTask.objects.get(pk=parent_id)
    kind = registry.get(parent.kind)
    from longtask.runner import result_to_json

    try:
        result = result_to_json(kind.gather(parent, Results(parent_id, parent.subtasks_total)))
    except Exception as exc:
        parent.fail(
            f"gather: {type(exc).__name__}: {exc}", traceback.format_exc(), fanout_record(parent)
        )
        logger.exception("LongTask id=%s gather failed", parent_id)
        return True
    parent.succeed(result, fanout_record(parent))
    logger.info("LongTask id=%s kind=%s status=SUCCEEDED after fan-in", parent_id, parent.kind)
    return True


# Progress ---------------------------------------------------------------------------


def fanout_record(task: LongTask, now: float | None = None) -> dict[str, Any]:
    """Progress of a fan-out task from its own counters: finished / total, rate since start."""
    now = time.time() if now is None else now
    done, total = task.subtasks_done, task.subtasks_total
    rate = None
    if task.started_at and done:
        elapsed = now - task.started_at.timestamp()
        rate = done / elapsed if elapsed > 0 else None
    if task.split_done:
        message = f"{done} of {total} subtasks done"
        if task.subtasks_failed:
            message += f", {task.subtasks_failed} failed"
    else:
        message = f"Splitting: {total} subtasks queued so far"
    return {
        "current": done,
        "total": total if task.split_done else None,
        "message": message,
        "updated_at": now,
        "rate": rate,
    }

"""Fan-out: spread a task over subtasks run in chunks (fan-in is in fanin.py).

The parent's job splits: it saves subtask rows in batches and, once a batch has
committed, queues chunk jobs for it on the subtask cluster. A chunk job claims its
subtasks, runs them, and records the outcomes in one transaction per flush: a
subtask counts only if a conditional UPDATE moves it from RUNNING to finished,
and the parent's counter moves by exactly the number of rows that moved. Whoever
sees ``done == total`` with the split finished tries a compare-and-set on
``fan_in_at``; the one winner runs ``gather``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from longtask import q2, queues
from longtask.conf import settings
from longtask.exceptions import FatalError, RetryLater
from longtask.fanin import (
    CHUNK_JOB,
    CLAIMABLE,
    Outcome,
    Recorder,
    Results,
    enqueue_retries,
    fanout_record,
    record,
    subtask_cluster,
    try_fan_in,
)
from longtask.heartbeat import Heartbeat, node_name
from longtask.kinds import FanOutKind, registry
from longtask.models import LongTask, Status, SubTask, one_line

__all__ = [
    "CHUNK_JOB",
    "CLAIMABLE",
    "Outcome",
    "Recorder",
    "Results",
    "enqueue_retries",
    "fanout_record",
    "record",
    "try_fan_in",
]

logger = logging.getLogger("longtask")

#: Chunk size used before any subtask duration has been observed.
INITIAL_CHUNK_SIZE = 8


@dataclass(frozen=True)
class SubtaskContext:
    parent_id: str
    index: int
    attempt: int
    max_attempts: int | None


_current: contextvars.ContextVar[SubtaskContext | None] = contextvars.ContextVar(
    "longtask_subtask", default=None
)


def current_subtask() -> SubtaskContext | None:
    """Return the subtask being run in this context (index, attempt), or None."""
    return _current.get()


# Splitting -------------------------------------------------------------------


def split(task: LongTask, kind: FanOutKind) -> None:
    """Create and queue the subtasks of ``task``; resumable after a crash mid-way."""
    already = task.subtasks_total  # rows saved by an earlier, interrupted split
    batch: list[dict[str, Any]] = []
    from longtask.runner import to_json

    for position, params in enumerate(kind.split(task.parameters)):
        if position < already:
            continue
        batch.append(to_json(params))
        if len(batch) >= settings.SPLIT_BATCH:
            if not _save_batch(task, kind, batch):
                return
            batch = []
    if batch and not _save_batch(task, kind, batch):
        return
    LongTask.objects.filter(pk=task.pk, status=Status.RUNNING).update(split_done=True)
    logger.info("LongTask id=%s split into %s subtasks", task.pk, task.subtasks_total)
    # Subtasks may all have finished while the split was still queueing.
    try_fan_in(task.pk)


def _save_batch(task: LongTask, kind: FanOutKind, batch: list[dict[str, Any]]) -> bool:
    """Save one batch of subtasks and queue it after commit; False if the parent stopped."""
    first = task.subtasks_total
    with transaction.atomic():
        moved = LongTask.objects.filter(pk=task.pk, status=Status.RUNNING).update(
            subtasks_total=F("subtasks_total") + len(batch)
        )
        if not moved:  # cancelled, or failed fast, while splitting
            return False
        SubTask.objects.bulk_create(
            [
                SubTask(parent_id=task.pk, index=first + offset, parameters=params)
                for offset, params in enumerate(batch)
            ]
        )
        ranges = [
            (str(task.pk), start, end - 1)
            for start, end in chunk_bounds(kind, task, first, len(batch))
        ]
        transaction.on_commit(
            lambda: q2.enqueue_many(CHUNK_JOB, ranges, cluster=subtask_cluster(kind))
        )
    task.subtasks_total = first + len(batch)
    return True


def chunk_size(kind: FanOutKind, task: LongTask, batch_len: int) -> int | None:
    """Subtasks per job: the kind's choice, else aim at CHUNK_TARGET_SECONDS per job.

    None means no subtask has finished yet, so there is nothing to aim by.
    """
    if kind.chunk_size:
        return kind.chunk_size
    observed = (
        LongTask.objects.filter(pk=task.pk).values_list("subtask_seconds", "subtasks_done").first()
    )
    if not (observed and observed[1]):
        return None
    mean = max(observed[0] / observed[1], 1e-6)
    return max(1, min(int(settings.CHUNK_TARGET_SECONDS / mean), _cap(batch_len, kind)))


def _rate_cap(kind: FanOutKind) -> int | None:
    """Under a rate limit, a chunk holds about CHUNK_TARGET_SECONDS of the queue's rate."""
    from longtask import queues

    rate = queues.get(kind.subtask_queue_name()).rate
    return max(1, math.ceil(rate * settings.CHUNK_TARGET_SECONDS)) if rate else None


def _cap(batch_len: int, kind: FanOutKind) -> int:
    # Leave work for every worker, whatever the estimate says.
    spread = math.ceil(batch_len / (2 * max(1, settings.SUBTASK_PARALLELISM)))
    return max(1, min(settings.MAX_CHUNK_SIZE, spread, _rate_cap(kind) or spread))


def chunk_bounds(
    kind: FanOutKind, task: LongTask, first: int, batch_len: int
) -> list[tuple[int, int]]:
    """Split a batch into [start, end) chunks.

    Before any duration is known the chunks grow from INITIAL_CHUNK_SIZE by doubling
    (a slow start): slow subtasks get small first chunks, quick ones soon big ones.
    """
    size = chunk_size(kind, task, batch_len)
    growing = size is None
    size = size or INITIAL_CHUNK_SIZE
    bounds, start, end_of_batch = [], first, first + batch_len
    while start < end_of_batch:
        end = min(start + size, end_of_batch)
        bounds.append((start, end))
        start = end
        if growing:
            size = min(size * 2, _cap(batch_len, kind))
    return bounds


def reset_unfinished_subtasks(task: LongTask) -> list[int]:
    """Queue a fan-out task's failed and skipped subtasks again; return their indexes.

    Succeeded subtasks keep their results. Call inside the transaction that requeued
    the parent; the parent goes straight back to RUNNING (its split is done).
    """
    rows = SubTask.objects.filter(parent=task, status__in=[Status.FAILED, Status.CANCELLED])
    indexes = list(rows.order_by("index").values_list("index", flat=True))
    failed = rows.filter(status=Status.FAILED).count()
    rows.update(status=Status.QUEUED, finish_seq=None, finished_at=None, attempts=0)
    LongTask.objects.filter(pk=task.pk).update(
        status=Status.RUNNING,
        subtasks_done=F("subtasks_done") - failed,
        subtasks_failed=0,
    )
    task.refresh_from_db()
    return indexes


def enqueue_indexes(
    task: LongTask, indexes: list[int], eta: datetime.datetime | None = None
) -> None:
    """Queue chunk jobs for the given subtask indexes (after they committed)."""
    kind = registry.get(task.kind)
    assert isinstance(kind, FanOutKind)
    size = max(1, min(settings.MAX_CHUNK_SIZE // 5, _rate_cap(kind) or settings.MAX_CHUNK_SIZE))
    jobs = [(str(task.pk), 0, 0, indexes[i : i + size]) for i in range(0, len(indexes), size)]
    q2.enqueue_many(CHUNK_JOB, jobs, cluster=subtask_cluster(kind), eta=eta)
    # Nothing to re-run (e.g. only the gather had failed): fan in now.
    if not indexes:
        try_fan_in(task.pk)


# Running chunks -------------------------------------------------------------------


def run_chunk(parent_id: str, first: int, last: int, indexes: Sequence[int] | None = None) -> None:
    """Run the claimable subtasks of one chunk and record their outcomes."""
    parent = LongTask.objects.filter(pk=parent_id).only("pk", "kind", "status").first()
    if parent is None or parent.status != Status.RUNNING:
        return
    kind = registry.get(parent.kind)
    assert isinstance(kind, FanOutKind)
    queue = queues.get_or_default(kind.subtask_queue_name())
    slot = queues.acquire_slot_waiting(queue, settings.LIMIT_WAIT)
    if slot is None:  # the queue is at max_concurrency: try this chunk again shortly
        later = timezone.now() + datetime.timedelta(seconds=settings.LIMIT_WAIT)
        q2.enqueue_many(
            CHUNK_JOB, [(parent_id, first, last, indexes)], cluster=queue.cluster, eta=later
        )
        return
    try:
        _run_chunk(kind, queue, slot, parent_id, first, last, indexes)
    finally:
        queues.release_slot(queue, slot)


def _run_chunk(
    kind: FanOutKind,
    queue: queues.Queue,
    slot: str,
    parent_id: str,
    first: int,
    last: int,
    indexes: Sequence[int] | None,
) -> None:
    claimed = claim(parent_id, first, last, indexes)
    if not claimed:
        return
    recorder = Recorder(parent_id, kind)
    pks = [row[0] for row in claimed]

    def beat() -> bool:
        # The parent's heartbeat means "its subtasks are moving" (see recovery.py).
        queues.renew_slot(queue, slot)
        now = timezone.now()
        SubTask.objects.filter(pk__in=pks, status=Status.RUNNING).update(heartbeat_at=now)
        return bool(
            LongTask.objects.filter(pk=parent_id, status=Status.RUNNING).update(heartbeat_at=now)
        )

    with Heartbeat(beat) as heartbeat:
        try:
            _run_claimed(kind, queue, parent_id, claimed, recorder, heartbeat)
        finally:
            # Even when the run is cut short (a time limit), what finished is recorded;
            # the interrupted subtask stays RUNNING and is recovered by the sweeper.
            recorder.flush()


def _run_claimed(
    kind: FanOutKind,
    queue: queues.Queue,
    parent_id: str,
    claimed: list[tuple[int, int, Any, int]],
    recorder: Recorder,
    heartbeat: Heartbeat,
) -> None:
    from longtask.runner import to_json

    pks = [row[0] for row in claimed]
    max_attempts = kind.subtask_retry.max_attempts
    for position, (pk, index, params, attempts) in enumerate(claimed):
        if recorder.stopped or heartbeat.stopped.is_set():
            # The parent failed fast or was cancelled: the rest of the chunk is skipped.
            SubTask.objects.filter(pk__in=pks[position:], status=Status.RUNNING).update(
                status=Status.CANCELLED
            )
            break
        wait = queues.wait_for_token(queue, settings.LIMIT_WAIT, heartbeat.stopped)
        if wait:  # rate-limited for longer than a worker should idle: give the rest back
            _give_back(parent_id, pks[position:], wait)
            break
        token = _current.set(SubtaskContext(parent_id, index, attempts, max_attempts))
        began = time.perf_counter()
        try:
            outcome = Outcome(pk, index, attempts, 0, result=to_json(kind.run_subtask(params)))
        except Exception as exc:
            outcome = Outcome(
                pk,
                index,
                attempts,
                0,
                error=one_line(f"{type(exc).__name__}: {exc}"),
                traceback=traceback.format_exc(),
                fatal=isinstance(exc, (FatalError, *kind.fatal_exceptions)),
                retry_in=exc.delay if isinstance(exc, RetryLater) else None,
            )
        finally:
            _current.reset(token)
        outcome.seconds = time.perf_counter() - began
        recorder.add(outcome)


def _give_back(parent_id: str, pks: list[int], wait: float) -> None:
    """Put claimed, unstarted subtasks back in the queue, to run ``wait`` seconds from now."""
    with transaction.atomic():
        rows = SubTask.objects.filter(pk__in=pks, status=Status.RUNNING)
        indexes = list(rows.order_by("index").values_list("index", flat=True))
        rows.update(status=Status.QUEUED, attempts=F("attempts") - 1, worker="")
    parent = LongTask.objects.get(pk=parent_id)
    eta = timezone.now() + datetime.timedelta(seconds=wait)
    enqueue_indexes(parent, indexes, eta=eta)


def claim(
    parent_id: str, first: int, last: int, indexes: Sequence[int] | None
) -> list[tuple[int, int, Any, int]]:
    """Mark the chunk's claimable subtasks RUNNING; return (pk, index, params, attempt)."""
    with transaction.atomic():
        rows = SubTask.objects.filter(parent_id=parent_id, status__in=CLAIMABLE)
        if indexes is not None:
            rows = rows.filter(index__in=list(indexes))
        else:
            rows = rows.filter(index__gte=first, index__lte=last)
        picked = list(
            rows.select_for_update(skip_locked=True)
            .order_by("index")
            .values_list("pk", "index", "parameters", "attempts")
        )
        if picked:
            now = timezone.now()
            SubTask.objects.filter(pk__in=[row[0] for row in picked]).update(
                status=Status.RUNNING,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                worker=node_name(),
            )
    return [(pk, index, params, attempts + 1) for pk, index, params, attempts in picked]

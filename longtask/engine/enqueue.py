"""The engine's jobs: a task's run, and chunks of a fan-out's subtasks, sized to their work."""

from __future__ import annotations

import datetime
import functools
import math
import time

from django.utils import timezone

from longtask import dispatch
from longtask.conf import settings
from longtask.dispatch import queues
from longtask.kinds import FanOutKind, IterativeKind, Kind, registry
from longtask.models import TOTALS, LongTask, TaskMinute

#: Chunk size used before any subtask duration has been observed.
INITIAL_CHUNK_SIZE = 8
#: The end of a fan-out is spread over the workers in chunks of no less than this
#: share of CHUNK_TARGET_SECONDS of work (0.1 s by default: about one broker poll).
SPREAD_FLOOR = 0.1
#: Quick tasks queued by one transaction share a job, this many at most (engine/batch.py).
BATCH_SIZE = 16
#: Seconds a process keeps its verdict on whether a kind is quick: a "yes" for a minute,
#: a "no" (not run yet, or once slow) for a second, so that a kind's first runs count soon.
QUICK_TTL = 60.0
NOT_QUICK_TTL = 1.0

_quick: dict[str, tuple[float, bool]] = {}


def is_quick(kind: Kind) -> bool:
    """Whether ``kind``'s tasks may share a job: a plain kind (not a fan-out, not
    iterative, no time limit of its own) that has run before and never for over a
    second (its counts: every run in the one-second bucket)."""
    if isinstance(kind, FanOutKind | IterativeKind) or kind.time_limit is not None:
        return False
    now = time.monotonic()
    known = _quick.get(kind.name)
    if known is None or known[0] < now:
        counts = (
            TaskMinute.objects.filter(minute=TOTALS, kind=kind.name)
            .values_list("runs", "runs_le_1")
            .first()
        )
        quick = bool(counts and counts[0] == counts[1] > 0)
        known = _quick[kind.name] = (now + (QUICK_TTL if quick else NOT_QUICK_TTL), quick)
    return known[1]


def task_job(task: LongTask, eta: datetime.datetime | None = None) -> None:
    """Queue the job that runs ``task`` (call inside the transaction that asked for it).

    A job is written in the caller's transaction on the ORM broker. The exception: a
    quick kind's tasks after the first of a transaction (per queue and savepoint) join a
    batch: at the commit the batch goes out as jobs of up to BATCH_SIZE tasks, which a
    worker runs one after another (``engine/batch.py``). Those jobs are written after the
    commit, on either broker; one lost then is found by the sweeper, as on Redis.
    """
    kind = registry.find(task.kind)
    cluster = queues.cluster_for(task.queue)
    quick = eta is None and kind is not None and is_quick(kind)
    if quick:
        batch = dispatch.commit_batch(("tasks", cluster), None)
        if batch is not None:
            batch.append((str(task.pk), task.due_at or timezone.now()))
            return
    _run_job(str(task.pk), cluster, eta=eta, timeout=kind.time_limit if kind else None)
    if quick:  # the transaction's first quick task: the next ones join a batch
        dispatch.commit_batch(("tasks", cluster), functools.partial(_send_batch, cluster))


def _run_job(
    task_id: str,
    cluster: str | None,
    *,
    eta: datetime.datetime | None = None,
    timeout: int | None = None,
    since: datetime.datetime | None = None,
) -> None:
    """Queue the job of one task."""
    dispatch.enqueue_many(
        dispatch.RUN_JOB,
        [(task_id,)],
        name=f"longtask-{task_id}",
        cluster=cluster,
        eta=eta,
        timeout=timeout,
        since=since,
    )


def _send_batch(cluster: str | None, queued: list[tuple[str, datetime.datetime]]) -> None:
    """Each job waits, for the sweeper, since the earliest of its tasks became due."""
    for first in range(0, len(queued), BATCH_SIZE):
        chunk = queued[first : first + BATCH_SIZE]
        task_ids = [task_id for task_id, _due in chunk]
        since = min(due for _task_id, due in chunk)
        if len(task_ids) == 1:
            _run_job(task_ids[0], cluster, since=since)
        else:
            dispatch.enqueue_many(
                dispatch.RUN_TASKS_JOB, [(task_ids,)], cluster=cluster, since=since
            )


def subtask_cluster(kind: FanOutKind) -> str | None:
    """The django-q2 cluster that runs ``kind``'s subtasks."""
    return queues.cluster_for(kind.subtask_queue_name())


def chunk_ranges(task: LongTask, kind: FanOutKind, first: int, count: int) -> None:
    """Queue chunk jobs for the subtasks [first, first + count) just saved."""
    jobs = [(str(task.pk), start, end - 1) for start, end in chunk_bounds(kind, task, first, count)]
    dispatch.enqueue_many(dispatch.CHUNK_JOB, jobs, cluster=subtask_cluster(kind))


def chunk_spans(task: LongTask, kind: FanOutKind, spans: list[tuple[int, int]]) -> None:
    """Queue one chunk job per [start, end) span of subtask indexes."""
    jobs = [(str(task.pk), start, end - 1) for start, end in spans]
    dispatch.enqueue_many(dispatch.CHUNK_JOB, jobs, cluster=subtask_cluster(kind))


def chunk_indexes(task: LongTask, indexes: list[int], eta: datetime.datetime | None = None) -> None:
    """Queue chunk jobs for the given subtask indexes."""
    if not indexes:
        return
    kind = registry.get(task.kind)
    assert isinstance(kind, FanOutKind)
    size = max(1, min(settings.MAX_CHUNK_SIZE // 5, _rate_cap(kind) or settings.MAX_CHUNK_SIZE))
    jobs = [(str(task.pk), 0, 0, indexes[i : i + size]) for i in range(0, len(indexes), size)]
    dispatch.enqueue_many(dispatch.CHUNK_JOB, jobs, cluster=subtask_cluster(kind), eta=eta)


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
    return max(1, min(int(settings.CHUNK_TARGET_SECONDS / mean), _cap(batch_len, kind, mean)))


def _rate_cap(kind: FanOutKind) -> int | None:
    """Under a rate limit, a chunk holds about CHUNK_TARGET_SECONDS of the queue's rate."""
    rate = queues.get_or_default(kind.subtask_queue_name()).rate
    return max(1, math.ceil(rate * settings.CHUNK_TARGET_SECONDS)) if rate else None


def _cap(batch_len: int, kind: FanOutKind, mean: float | None = None) -> int:
    """Leave work for every worker, whatever the estimate says, but not by chunks of
    less than SPREAD_FLOOR of CHUNK_TARGET_SECONDS (given the ``mean`` duration).

    Spreading saves at most a chunk's work, and each smaller round of jobs costs a wait
    for the broker (its poll, 0.1 s): the last 2,000 quick subtasks went in nine rounds
    of halving chunks, 0.8 s of a 10,000-subtask fan-out's 1.5.
    """
    spread = math.ceil(batch_len / (2 * max(1, settings.SUBTASK_PARALLELISM)))
    if mean is not None:
        worth = math.ceil(settings.CHUNK_TARGET_SECONDS * SPREAD_FLOOR / mean)
        spread = max(spread, min(worth, batch_len))
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

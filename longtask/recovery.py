"""Crash recovery: find work whose worker vanished and put it back in the queue.

django-q2 does not notice a killed worker in time (the ORM broker re-delivers only
after ``retry`` and does not count the attempt; the Redis broker loses the job), so
every running task and chunk keeps a heartbeat, and ``sweep()`` (run every few
seconds by ``manage.py longtask_worker``) re-queues what has gone quiet, counting
the lost run as a failed attempt. Every step is a conditional UPDATE, so several
sweepers on several machines may run at once.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from typing import Any

from django.db.models import F
from django.utils import timezone

from longtask import fanout
from longtask.conf import settings
from longtask.kinds import FanOutKind, registry
from longtask.models import LongTask, Status, SubTask

logger = logging.getLogger("longtask")

WORKER_LOST = "WorkerLost: no heartbeat for {seconds:.0f}s (the worker died or was killed)"


def sweep(now: datetime.datetime | None = None) -> dict[str, int]:
    """Re-queue stale tasks and subtasks and finish missed fan-ins; return what was done."""
    now = now or timezone.now()
    stale_before = now - datetime.timedelta(seconds=settings.STALE_AFTER)
    drained = _Drained()
    counts = {
        "tasks": _recover_tasks(now, stale_before),
        "requeued": _recover_lost_jobs(now, stale_before, drained),
        "unstarted": _recover_unstarted(now, stale_before, drained),
        "subtasks": _recover_subtasks(now, stale_before),
        "stalled": _recover_stalled_fan_outs(now, stale_before),
        "fan_ins": _recover_fan_ins(stale_before),
    }
    if any(counts.values()):
        logger.warning("longtask sweep recovered %s", counts)
    return counts


def _recover_tasks(now: datetime.datetime, stale_before: datetime.datetime) -> int:
    """Tasks (and splits) that stopped beating: retry, fail or finish their cancel."""
    from longtask.runner import handle_failure

    recovered = 0
    # A fan-out parent whose split is done waits on its subtasks, not on a worker.
    stale = LongTask.objects.filter(
        status=Status.RUNNING, split_done=False, heartbeat_at__lt=stale_before
    )
    for task in stale:
        kind = registry.find(task.kind)
        if task.cancel_requested_at or kind is None:
            done = task.finish_cancelled(expected_heartbeat=task.heartbeat_at)
        else:
            seconds = (now - task.heartbeat_at).total_seconds()
            error = RuntimeError(WORKER_LOST.format(seconds=seconds))
            handle_failure(task, kind, error, "", expected_heartbeat=task.heartbeat_at)
            done = True
        recovered += int(done)
    return recovered


class _Drained:
    """Whether a queue's broker holds no job at all (asked once per queue per sweep).

    On Redis a job taken by a cluster that then died is gone, and a job that waits in
    the list cannot be told apart from a lost one without scanning it; but once the
    queue's list and delayed set are empty, a task still QUEUED has lost its job. The
    ORM broker never loses one (it hands it out again after ``retry``): never drained.
    """

    def __init__(self) -> None:
        self._seen: dict[str, bool] = {}

    def __call__(self, queue_name: str) -> bool:
        if queue_name not in self._seen:
            from django_q.brokers import get_broker

            from longtask import queues
            from longtask.redis_broker import RedisBroker

            broker = get_broker(queues.cluster_for(queue_name))
            self._seen[queue_name] = isinstance(broker, RedisBroker) and not broker.queue_size()
        return self._seen[queue_name]

    @staticmethod
    def on_redis() -> bool:
        from django_q.conf import Conf

        return bool(Conf.BROKER_CLASS and Conf.BROKER_CLASS.endswith("RedisBroker"))


def _recover_unstarted(
    now: datetime.datetime, stale_before: datetime.datetime, drained: _Drained
) -> int:
    """Redis: tasks that never started and whose queue is empty have lost their first job.

    (A cluster took it and died, or Redis restarted and lost its lists.) Queue it
    again; the heartbeat marks the task so that later quiet periods are handled by
    ``_recover_lost_jobs``.
    """
    if not drained.on_redis():
        return 0
    from longtask.api import enqueue

    waiting = LongTask.objects.filter(
        status=Status.QUEUED, heartbeat_at__isnull=True, created_at__lt=stale_before
    )
    requeued = 0
    for task in waiting.only("pk", "kind", "queue")[:10_000]:
        if not drained(task.queue):
            continue
        if LongTask.objects.filter(pk=task.pk, heartbeat_at__isnull=True).update(heartbeat_at=now):
            enqueue(task)
            requeued += 1
    return requeued


def _recover_lost_jobs(
    now: datetime.datetime, stale_before: datetime.datetime, drained: _Drained
) -> int:
    """Tasks waiting for a job that died with a cluster: queue their job again.

    A task that has run before (it has a heartbeat) and waits again, for its next
    batch (iterative) or its next attempt, may have had that job prefetched by a
    cluster that was then killed: the ORM broker hands it out only after ``retry``
    and Redis never does. Queueing it again is safe, because a task is claimed by a
    conditional UPDATE; the heartbeat is moved so this happens once per quiet period.
    """
    from longtask.api import enqueue

    waiting = LongTask.objects.filter(
        status__in=[Status.QUEUED, Status.RETRYING], heartbeat_at__lt=stale_before
    ).exclude(next_attempt_at__gt=stale_before)
    requeued = 0
    on_redis = drained.on_redis()
    for task in waiting.only("pk", "kind", "queue", "heartbeat_at"):
        if on_redis and not drained(task.queue):
            continue  # its job may be waiting in the list: wait for the list to drain
        if LongTask.objects.filter(pk=task.pk, heartbeat_at=task.heartbeat_at).update(
            heartbeat_at=now
        ):
            enqueue(task)
            requeued += 1
    return requeued


def _recover_subtasks(now: datetime.datetime, stale_before: datetime.datetime) -> int:
    """Subtasks claimed by a chunk that stopped beating: record a failed attempt each."""
    stale = SubTask.objects.filter(
        status=Status.RUNNING, heartbeat_at__lt=stale_before
    ).values_list("pk", "parent_id", "index", "attempts", "heartbeat_at")
    by_parent: dict[Any, list[fanout.Outcome]] = defaultdict(list)
    for pk, parent_id, index, attempts, heartbeat_at in stale[:10_000]:
        seconds = (now - heartbeat_at).total_seconds()
        error = WORKER_LOST.format(seconds=seconds)
        by_parent[parent_id].append(fanout.Outcome(pk, index, attempts, 0, error=error))
    recovered = 0
    for parent_id, outcomes in by_parent.items():
        parent = LongTask.objects.filter(pk=parent_id).only("kind").first()
        kind = registry.find(parent.kind) if parent else None
        if not isinstance(kind, FanOutKind):
            continue
        # record() counts only rows still RUNNING: a chunk that finished meanwhile wins.
        recorded = fanout.record(str(parent_id), kind, outcomes)
        fanout.enqueue_retries(str(parent_id), kind, recorded.retries)
        fanout.try_fan_in(str(parent_id))
        recovered += len(outcomes)
    return recovered


def _recover_stalled_fan_outs(now: datetime.datetime, stale_before: datetime.datetime) -> int:
    """Fan-outs whose queued subtasks stopped moving: queue their chunks again.

    A dead cluster takes the jobs it had prefetched with it (the ORM broker hands
    them out again only after ``retry``; Redis never does), leaving their subtasks
    QUEUED with no heartbeat. The parent's heartbeat moves whenever a chunk of it
    runs or records, so a parent quiet for STALE_AFTER with subtasks left to run has
    lost jobs, or is waiting behind other work: queueing its chunks again is safe
    either way, because a subtask is claimed by a conditional UPDATE.
    """
    stalled = LongTask.objects.filter(
        status=Status.RUNNING, split_done=True, heartbeat_at__lt=stale_before
    )
    requeued = 0
    for parent in stalled.only("pk", "heartbeat_at"):
        # Claim the right to requeue (another sweeper may be on it too).
        if not LongTask.objects.filter(pk=parent.pk, heartbeat_at=parent.heartbeat_at).update(
            heartbeat_at=now
        ):
            continue
        indexes = list(
            SubTask.objects.filter(parent=parent, status__in=fanout.CLAIMABLE)
            .order_by("index")
            .values_list("index", flat=True)
        )
        if indexes:
            fanout.enqueue_indexes(parent, indexes)
            requeued += len(indexes)
    return requeued


def _recover_fan_ins(stale_before: datetime.datetime) -> int:
    """Fan-ins that nobody ran (a worker died between recording and gathering)."""
    # A gather that started long ago and never finished: let it be tried again.
    LongTask.objects.filter(status=Status.RUNNING, fan_in_at__lt=stale_before).update(
        fan_in_at=None
    )
    ready = LongTask.objects.filter(
        status=Status.RUNNING,
        split_done=True,
        fan_in_at__isnull=True,
        subtasks_done=F("subtasks_total"),
    ).values_list("pk", flat=True)
    return sum(fanout.try_fan_in(str(pk)) for pk in ready)

"""Running a task in a worker: claim, run the kind, record the outcome or schedule a retry."""

from __future__ import annotations

import datetime
import json
import logging
import traceback
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from longtask import fanout, iterative, limits, queues
from longtask.conf import settings
from longtask.exceptions import Cancelled, FatalError, RetryLater, TimeLimitExceeded
from longtask.heartbeat import Heartbeat
from longtask.iterative import IterativeKind
from longtask.kinds import FanOutKind, Kind, registry
from longtask.models import LongTask, Status, SubTask

logger = logging.getLogger("longtask")


def to_json(value: Any) -> Any:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def result_to_json(value: Any) -> Any:
    """Return a result as plain JSON data; raise ResultTooLarge if it is over the limit."""
    text = json.dumps(value, cls=DjangoJSONEncoder)
    limits.check_result_size(len(text))  # ASCII-escaped: characters are bytes
    return json.loads(text)


def run(task_id: str) -> None:
    """Run the task once if it can be claimed; a duplicate delivery does nothing."""
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None:
        logger.warning("LongTask id=%s not found; skipping", task_id)
        return
    queue = queues.get_or_default(task.queue)
    slot = _pass_limits(task, queue)
    if slot is None:
        return
    try:
        _run(task, queue, slot)
    finally:
        queues.release_slot(queue, slot)


def _pass_limits(task: LongTask, queue: queues.Queue) -> str | None:
    """Take a concurrency slot and a rate token of ``queue`` for this run.

    Returns the slot's lease token ("" when the queue has no concurrency limit), or
    None when the run must not happen now: the job was then put back on the broker,
    delayed until the limit should allow it (the task stays QUEUED; no attempt counts).
    """
    if queue.rate is None and queue.max_concurrency is None:
        return ""
    if not task.claimable_now():
        return ""  # a duplicate delivery: claim() will refuse it without using the limits
    from longtask.api import enqueue

    slot = queues.acquire_slot_waiting(queue, settings.LIMIT_WAIT)
    if slot is None:
        enqueue(task, eta=timezone.now() + datetime.timedelta(seconds=settings.LIMIT_WAIT))
        logger.info("LongTask id=%s queue=%s at max_concurrency; deferred", task.pk, queue.name)
        return None
    wait = queues.wait_for_token(queue, settings.LIMIT_WAIT)
    if wait:
        queues.release_slot(queue, slot)
        enqueue(task, eta=timezone.now() + datetime.timedelta(seconds=wait))
        logger.info(
            "LongTask id=%s queue=%s rate-limited; deferred %.1fs", task.pk, queue.name, wait
        )
        return None
    return slot


def _run(task: LongTask, queue: queues.Queue, slot: str) -> None:
    if not task.claim():
        logger.info("LongTask id=%s status=%s not claimable; skipping", task.pk, task.status)
        return
    logger.info(
        "LongTask id=%s kind=%s status=RUNNING attempt=%s", task.pk, task.kind, task.attempts
    )
    kind = registry.find(task.kind)
    if kind is None:
        task.fail(f"unknown task kind {task.kind!r}", progress=task.progress_reporter.flush())
        return

    def beat() -> bool:
        # False once the task is no longer ours to run (cancel requested, or taken away).
        queues.renew_slot(queue, slot)
        return bool(
            LongTask.objects.filter(
                pk=task.pk, status=Status.RUNNING, cancel_requested_at__isnull=True
            ).update(heartbeat_at=timezone.now())
        )

    with Heartbeat(beat) as heartbeat:
        task.__dict__["_cancel_event"] = heartbeat.stopped
        try:
            if isinstance(kind, FanOutKind):
                # The parent's job only splits; the last subtask's recorder gathers.
                fanout.split(task, kind)
                return
            if isinstance(kind, IterativeKind):
                finished, result = iterative.run_batch(task, kind)
                if not finished:
                    if task.continue_later():
                        from longtask.api import enqueue

                        enqueue(task)
                    return
                result = result_to_json(result)
            else:
                result = result_to_json(kind.run(task, task.parameters))
        except iterative.BatchTaken:
            logger.info("LongTask id=%s batch already done by another run; skipping", task.pk)
            return
        except Cancelled:
            task.finish_cancelled(task.progress_reporter.flush())
            logger.info("LongTask id=%s kind=%s status=CANCELLED", task.pk, task.kind)
            return
        except Exception as exc:
            handle_failure(task, kind, exc, traceback.format_exc())
            return
    if task.succeed(result, task.progress_reporter.flush()):
        logger.info("LongTask id=%s kind=%s status=SUCCEEDED", task.pk, task.kind)


def time_limit_exceeded(task_id: str) -> None:
    """Count a run stopped at its kind's time limit as a failed attempt."""
    task = LongTask.objects.filter(pk=task_id, status=Status.RUNNING).first()
    kind = registry.find(task.kind) if task else None
    if task is None or kind is None:
        return
    error = TimeLimitExceeded(f"the run took longer than its time limit of {kind.time_limit}s")
    handle_failure(task, kind, error, "")


def _progress_of(task: LongTask) -> dict[str, Any] | None:
    if task.is_fanout:
        return fanout.fanout_record(task)
    if "_progress_reporter" in task.__dict__:  # this process ran it: flush the last value
        return task.progress_reporter.flush()
    return task.progress_record()  # recovering another worker's task: what it last wrote


def handle_failure(
    task: LongTask,
    kind: Kind,
    exc: BaseException,
    tb: str,
    *,
    expected_heartbeat: Any = None,
) -> None:
    """Fail the task for good or schedule its next attempt under the kind's retry policy."""
    error = f"{type(exc).__name__}: {exc}"
    policy = kind.retry_policy()
    age = (timezone.now() - task.created_at).total_seconds()
    fatal = isinstance(exc, (FatalError, *kind.fatal_exceptions))
    if not fatal and not policy.gives_up(task.attempts, age):
        delay = exc.delay if isinstance(exc, RetryLater) else policy.delay(task.attempts)
        next_at = timezone.now() + datetime.timedelta(seconds=delay)
        if task.schedule_retry(
            error, tb, next_at, _progress_of(task), expected_heartbeat=expected_heartbeat
        ):
            from longtask.api import enqueue

            enqueue(task, eta=next_at)
            logger.warning(
                "LongTask id=%s kind=%s status=RETRYING attempt=%s delay=%.1fs error=%s",
                task.pk,
                task.kind,
                task.attempts,
                delay,
                error,
            )
        return
    if task.fail(error, tb, _progress_of(task), expected_heartbeat=expected_heartbeat):
        SubTask.objects.filter(parent=task, status__in=fanout.CLAIMABLE).update(
            status=Status.CANCELLED
        )
        logger.error("LongTask id=%s kind=%s status=FAILED error=%s", task.pk, task.kind, error)

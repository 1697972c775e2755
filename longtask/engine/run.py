"""Running a task in a worker: claim, run the kind (or a fan-out's split or gather), record.

Every write of the run is fenced by the token its claim got (``states.Run``).
"""

from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Literal
from uuid import UUID

from django.utils import timezone
from django_q.exceptions import TimeoutException

from longtask.conf import settings
from longtask.dispatch import concurrency, queues, ratelimit
from longtask.engine import iterative, split, states
from longtask.engine.current import running
from longtask.engine.heartbeat import Heartbeat
from longtask.engine.values import result_to_json
from longtask.exceptions import (
    Cancelled,
    FatalError,
    InvalidParameters,
    InvalidStoredParameters,
    RetryLater,
    TimeLimitExceeded,
)
from longtask.kinds import TASK_KIND_PREFIX, FanOutKind, IterativeKind, Kind, registry
from longtask.models import LongTask, SubTask
from longtask.progress import ProgressRecord
from longtask.serialize import JSON, JSONObject

logger = logging.getLogger("longtask")


def run(task_id: str) -> None:
    """Run the task once if it can be claimed; a duplicate delivery does nothing."""
    if not queues.any_limited():
        # No queue has a limit to pass: the claim is the run's first statement.
        _claim_and_run(task_id, None, "")
        return
    # The parameters are read by stored_parameters, which fails a row Python cannot decode.
    task = LongTask.objects.defer("parameters").filter(pk=task_id).first()
    if task is None:
        logger.warning("LongTask id=%s not found; skipping", task_id)
        return
    queue = queues.get_or_default(task.queue)
    slot = _pass_limits(task, queue)
    if slot is None:
        return
    try:
        _claim_and_run(task_id, queue, slot)
    finally:
        concurrency.release_slot(queue, slot)


def _pass_limits(task: LongTask, queue: queues.Queue) -> str | None:
    """Take a concurrency slot and a rate token of ``queue`` for this run.

    Returns the slot's lease token ("" when the queue has no concurrency limit), or
    None when the run must not happen now: the job was then put back on the broker,
    delayed until the limit should allow it (the task stays QUEUED; no attempt counts).
    """
    if queue.rate is None and queue.max_concurrency is None:
        return ""
    if not task.claimable_now():
        return ""  # a duplicate delivery: the claim will refuse it without using the limits
    slot = concurrency.acquire_slot_waiting(queue, settings.LIMIT_WAIT)
    if slot is None:
        states.defer(task, timezone.now() + datetime.timedelta(seconds=settings.LIMIT_WAIT))
        logger.info("LongTask id=%s queue=%s at max_concurrency; deferred", task.pk, queue.name)
        return None
    wait = ratelimit.wait_for_token(queue, settings.LIMIT_WAIT)
    if wait:
        concurrency.release_slot(queue, slot)
        states.defer(task, timezone.now() + datetime.timedelta(seconds=wait))
        logger.info(
            "LongTask id=%s queue=%s rate-limited; deferred %.1fs", task.pk, queue.name, wait
        )
        return None
    return slot


def _keeps_runs(kind_name: str) -> bool:
    known = registry.find(kind_name)
    return bool(known and known.keeps_runs)


def _claim_and_run(task_id: str, queue: queues.Queue | None, slot: str) -> None:
    """Claim and run the task; ``queue`` and ``slot`` are the concurrency lease it holds
    (None and "" when no queue has limits)."""
    claimed = states.claim(
        task_id,
        keep_runs=_keeps_runs,
        runs_by_prefix=registry.runs_kept_only_under(TASK_KIND_PREFIX),
    )
    if claimed is None:
        logger.info("LongTask id=%s not claimable (or not found); skipping", task_id)
        return
    run_, task = claimed
    logger.info(
        "LongTask id=%s kind=%s status=RUNNING attempt=%s", task.pk, task.kind, task.attempts
    )
    kind = registry.find(task.kind)
    if kind is None:
        states.fail(run_, task, states.Failure(f"unknown task kind {task.kind!r}"))
        return

    def beat() -> bool:
        if queue is not None:
            concurrency.renew_slot(queue, slot)
        return states.beat(run_)

    with Heartbeat(beat) as heartbeat:
        task.__dict__["_cancel_event"] = heartbeat.stopped
        try:
            with _time_limit(run_, task, kind), running(task):
                result = _run_kind(run_, task, kind)
        except iterative.BatchTaken:
            logger.warning("LongTask id=%s lost its run (token %s); stopping", task.pk, run_.token)
            return
        except Cancelled:
            if states.finish_cancelled(run_, task.progress_reporter.flush()):
                logger.info("LongTask id=%s kind=%s status=CANCELLED", task.pk, task.kind)
                kind.on_finished(task)
            return
        except TimeoutException:
            raise  # counted by _time_limit; django-q2 replaces the worker process
        except (Exception, SystemExit) as exc:
            # A SystemExit (exit() in the task's code) fails the attempt like any error,
            # rather than stopping the worker with the task left RUNNING until recovery.
            handle_failure(run_, task, kind, exc, traceback.format_exc())
            return
    if result is _NOTHING:
        return
    progress = _progress_of(task, kind)
    if states.succeed(run_, result, progress, task, _may_have_cached_progress(task, kind)):
        after = " after fan-in" if task.fan_in_at is not None else ""
        logger.info("LongTask id=%s kind=%s status=SUCCEEDED%s", task.pk, task.kind, after)
        kind.on_finished(task)


_NOTHING = object()


def _run_kind(run_: states.Run, task: LongTask, kind: Kind) -> JSON | object:
    """Run one step of the task; return its result, or _NOTHING when it does not end here."""
    task.parameters = stored_parameters(kind, task)
    if isinstance(kind, FanOutKind):
        if task.fan_in_at is None:
            # The parent's job splits; the last subtask's recorder queues the gather.
            split.split(run_, task, kind)
            return _NOTHING
        results = Results(task.pk, task.subtasks_total)
        return result_to_json(kind.gather(task, results))
    if isinstance(kind, IterativeKind):
        finished, result = iterative.run_batch(run_, task, kind)
        if not finished:
            states.continue_later(run_, task)
            return _NOTHING
        return result_to_json(result)
    return result_to_json(kind.run(task, task.parameters))


#: How a stored value that is not a JSON object is named in the error.
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def stored_parameters(kind: Kind, task: LongTask) -> JSONObject:
    """The task's parameters as its kind's validation reads them; InvalidStoredParameters if not.

    ``start()`` saves what the kind's form cleaned, but a row can be written around it
    (SQL, the admin, a bug, a form changed since): each run, split, batch and gather
    checks again, so such a row fails at once with the form's message instead of
    reaching the kind's code, where it raised KeyError or TypeError on each attempt, or
    split a quilt of 10**18 squares until the time limit, attempt after attempt. The
    kind gets the cleaned parameters, so a form must accept its own cleaned output (a
    field added since gets its default).
    """
    try:
        # Typed as an object, but a row written around start() may hold any JSON value.
        params: object = task.parameters  # deferred by the claim when undecodable
    except (ValueError, RecursionError) as exc:  # JSON Python cannot decode (a 5,000-digit int)
        raise InvalidStoredParameters(
            f"the parameters cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(params, dict):
        found = _JSON_TYPES.get(type(params), "null")
        raise InvalidStoredParameters(f"invalid parameters: a JSON object is needed, not {found}")
    try:
        return kind.clean_parameters(params)
    except InvalidParameters as exc:
        raise InvalidStoredParameters(str(exc)) from exc
    except (
        TypeError,
        ValueError,
        LookupError,
        AttributeError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        # A kind's own clean_parameters (a django.tasks function's: "args" not a list).
        raise InvalidStoredParameters(f"invalid parameters: {type(exc).__name__}: {exc}") from exc


class _time_limit:
    """Count a run stopped at its time limit (django-q2 raises a SystemExit) as a failed attempt.

    The exception is re-raised, so that django-q2 replaces the worker process as it
    does after a timeout.
    """

    def __init__(self, run_: states.Run, task: LongTask, kind: Kind) -> None:
        self.run, self.task, self.kind = run_, task, kind

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, TimeoutException):
            limit = self.kind.time_limit or "the cluster's timeout"
            error = TimeLimitExceeded(f"the run took longer than its time limit of {limit}s")
            handle_failure(self.run, self.task, self.kind, error, "")
        return False


class Results:
    """A fan-out's subtask results in index order, read in pages rather than all at once."""

    def __init__(self, parent_id: UUID, total: int) -> None:
        self.parent_id = parent_id
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[JSON]:
        rows = (
            SubTask.objects.filter(parent_id=self.parent_id)
            .order_by("index")
            .values_list("result", flat=True)
        )
        return rows.iterator(chunk_size=2000)


def _progress_of(task: LongTask, kind: Kind | None) -> ProgressRecord | None:
    if isinstance(kind, FanOutKind):
        task.refresh_from_db()
        return task.fanout_progress()
    if "_progress_reporter" in task.__dict__:  # this process ran it: flush the last value
        return task.progress_reporter.flush()
    if not _may_have_cached_progress(task, kind):
        return None
    return task.progress_record()  # an earlier attempt's: what it last wrote


def _may_have_cached_progress(task: LongTask, kind: Kind | None) -> bool:
    """Whether the cache may hold progress of ``task`` as its run ends.

    Not when this run reported none and it is the task's first attempt since it was
    queued: a finish deletes the cached record, and only a run writes one. (A retry's
    attempt, or an iterative task's next batch, may find the previous one's.)
    """
    return (
        "_progress_reporter" in task.__dict__
        or task.attempts != 1
        or isinstance(kind, (FanOutKind, IterativeKind))
    )


def is_fatal(kind: Kind, exc: BaseException) -> bool:
    """Say whether a failure may not be retried (FatalError or one of the kind's fatal ones)."""
    return isinstance(exc, (FatalError, *kind.fatal_exceptions))


def retry_delay(exc: BaseException) -> float | None:
    """The delay a failure asked for with RetryLater, if any."""
    return exc.delay if isinstance(exc, RetryLater) else None


def exception_path(exc: BaseException) -> str:
    """The dotted path of ``exc``'s class, as django.tasks' TaskError keeps it."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def handle_failure(
    run_: states.Run, task: LongTask, kind: Kind, exc: BaseException, tb: str
) -> None:
    """Fail the task for good or schedule its next attempt under the kind's retry policy."""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(kind, FanOutKind) and task.fan_in_at is not None:
        error = f"gather: {error}"
    failure = states.Failure(error, tb, _progress_of(task, kind), exception_path(exc))
    policy = kind.retry_policy()
    age = (timezone.now() - task.created_at).total_seconds()
    if not is_fatal(kind, exc) and not policy.gives_up(task.attempts, age):
        delay = retry_delay(exc)
        delay = policy.delay(task.attempts) if delay is None else delay
        next_at = timezone.now() + datetime.timedelta(seconds=delay)
        if states.schedule_retry(run_, task, failure, next_at):
            logger.warning(
                "LongTask id=%s kind=%s status=RETRYING attempt=%s delay=%.1fs error=%s",
                task.pk,
                task.kind,
                task.attempts,
                delay,
                error,
            )
        return
    if states.fail(run_, task, failure):
        logger.error("LongTask id=%s kind=%s status=FAILED error=%s", task.pk, task.kind, error)
        kind.on_finished(task)

"""Running a task in a worker: claim, run the kind (or a fan-out's split or gather), record.

Every write of the run is fenced by the token its claim got (``states.Run``).
"""

from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Iterator
from uuid import UUID

from django.utils import timezone
from django_q.exceptions import TimeoutException

from longtask.conf import settings
from longtask.dispatch import concurrency, queues, ratelimit
from longtask.engine import failures, iterative, split, states
from longtask.engine.current import running
from longtask.engine.heartbeat import Heartbeat
from longtask.engine.values import result_to_json
from longtask.exceptions import (
    Cancelled,
    InvalidParameters,
    InvalidStoredParameters,
)
from longtask.kinds import TASK_KIND_PREFIX, FanOutKind, IterativeKind, Kind, registry
from longtask.models import LongTask, SubTask
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
            with failures.time_limit(run_, task, kind), running(task):
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
            raise  # counted by failures.time_limit; django-q2 replaces the worker process
        except (Exception, SystemExit) as exc:
            # A SystemExit (exit() in the task's code) fails the attempt like any error,
            # rather than stopping the worker with the task left RUNNING until recovery.
            failures.handle_failure(run_, task, kind, exc, traceback.format_exc())
            return
    if result is _NOTHING:
        return
    progress = failures.progress_of(task, kind)
    cached = failures.may_have_cached_progress(task, kind)
    if states.succeed(run_, result, progress, task, cached):
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

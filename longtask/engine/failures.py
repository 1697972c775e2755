"""A run's failure: whether it may be retried, and its next attempt or its end (with the
progress that any run's end keeps).

Used by the run itself (``engine/run.py``), by a chunk for each subtask's failure
(``engine/chunks.py``: fatal or not, and a RetryLater's delay) and by the sweeper for a
run whose worker vanished (``engine/recovery.py``). Every write is fenced by the run's
token (``states.Run``).
"""

from __future__ import annotations

import datetime
import logging
from types import TracebackType
from typing import Literal

from django.utils import timezone
from django_q.exceptions import TimeoutException

from longtask.engine import states
from longtask.exceptions import FatalError, RetryLater, TimeLimitExceeded
from longtask.kinds import FanOutKind, IterativeKind, Kind
from longtask.models import LongTask
from longtask.progress import ProgressRecord

logger = logging.getLogger("longtask")


class time_limit:
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


def progress_of(task: LongTask, kind: Kind | None) -> ProgressRecord | None:
    """The progress a run's end keeps on the row (a success's too): a fan-out's from its
    counters, else the last one reported, by this run or an earlier attempt."""
    if isinstance(kind, FanOutKind):
        task.refresh_from_db()
        return task.fanout_progress()
    if "_progress_reporter" in task.__dict__:  # this process ran it: flush the last value
        return task.progress_reporter.flush()
    if not may_have_cached_progress(task, kind):
        return None
    return task.progress_record()  # an earlier attempt's: what it last wrote


def may_have_cached_progress(task: LongTask, kind: Kind | None) -> bool:
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
    failure = states.Failure(error, tb, progress_of(task, kind), exception_path(exc))
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

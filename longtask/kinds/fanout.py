"""FanOutKind: work spread over many subtasks and gathered back once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from longtask.conf import settings
from longtask.kinds.base import Kind
from longtask.kinds.retry import RetryPolicy
from longtask.serialize import JSON, JSONObject

if TYPE_CHECKING:
    from longtask.models import LongTask


class FanOutKind(Kind):
    """A kind whose work is spread over many subtasks and gathered back once.

    ``run_subtask`` may run more than once for one subtask (a worker can die after
    the work and before the bookkeeping): it must be idempotent. Its result is
    counted exactly once.
    """

    #: FAIL_FAST: the first subtask that fails for good fails the parent and skips the
    #: rest. TOLERATE: the parent completes; failed subtasks have a null result.
    FAIL_FAST: ClassVar[str] = "fail_fast"
    TOLERATE: ClassVar[str] = "tolerate"
    failure_policy: ClassVar[str] = FAIL_FAST
    #: Queue of the subtasks (their rate and concurrency limits apply per subtask
    #: and per chunk); None means LONGTASK_SUBTASK_QUEUE.
    subtask_queue: ClassVar[str | None] = None
    #: Subtasks per django-q2 job; None picks it from the observed subtask duration.
    chunk_size: ClassVar[int | None] = None
    #: Retries of one subtask (backoff from the last failure of that subtask).
    subtask_retry: ClassVar[RetryPolicy] = RetryPolicy(
        max_attempts=3, min_backoff=0.2, max_backoff=10.0, max_doublings=4
    )

    def subtask_queue_name(self) -> str:
        return self.subtask_queue or settings.SUBTASK_QUEUE

    def split(self, params: JSONObject) -> Iterable[JSONObject]:
        """Yield the parameters of each subtask, in index order (a generator is best)."""
        raise NotImplementedError

    def run_subtask(self, params: JSONObject) -> JSON:
        """Do one subtask and return its JSON-able result."""
        raise NotImplementedError

    def gather(self, task: LongTask, results: Iterable[JSON]) -> JSON:
        """Combine the subtasks' results (iterated in index order) into the parent's result."""
        return list(results)

    def run(self, task: LongTask, params: JSONObject) -> JSON:
        raise TypeError("a fan-out kind runs through split/run_subtask/gather, not run")

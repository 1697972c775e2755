"""Running a chunk of a fan-out's subtasks: claim them under one token, run, record.

A chunk job claims its claimable subtasks (one new token for all of them), runs them
one by one, and records the outcomes in few transactions (``states.record``). Every
write is fenced by the chunk's token: if the sweeper or a retry took its subtasks
meanwhile, what it records for them is refused.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils import timezone

from longtask import dispatch
from longtask.conf import settings
from longtask.dispatch import concurrency, queues, ratelimit
from longtask.engine import states
from longtask.engine.failures import is_fatal, retry_delay
from longtask.engine.heartbeat import Heartbeat
from longtask.engine.values import to_json
from longtask.exceptions import ResultTooLarge
from longtask.guards import sizes
from longtask.kinds import FanOutKind, registry
from longtask.models import LongTask, Status, one_line

logger = logging.getLogger("longtask")


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


class Recorder:
    """Collects a chunk's outcomes and records them apart from the work, in few transactions."""

    def __init__(self, parent_id: str, kind: FanOutKind) -> None:
        self.parent_id = parent_id
        self.kind = kind
        self.pending: list[states.Outcome] = []
        self.stopped = False
        self._last_flush = time.monotonic()

    def add(self, outcome: states.Outcome) -> None:
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
        recorded = states.record(self.parent_id, self.kind, pending)
        self.stopped = not recorded.parent_running


def _limit_result(outcome: states.Outcome) -> None:
    """Turn a too-large subtask result into a failure that is not retried (it would recur)."""
    try:
        sizes.check_result_size(sizes.json_size(outcome.result))
    except ResultTooLarge as exc:
        outcome.result = None
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.fatal = True


def run_chunk(parent_id: str, first: int, last: int, indexes: Sequence[int] | None = None) -> None:
    """Run the claimable subtasks of one chunk and record their outcomes."""
    parent = LongTask.objects.filter(pk=parent_id).only("pk", "kind", "status").first()
    if parent is None or parent.status != Status.RUNNING:
        return
    kind = registry.find(parent.kind)
    if not isinstance(kind, FanOutKind):
        logger.error("LongTask id=%s: kind %r is not a fan-out here", parent_id, parent.kind)
        return
    queue = queues.get_or_default(kind.subtask_queue_name())
    slot = concurrency.acquire_slot_waiting(queue, settings.LIMIT_WAIT)
    if slot is None:  # the queue is at max_concurrency: try this chunk again shortly
        later = timezone.now() + datetime.timedelta(seconds=settings.LIMIT_WAIT)
        dispatch.enqueue_many(
            dispatch.CHUNK_JOB,
            [(parent_id, first, last, indexes)],
            cluster=queue.cluster,
            eta=later,
        )
        return
    try:
        claimed = states.claim_subtasks(parent_id, first, last, indexes)
        if claimed.rows:
            _run_claimed(kind, queue, slot, parent_id, claimed)
    finally:
        concurrency.release_slot(queue, slot)


def _run_claimed(
    kind: FanOutKind, queue: queues.Queue, slot: str, parent_id: str, claimed: states.Claimed
) -> None:
    recorder = Recorder(parent_id, kind)
    pks = [row[0] for row in claimed.rows]

    def beat() -> bool:
        # False once the parent stopped, or every subtask of ours was taken from us.
        concurrency.renew_slot(queue, slot)
        ours = states.beat_subtasks(claimed.token, pks)
        running = LongTask.objects.filter(pk=parent_id, status=Status.RUNNING).exists()
        return bool(ours) and running

    with Heartbeat(beat) as heartbeat:
        try:
            _run_rows(kind, queue, parent_id, claimed, recorder, heartbeat)
        finally:
            # Even when the run is cut short (a time limit), what finished is recorded;
            # the interrupted subtask stays RUNNING and is recovered by the sweeper.
            recorder.flush()


def _run_rows(
    kind: FanOutKind,
    queue: queues.Queue,
    parent_id: str,
    claimed: states.Claimed,
    recorder: Recorder,
    heartbeat: Heartbeat,
) -> None:
    pks = [row[0] for row in claimed.rows]
    max_attempts = kind.subtask_retry.max_attempts
    for position, (pk, index, params, attempts) in enumerate(claimed.rows):
        if recorder.stopped or heartbeat.stopped.is_set():
            # The parent failed fast or was cancelled (or took our rows): stop here.
            recorder.flush()
            states.stop_subtasks(parent_id, claimed.token, pks[position:])
            return
        wait = ratelimit.wait_for_token(queue, settings.LIMIT_WAIT, heartbeat.stopped)
        if wait:  # rate-limited for longer than a worker should idle: give the rest back
            recorder.flush()
            eta = timezone.now() + datetime.timedelta(seconds=wait)
            states.give_back(parent_id, claimed.token, pks[position:], eta)
            return
        context = _current.set(SubtaskContext(parent_id, index, attempts, max_attempts))
        began = time.perf_counter()
        outcome = states.Outcome(pk, index, attempts, 0, token=claimed.token)
        try:
            outcome.result = to_json(kind.run_subtask(params))
        except Exception as exc:
            outcome.error = one_line(f"{type(exc).__name__}: {exc}")
            outcome.traceback = traceback.format_exc()
            outcome.fatal = is_fatal(kind, exc)
            outcome.retry_in = retry_delay(exc)
        finally:
            _current.reset(context)
        outcome.seconds = time.perf_counter() - began
        recorder.add(outcome)

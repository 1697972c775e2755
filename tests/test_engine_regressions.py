"""Regression tests for the engine review of 2026-11-28 (issue 12, items 1-12).

Each test asserts the right behaviour of a scenario that the review reproduced on the
engine before the fenced state machine (its notes: ../shared/reviews/2026-11-28-engine).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from django_q.exceptions import TimeoutException

import longtask
from longtask import api
from longtask.dispatch import queues
from longtask.engine import chunks, recovery, split, states
from longtask.engine import run as runner
from longtask.kinds import FanOutKind, Kind, RetryPolicy, registry
from longtask.live import watcher as live
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.helpers import claim, drain_queue, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

#: Long enough for any one step of these tests on a busy two-core machine.
DEADLINE = 30

#: (thread ident) of every gather call of SlowGather and TimeoutGather.
GATHER_CALLS: list[int] = []
#: Set by a test to let SlowGather's gather return.
GATHER_RELEASE = threading.Event()
#: Set by SlowGather once its gather has begun.
GATHER_BEGAN = threading.Event()
#: Ids of the tasks started by Spawning's subtasks.
SPAWNED: list[str] = []


class SlowGather(test_kinds.Squares):
    """A fan-out whose gather takes as long as the test says."""

    name = "test-slow-gather"

    def gather(self, task: Any, results: Any) -> Any:
        GATHER_CALLS.append(threading.get_ident())
        GATHER_BEGAN.set()
        assert GATHER_RELEASE.wait(DEADLINE), "the test never let the gather finish"
        return list(results)


class TimeoutGather(test_kinds.Squares):
    """A fan-out whose first gather is stopped at its time limit (as django-q2 does)."""

    name = "test-timeout-gather"

    def gather(self, task: Any, results: Any) -> Any:
        GATHER_CALLS.append(threading.get_ident())
        if len(GATHER_CALLS) == 1:
            raise TimeoutException("Task exceeded maximum timeout value (1 seconds)")
        return list(results)


class TolerantOneShot(test_kinds.Squares):
    """Each subtask has one attempt, and failed ones are tolerated."""

    name = "test-squares-tolerant-oneshot"
    failure_policy = FanOutKind.TOLERATE
    subtask_retry = RetryPolicy(max_attempts=1)


class Spawning(test_kinds.Squares):
    """Each subtask starts a task of its own, as a kind may."""

    name = "test-spawning"

    def run_subtask(self, params: dict[str, Any]) -> Any:
        SPAWNED.append(str(longtask.start("test-count", {"n": 1}).pk))
        return params["i"]


class Gate(Kind):
    """Reports progress until cancelled; once retried, it finishes in about half a second."""

    name = "test-gate"
    retry = RetryPolicy(max_attempts=1)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        retried = any(event["event"] == "retried" for event in task.history)
        steps = 25 if retried else 3000
        for i in range(steps):
            task.progress(i, steps, "working")
            time.sleep(0.02)  # the work: several heartbeats long in all
        return "finished" if retried else "never cancelled"


OUR_KINDS = [SlowGather, TimeoutGather, TolerantOneShot, Spawning, Gate]


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered: None) -> Iterator[None]:
    for kind in OUR_KINDS:
        registry.register(kind)
    test_kinds.GATHERED.clear()
    test_kinds.FAILING.clear()
    GATHER_CALLS.clear()
    GATHER_RELEASE.clear()
    GATHER_BEGAN.clear()
    SPAWNED.clear()
    yield from broker.emptied()
    GATHER_RELEASE.set()
    test_kinds.FAILING.clear()
    for kind in OUR_KINDS:
        registry.unregister(kind.name)


def later(seconds: float = 3600) -> datetime.datetime:
    return timezone.now() + datetime.timedelta(seconds=seconds)


def stale(seconds: float = 300) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(seconds=seconds)


def squares(params: range) -> list[dict[str, Any]]:
    """Subtask parameters as the Squares kinds' split makes them."""
    return [{"i": i, "fail": False, "flaky": 0} for i in params]


def split_all(task: LongTask) -> states.Run:
    """Claim a fan-out and split it in one batch, dropping the jobs that queued."""
    run = claim(task)
    assert run is not None
    with override_settings(LONGTASK_SPLIT_BATCH=100_000):
        split.split(run, task, registry.get(task.kind))
    broker.clear()
    task.refresh_from_db()
    return run


def statuses(task: LongTask) -> dict[int, str]:
    return dict(SubTask.objects.filter(parent=task).values_list("index", "status"))


def assert_counters_match_rows(task: LongTask) -> None:
    """The parent's counters are the counts of its subtask rows by status."""
    task.refresh_from_db()
    by_status = Counter(SubTask.objects.filter(parent=task).values_list("status", flat=True))
    assert task.subtasks_total == sum(by_status.values())
    assert task.subtasks_done == by_status[Status.SUCCEEDED] + by_status[Status.FAILED]
    assert task.subtasks_failed == by_status[Status.FAILED]
    seqs = [
        s for s in SubTask.objects.filter(parent=task).values_list("finish_seq", flat=True) if s
    ]
    assert len(seqs) == len(set(seqs)) == task.subtasks_done


def outcome(row: tuple[int, int, Any, int], token: str, **fields: Any) -> states.Outcome:
    pk, index, _params, attempts = row
    return states.Outcome(pk, index, attempts, 0.01, token=token, **fields)


# Item 1: retry of a fan-out stopped mid-split ------------------------------------------


def test_A_retry_after_cancel_mid_split_completes_with_every_square():
    task = longtask.start("test-squares", {"n": 10})
    run = claim(task)
    kind = registry.get("test-squares")
    # The first batch is saved, then the user cancels while the split goes on.
    assert states.save_split_batch(run, task, kind, squares(range(4)))
    broker.clear()
    assert api.cancel(task)
    assert task.status == Status.CANCELLED
    assert set(statuses(task).values()) == {Status.CANCELLED}
    # The split's next batch is refused: the run no longer holds the task.
    assert not states.save_split_batch(run, task, kind, squares(range(4, 8)))

    assert api.retry(task)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.error, statuses(task))
    assert task.result == [i * i for i in range(10)]
    assert (task.subtasks_done, task.subtasks_failed, task.subtasks_total) == (10, 0, 10)
    assert [str(task.pk)] == test_kinds.GATHERED
    assert_counters_match_rows(task)


def test_A2_retry_after_fail_fast_mid_split_re_runs_the_failed_subtask():
    test_kinds.FAILING.add(1)
    with override_settings(LONGTASK_SPLIT_BATCH=4):
        task = longtask.start("test-squares-switchable", {"n": 12})
        run = claim(task)
        kind = registry.get("test-squares-switchable")
        assert states.save_split_batch(run, task, kind, squares(range(4)))
        drain_queue()  # the first chunk fails index 1: the parent fails fast mid-split
        task.refresh_from_db()
        assert task.status == Status.FAILED and not task.split_done
        assert task.error.startswith("subtask 1 failed")

        test_kinds.FAILING.clear()  # the operator fixed the cause
        assert api.retry(task)
        drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.error, statuses(task))
    assert task.result == [i * i for i in range(12)]  # no hole where index 1 failed
    assert (task.subtasks_done, task.subtasks_failed, task.subtasks_total) == (12, 0, 12)
    failed_once = SubTask.objects.get(parent=task, index=1)
    assert failed_once.status == Status.SUCCEEDED and failed_once.result == 1
    assert [str(task.pk)] == test_kinds.GATHERED
    assert_counters_match_rows(task)


def test_A2_a_retried_subtask_that_fails_again_fails_the_task_again():
    with override_settings(LONGTASK_SPLIT_BATCH=4):
        task = longtask.start("test-squares-oneshot", {"n": 12, "fail_index": 1})
        run = claim(task)
        kind = registry.get("test-squares-oneshot")
        batch = [{"i": i, "fail": i == 1, "flaky": 0} for i in range(4)]
        assert states.save_split_batch(run, task, kind, batch)
        drain_queue()
        task.refresh_from_db()
        assert task.status == Status.FAILED
        assert api.retry(task)
        drain_queue()
    task.refresh_from_db()
    # Index 1 ran again and failed again: never SUCCEEDED with a None in the result.
    assert task.status == Status.FAILED and task.result is None
    assert SubTask.objects.get(parent=task, index=1).status == Status.FAILED
    assert test_kinds.GATHERED == []
    assert_counters_match_rows(task)


# Item 2: gather runs once, fenced and time-limited ---------------------------------------


@override_settings(LONGTASK_STALE_AFTER=1, LONGTASK_HEARTBEAT_INTERVAL=0.1)
def test_B_a_gather_slower_than_stale_after_runs_once_while_sweeps_run():
    task = longtask.start("test-slow-gather", {"n": 3})
    errors: list[BaseException] = []
    sweeps: list[dict[str, int]] = []
    worker_done = threading.Event()

    def work() -> None:
        try:
            drain_queue()  # split, chunks, then the gather, which blocks
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            worker_done.set()
            close_old_connections()

    def sweep_until_done() -> None:
        began = None
        try:
            while not worker_done.is_set():
                sweeps.append(recovery.sweep())
                if GATHER_BEGAN.is_set():
                    began = began or time.monotonic()
                    # Let the gather end once it has run 2.5 x STALE_AFTER under sweeps.
                    if time.monotonic() - began >= 2.5:
                        GATHER_RELEASE.set()
                worker_done.wait(0.1)  # the sweep interval, scaled down
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            GATHER_RELEASE.set()
        finally:
            close_old_connections()

    worker = threading.Thread(target=work, name="worker")
    sweeper = threading.Thread(target=sweep_until_done, name="sweeper")
    worker.start()
    sweeper.start()
    worker.join(DEADLINE)
    worker_done.set()
    sweeper.join(DEADLINE)
    assert not errors, errors
    assert GATHER_RELEASE.is_set(), "the gather never started"

    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, task.error
    assert task.result == [0, 1, 4]
    assert [worker.ident] == GATHER_CALLS  # once, and never in the sweeper's thread
    assert len(sweeps) >= 10
    assert all(s["tasks"] == 0 and s["fan_ins"] == 0 for s in sweeps), sweeps
    # Nothing is left for a later sweep to gather again.
    recovery.sweep(now=later())
    drain_queue()
    assert [worker.ident] == GATHER_CALLS


def test_B_a_time_out_inside_gather_is_a_failed_attempt_of_the_gather_retried():
    task = longtask.start("test-timeout-gather", {"n": 3})
    # django-q2 raises TimeoutException (a SystemExit) in the worker at its time limit;
    # the run records the failed attempt and lets it through to end the worker.
    with pytest.raises(TimeoutException):
        drain_queue()
    task.refresh_from_db()
    assert task.status == Status.RETRYING, task.error
    assert "TimeLimitExceeded" in task.error
    assert task.fan_in_at is not None  # it is the gather that is retried, not the split
    assert task.subtasks_done == 3

    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, task.error
    assert task.result == [0, 1, 4]
    assert len(GATHER_CALLS) == 2
    # The subtasks ran once: only the gather was tried again.
    assert set(SubTask.objects.filter(parent=task).values_list("attempts", flat=True)) == {1}
    assert_counters_match_rows(task)


# Item 3: counters move by what moved -------------------------------------------------------


def test_item3_a_stale_chunk_recording_after_the_sweeper_moves_no_counter():
    task = longtask.start("test-squares-tolerant-oneshot", {"n": 4})
    split_all(task)
    kind = registry.get(task.kind)
    claimed = states.claim_subtasks(str(task.pk), 0, 3, None)
    assert len(claimed.rows) == 4
    # The chunk records its first subtask, then goes quiet (slow, but alive).
    states.record(str(task.pk), kind, [outcome(claimed.rows[0], claimed.token, result=0)])
    SubTask.objects.filter(parent=task, status=Status.RUNNING).update(heartbeat_at=stale())
    assert recovery.sweep()["subtasks"] == 3  # recorded as lost: FAILED, their only attempt
    assert_counters_match_rows(task)
    assert (task.subtasks_done, task.subtasks_failed) == (4, 3)

    # The chunk wakes up and records the three it was running.
    late = [outcome(row, claimed.token, result=row[1] ** 2) for row in claimed.rows[1:]]
    recorded = states.record(str(task.pk), kind, late)
    assert recorded.moved == 0
    assert_counters_match_rows(task)
    assert (task.subtasks_done, task.subtasks_failed) == (4, 3)

    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, task.error
    assert task.result == [0, None, None, None]
    assert [str(task.pk)] == test_kinds.GATHERED
    assert_counters_match_rows(task)


def test_item3_a_stale_chunk_recording_after_its_rows_were_retried_moves_no_counter():
    task = longtask.start("test-squares", {"n": 4})  # three attempts per subtask
    split_all(task)
    kind = registry.get(task.kind)
    claimed = states.claim_subtasks(str(task.pk), 0, 3, None)
    SubTask.objects.filter(parent=task).update(heartbeat_at=stale())
    assert recovery.sweep()["subtasks"] == 4
    assert set(statuses(task).values()) == {Status.RETRYING}
    late = [outcome(row, claimed.token, result=row[1] ** 2) for row in claimed.rows]
    assert states.record(str(task.pk), kind, late).moved == 0
    assert_counters_match_rows(task)
    assert task.subtasks_done == 0
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == [0, 1, 4, 9]
    assert_counters_match_rows(task)


# Item 4: fencing ---------------------------------------------------------------------------


def test_item4_an_old_runs_writes_after_the_sweeper_requeued_it_are_refused():
    task = longtask.start("test-flaky", {"fail_times": 0})
    broker.clear()
    old = claim(task)
    LongTask.objects.filter(pk=task.pk).update(heartbeat_at=stale())  # slow, but alive
    assert recovery.sweep()["tasks"] == 1
    task.refresh_from_db()
    assert task.status == Status.RETRYING and task.attempts == 1

    # Before the next attempt is claimed, the old run's writes change nothing.
    assert not states.beat(old)
    assert not states.fail(old, task, states.Failure("RuntimeError: late"))
    assert not states.succeed(old, {"late": True}, None)
    assert LongTask.objects.get(pk=task.pk).status == Status.RETRYING

    new = claim(task)
    assert new is not None and new.token != old.token
    assert task.status == Status.RUNNING and task.attempts == 2
    # The old run wakes up and fails: the new attempt is not touched.
    assert not states.beat(old)
    assert not states.fail(old, task, states.Failure("RuntimeError: late failure"))
    assert not states.schedule_retry(old, task, states.Failure("RuntimeError: late"), later())
    assert not states.finish_cancelled(old, None)
    assert not states.move_cursor(old, 7, 7)
    task.refresh_from_db()
    assert task.status == Status.RUNNING and task.token == new.token
    assert "late" not in task.error and task.finished_at is None

    assert states.beat(new)
    assert states.succeed(new, {"attempts": 2}, None)
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == {"attempts": 2}
    assert not states.fail(old, task, states.Failure("RuntimeError: later still"))
    assert LongTask.objects.get(pk=task.pk).status == Status.SUCCEEDED


def test_item4_a_stale_chunks_results_are_refused_after_a_new_chunk_took_its_rows():
    task = longtask.start("test-squares", {"n": 3})
    split_all(task)
    kind = registry.get(task.kind)
    old = states.claim_subtasks(str(task.pk), 0, 2, None)
    SubTask.objects.filter(parent=task).update(heartbeat_at=stale())
    assert recovery.sweep()["subtasks"] == 3
    SubTask.objects.filter(parent=task).update(due_at=stale(1))  # their backoff is over
    new = states.claim_subtasks(str(task.pk), 0, 2, None)
    assert [row[1] for row in new.rows] == [0, 1, 2] and new.token != old.token

    # The old chunk records wrong results for rows the new chunk now runs: refused.
    wrong = [outcome(row, old.token, result=999) for row in old.rows]
    assert states.record(str(task.pk), kind, wrong).moved == 0
    assert states.beat_subtasks(old.token, [row[0] for row in old.rows]) == 0
    assert states.stop_subtasks(str(task.pk), old.token, [row[0] for row in old.rows]) == 0
    assert set(statuses(task).values()) == {Status.RUNNING}

    right = [outcome(row, new.token, result=row[1] ** 2) for row in new.rows]
    assert states.record(str(task.pk), kind, right).moved == 3
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == [0, 1, 4]
    assert_counters_match_rows(task)


# Item 5 (D): retry while a chunk is still busy -----------------------------------------------


def test_D_a_busy_chunk_stopping_after_a_retry_strands_nothing():
    test_kinds.FAILING.add(0)
    task = longtask.start("test-squares-switchable", {"n": 4})
    split_all(task)
    kind = registry.get(task.kind)
    busy = states.claim_subtasks(str(task.pk), 2, 3, None)  # chunk B: busy on a long subtask
    chunks.run_chunk(str(task.pk), 0, 0)  # chunk A fails index 0: the parent fails fast
    task.refresh_from_db()
    assert task.status == Status.FAILED

    test_kinds.FAILING.clear()
    assert api.retry(task)  # quickly, while chunk B is still busy
    runner.run(str(task.pk))  # the parent's run: RUNNING again, its subtasks queued
    task.refresh_from_db()
    assert task.status == Status.RUNNING

    # Chunk B saw its parent stop: it gives up its rows, and records what it finished.
    pks = [row[0] for row in busy.rows]
    assert states.stop_subtasks(str(task.pk), busy.token, pks) == 0
    late = [outcome(row, busy.token, error="ValueError: stopped", fatal=True) for row in busy.rows]
    assert states.record(str(task.pk), kind, late).moved == 0
    assert not {Status.CANCELLED, Status.FAILED} & set(statuses(task).values())

    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.error, statuses(task))
    assert task.result == [0, 1, 4, 9]
    assert set(statuses(task).values()) == {Status.SUCCEEDED}
    assert [str(task.pk)] == test_kinds.GATHERED
    assert_counters_match_rows(task)


def test_D_a_busy_chunk_running_on_after_a_retry_strands_nothing():
    test_kinds.FAILING.add(0)
    task = longtask.start("test-squares-switchable", {"n": 4})
    split_all(task)
    kind = registry.get(task.kind)
    busy = states.claim_subtasks(str(task.pk), 2, 3, None)
    chunks.run_chunk(str(task.pk), 0, 0)
    test_kinds.FAILING.clear()
    assert api.retry(task)
    runner.run(str(task.pk))
    # Chunk B goes on as a real chunk does: runs its rows and records them, fenced.
    chunks._run_claimed(kind, queues.get("subtasks"), "", str(task.pk), busy)
    assert not {Status.CANCELLED, Status.FAILED} & set(statuses(task).values())
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.error, statuses(task))
    assert task.result == [0, 1, 4, 9]
    assert_counters_match_rows(task)


# Item 10 (E): the watcher sends the final status ---------------------------------------------


def frames_of(subscriber: live.Subscriber) -> list[dict[str, Any]]:
    frames = []
    while not subscriber.queue.empty():
        frames.append(subscriber.queue.get_nowait())
    return frames


def test_E_the_watcher_sends_the_final_status_after_a_retry_reset_the_top_seq():
    task = longtask.start("test-squares-switchable", {"n": 2})
    split_all(task)
    chunks.run_chunk(str(task.pk), 0, 0)  # finish_seq 1
    test_kinds.FAILING.add(1)
    chunks.run_chunk(str(task.pk), 1, 1)  # finish_seq 2, FAILED: the parent fails fast
    test_kinds.FAILING.clear()
    assert api.retry(task)  # index 1 loses its finish_seq 2; the cursor stays at 2
    broker.clear()

    watcher = object.__new__(live.Watcher)  # deliver() needs no loop
    subscriber = live.Subscriber(task_id=task.pk, cursor=0, status="RUNNING")
    watcher.deliver(subscriber, live.read_tick(task.pk, subscriber.cursor, {subscriber.status}))
    frames_of(subscriber)
    assert api.cancel(task)
    state = live.read_tick(task.pk, subscriber.cursor, {subscriber.status})
    assert state is not None and state.finished
    watcher.deliver(subscriber, state)
    frames = frames_of(subscriber)
    assert frames[-1]["type"] == "status" and frames[-1]["status"] == Status.CANCELLED
    assert frames[-1]["final"] is True
    assert subscriber.closed


def test_E_the_watcher_sends_the_final_status_when_the_retried_task_succeeds():
    task = longtask.start("test-squares-switchable", {"n": 2})
    split_all(task)
    chunks.run_chunk(str(task.pk), 0, 0)
    test_kinds.FAILING.add(1)
    chunks.run_chunk(str(task.pk), 1, 1)
    test_kinds.FAILING.clear()
    assert api.retry(task)

    watcher = object.__new__(live.Watcher)
    subscriber = live.Subscriber(task_id=task.pk, cursor=2, status="FAILED")  # saw it fail
    watcher.deliver(subscriber, live.read_tick(task.pk, subscriber.cursor, {subscriber.status}))
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    watcher.deliver(subscriber, live.read_tick(task.pk, subscriber.cursor, {subscriber.status}))
    frames = frames_of(subscriber)
    events = [e for f in frames if f["type"] == "subtasks" for e in f["events"]]
    assert [e["index"] for e in events] == [1]  # the re-run square, sent once
    assert frames[-1]["type"] == "status" and frames[-1]["status"] == Status.SUCCEEDED
    assert subscriber.closed


# Item 9 (F): one bad row does not break the sweep --------------------------------------------


def test_F_a_fan_out_whose_kind_was_removed_fails_and_the_sweep_goes_on():
    gone = longtask.start("test-squares", {"n": 2})
    split_all(gone)
    states.claim_subtasks(str(gone.pk), 0, 0, None)  # one subtask was running...
    SubTask.objects.filter(parent=gone).update(heartbeat_at=stale(), due_at=stale())
    # A second fan-out whose last recorder died before queueing the gather.
    ready = longtask.start("test-squares-tolerant", {"n": 1})
    split_all(ready)
    SubTask.objects.filter(parent=ready).update(
        status=Status.SUCCEEDED, finish_seq=1, result=0, finished_at=timezone.now()
    )
    LongTask.objects.filter(pk=ready.pk).update(subtasks_done=1, subtask_cursor=1)
    # And a plain task whose worker died.
    plain = longtask.start("test-flaky", {"fail_times": 0})
    broker.clear()
    claim(plain)
    LongTask.objects.filter(pk=plain.pk).update(heartbeat_at=stale())

    registry.unregister("test-squares")  # a deploy removed the kind, for good
    try:
        counts = recovery.sweep()
        gone.refresh_from_db()
        assert gone.status == Status.FAILED
        assert "unknown task kind" in gone.error and "test-squares" in gone.error
        assert counts["fan_ins"] == 1 and counts["tasks"] == 1
        assert LongTask.objects.get(pk=plain.pk).status == Status.RETRYING
        drain_queue()
        ready.refresh_from_db()
        assert ready.status == Status.SUCCEEDED and ready.result == [0]
        assert LongTask.objects.get(pk=plain.pk).status == Status.SUCCEEDED
    finally:
        registry.register(test_kinds.Squares)


def test_F_the_running_subtasks_of_a_fan_out_whose_kind_was_removed_are_settled():
    task = longtask.start("test-squares", {"n": 2})
    split_all(task)
    states.claim_subtasks(str(task.pk), 0, 1, None)  # a chunk held both, then died
    SubTask.objects.filter(parent=task).update(heartbeat_at=stale())
    registry.unregister("test-squares")  # a deploy removed the kind, for good
    try:
        recovery.sweep()
        assert LongTask.objects.get(pk=task.pk).status == Status.FAILED
        recovery.sweep(now=later())
        # Not left RUNNING under a FAILED parent, re-read by every sweep from now on.
        assert Status.RUNNING not in statuses(task).values(), statuses(task)
    finally:
        registry.register(test_kinds.Squares)


def test_F_a_running_split_whose_kind_was_removed_fails_when_stale():
    task = longtask.start("test-squares", {"n": 2})
    broker.clear()
    claim(task)  # the split's run, then its worker died
    LongTask.objects.filter(pk=task.pk).update(heartbeat_at=stale())
    registry.unregister("test-squares")
    try:
        recovery.sweep()
    finally:
        registry.register(test_kinds.Squares)
    task.refresh_from_db()
    assert task.status == Status.FAILED and "unknown task kind" in task.error


# Item 8 (I): no orphans ----------------------------------------------------------------------


def test_I_a_transient_failure_recorded_after_cancel_leaves_no_retrying_orphan():
    task = longtask.start("test-squares", {"n": 3, "flaky": 1})
    split_all(task)
    kind = registry.get(task.kind)
    claimed = states.claim_subtasks(str(task.pk), 0, 1, None)
    assert api.cancel(task)
    assert task.status == Status.CANCELLED
    # The chunk's in-flight subtask fails transiently after the cancel.
    flaky = outcome(claimed.rows[0], claimed.token, error="ConnectionError: flaky")
    recorded = states.record(str(task.pk), kind, [flaky])
    assert not recorded.parent_running
    drain_queue()
    recovery.sweep(now=later())
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    assert statuses(task)[0] == Status.CANCELLED
    waiting = SubTask.objects.filter(status__in=[Status.QUEUED, Status.RETRYING])
    assert not waiting.exists()  # nothing counts against MAX_QUEUED_SUBTASKS
    assert test_kinds.GATHERED == []


def test_I_a_transient_failure_recorded_after_fail_fast_leaves_no_retrying_orphan():
    task = longtask.start("test-squares", {"n": 3})
    split_all(task)
    kind = registry.get(task.kind)
    claimed = states.claim_subtasks(str(task.pk), 0, 2, None)
    first, second = claimed.rows[0], claimed.rows[1]
    states.record(str(task.pk), kind, [outcome(first, claimed.token, error="E", fatal=True)])
    assert LongTask.objects.get(pk=task.pk).status == Status.FAILED
    states.record(str(task.pk), kind, [outcome(second, claimed.token, error="ConnectionError")])
    recovery.sweep(now=later())
    drain_queue()
    assert not SubTask.objects.filter(status__in=[Status.QUEUED, Status.RETRYING]).exists()
    assert LongTask.objects.get(pk=task.pk).status == Status.FAILED


# Item 11 (J and the rest) ----------------------------------------------------------------------


def test_J_a_subtask_retry_later_is_neither_claimed_nor_redispatched_early():
    task = longtask.start("test-squares", {"n": 2})
    split_all(task)
    kind = registry.get(task.kind)
    claimed = states.claim_subtasks(str(task.pk), 0, 1, None)
    states.record(
        str(task.pk),
        kind,
        [
            outcome(claimed.rows[0], claimed.token, error="RetryLater: 1h", retry_in=3600),
            outcome(claimed.rows[1], claimed.token, result=1),
        ],
    )
    [job] = broker.jobs()
    assert job.eta >= later(3500)  # its job is delayed by the hour asked for
    assert statuses(task) == {0: Status.RETRYING, 1: Status.SUCCEEDED}

    # A duplicate or early delivery of a chunk claims nothing.
    assert states.claim_subtasks(str(task.pk), 0, 1, None).rows == []
    assert states.claim_subtasks(str(task.pk), 0, 0, [0]).rows == []
    # The stalled-fan-out sweep, two minutes later, leaves it waiting for its hour.
    for minutes in (2, 30):
        counts = recovery.sweep(now=later(minutes * 60))
        assert counts["subtasks_requeued"] == 0 and counts["subtasks"] == 0
    assert [j.eta for j in broker.jobs()] == [job.eta]
    broker.clear()  # even with its job lost, the sweeper waits for its hour
    assert recovery.sweep(now=later(30 * 60))["subtasks_requeued"] == 0
    assert broker.count() == 0
    assert statuses(task)[0] == Status.RETRYING

    # Past its hour (and STALE_AFTER) with no job left: the sweeper dispatches it.
    assert recovery.sweep(now=later(3600 + 300))["subtasks_requeued"] == 1
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == [0, 1]
    assert_counters_match_rows(task)


def test_item11_a_manual_retry_gets_the_full_attempt_budget():
    task = longtask.start("test-flaky", {"fail_times": 99})  # five attempts, all fail
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 5
    assert api.retry(task)
    task.refresh_from_db()
    assert task.attempts == 0
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 5  # not "attempt 6 of 5"
    events = [e["event"] for e in task.history]
    retried = events.index("retried")
    assert events[retried + 1 :] == ["attempt failed"] * 4 + ["failed"]


def run_chunk_in_subtasks_cluster(monkeypatch: pytest.MonkeyPatch) -> LongTask:
    """Start a Spawning fan-out and run its chunk as a worker of the subtasks cluster does."""
    from django_q.conf import Conf

    task = longtask.start("test-spawning", {"n": 1})
    runner.run(str(task.pk))
    [(chunk, _eta)] = broker.jobs(broker.cluster_of("subtasks"))
    broker.clear()
    # `longtask_worker --queue subtasks` runs `Q_CLUSTER_NAME=<its cluster> qcluster`.
    with monkeypatch.context() as patch:
        patch.setattr(Conf, "CLUSTER_NAME", broker.cluster_of("subtasks"))
        broker.run(chunk)
    return task


def where_jobs_went(args: tuple[str, ...]) -> dict[str, int]:
    clusters = (django_settings.Q_CLUSTER["name"], broker.cluster_of("subtasks"))
    return {c: sum(j.package["args"] == args for j in broker.jobs(c)) for c in clusters}


def test_item11_a_start_inside_run_subtask_lands_on_the_default_queues_cluster(monkeypatch):
    run_chunk_in_subtasks_cluster(monkeypatch)
    [spawned] = SPAWNED
    default = django_settings.Q_CLUSTER["name"]
    assert where_jobs_went((spawned,)) == {default: 1, broker.cluster_of("subtasks"): 0}, (
        f"queues.cluster_for(None) = {queues.cluster_for(None)!r}; Q_CLUSTER name = {default!r}"
    )


def test_item11_a_gather_queued_by_a_subtask_worker_lands_on_the_default_cluster(monkeypatch):
    task = run_chunk_in_subtasks_cluster(monkeypatch)
    assert LongTask.objects.get(pk=task.pk).fan_in_at is not None  # its gather is queued
    default = django_settings.Q_CLUSTER["name"]
    assert where_jobs_went((str(task.pk),)) == {default: 1, broker.cluster_of("subtasks"): 0}


# Item 12: a retry of a task cancelled while running runs to completion -------------------------


@override_settings(LONGTASK_HEARTBEAT_INTERVAL=0.1)
def test_item12_retry_of_a_task_cancelled_while_running_runs_to_completion():
    task = longtask.start("test-gate", {})
    broker.clear()
    worker = threading.Thread(target=lambda: (runner.run(str(task.pk)), close_old_connections()))
    worker.start()
    try:
        wait_for(lambda: LongTask.objects.get(pk=task.pk).status == Status.RUNNING, DEADLINE, "run")
        assert api.cancel(LongTask.objects.get(pk=task.pk))
    finally:
        worker.join(DEADLINE)
    task.refresh_from_db()
    assert task.status == Status.CANCELLED

    assert api.retry(task)
    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.cancel_requested_at is None
    drain_queue()  # runs for about five heartbeats
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.status, task.error)
    assert task.result == "finished"


def test_item12_the_sweeper_retries_a_stale_retried_run_rather_than_cancel_it():
    task = longtask.start("test-flaky", {"fail_times": 0})
    broker.clear()
    claim(task)
    assert api.cancel(task)  # asked to stop while running...
    assert task.status == Status.RUNNING and task.cancel_requested_at is not None
    LongTask.objects.filter(pk=task.pk).update(heartbeat_at=stale())
    recovery.sweep()  # ...and its worker died: CANCELLED
    assert LongTask.objects.get(pk=task.pk).status == Status.CANCELLED
    assert api.retry(task)
    broker.clear()
    claim(task)  # the retried run, then its worker died too
    LongTask.objects.filter(pk=task.pk).update(heartbeat_at=stale())
    recovery.sweep()
    task.refresh_from_db()
    assert task.status == Status.RETRYING, task.status
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED


def test_K_subtasks_lost_while_their_parent_is_between_attempts_run_in_its_next_one():
    """Found by test_engine_model: a parent's run and a chunk of its subtasks are lost
    together. The sweep retries the parent (RETRYING), then records the chunk's subtasks
    as lost while the parent is between attempts. They were cancelled as if the parent
    had finished, and its next attempt waited for them forever (RUNNING, 0 of 3 done)."""
    task = longtask.start("test-squares", {"n": 3})
    split_all(task)
    assert api.cancel(task) and api.retry(task)
    broker.clear()
    task.refresh_from_db()
    assert claim(task) is not None  # a worker takes the parent's new attempt and freezes
    chunk = states.claim_subtasks(task.pk, 0, 2, None)  # a chunk takes the squares, freezes
    assert len(chunk.rows) == 3

    recovery.sweep(now=later())
    task.refresh_from_db()
    assert task.status == Status.RETRYING
    assert set(statuses(task).values()) == {Status.RETRYING}, statuses(task)

    for hours in range(2, 6):  # idle workers and sweeps, until the task ends
        drain_queue()
        task.refresh_from_db()
        if task.status in (Status.SUCCEEDED, Status.FAILED):
            break
        recovery.sweep(now=later(hours * 3600))
    assert task.status == Status.SUCCEEDED, (task.status, statuses(task))
    assert task.result == [0, 1, 4]
    assert_counters_match_rows(task)


def test_K_a_chunk_stopping_while_its_parent_is_between_attempts_leaves_its_squares_waiting():
    task = longtask.start("test-squares", {"n": 3})
    split_all(task)
    assert api.cancel(task) and api.retry(task)
    broker.clear()
    task.refresh_from_db()
    run = claim(task)
    assert run is not None
    chunk = states.claim_subtasks(task.pk, 0, 2, None)
    # The parent's attempt fails with a retry to come; the chunk sees it stopped running.
    assert states.schedule_retry(run, task, states.Failure("lost"), timezone.now())
    assert states.stop_subtasks(task.pk, chunk.token, [row[0] for row in chunk.rows]) == 3
    assert set(statuses(task).values()) == {Status.QUEUED}, statuses(task)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, (task.status, statuses(task))
    assert task.result == [0, 1, 4]

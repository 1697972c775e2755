"""Retries with backoff, fatal errors, dedup, cancellation and crash recovery (in-process)."""

from __future__ import annotations

import datetime
import random
import threading

import pytest
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone

import longtask
from longtask import dispatch
from longtask.engine import chunks, recovery, states
from longtask.engine import run as runner
from longtask.kinds import RetryPolicy
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import claim, drain_queue, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


def test_backoff_doubles_then_grows_linearly_then_caps():
    # App Engine's documented example: min 10 s, max 300 s, 3 doublings.
    policy = RetryPolicy(min_backoff=10, max_backoff=300, max_doublings=3)
    assert [policy.backoff(k) for k in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]
    assert [RetryPolicy(min_backoff=1, max_doublings=0).backoff(k) for k in (1, 2, 3)] == [1, 2, 3]


def test_jitter_stays_within_its_fraction():
    policy = RetryPolicy(min_backoff=10, jitter=0.1)
    delays = [policy.delay(1, random.Random(seed)) for seed in range(200)]
    assert all(9 <= d <= 11 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize(
    ("policy", "attempts", "age", "gives_up"),
    [
        (RetryPolicy(max_attempts=3), 2, 0, False),
        (RetryPolicy(max_attempts=3), 3, 0, True),
        (RetryPolicy(max_attempts=None, age_limit=60), 100, 59, False),
        (RetryPolicy(max_attempts=None, age_limit=60), 1, 60, True),
        # With both limits set, both must be exceeded.
        (RetryPolicy(max_attempts=3, age_limit=60), 10, 30, False),
        (RetryPolicy(max_attempts=3, age_limit=60), 2, 600, False),
        (RetryPolicy(max_attempts=3, age_limit=60), 3, 60, True),
        (RetryPolicy(max_attempts=None, age_limit=None), 1000, 10**6, False),
    ],
)
def test_failing_for_good_needs_every_limit_exceeded(policy, attempts, age, gives_up):
    assert policy.gives_up(attempts, age) is gives_up


def test_a_task_failing_twice_then_succeeding():
    task = longtask.start("test-flaky", {"fail_times": 2})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == {"attempts": 3}
    assert [e["event"] for e in task.history] == ["attempt failed", "attempt failed"]
    assert task.history[0]["error"] == "ConnectionError: attempt 1 failed"


def test_retrying_task_waits_for_its_backoff_and_says_so(client):
    task = longtask.start("test-flaky", {"fail_times": 1})
    broker.clear()
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.RETRYING and task.attempts == 1
    [(package, eta)] = broker.jobs()
    assert package["args"] == (str(task.pk),)
    # The broker will not hand the job out before its time.
    assert eta is not None and eta >= task.next_attempt_at - datetime.timedelta(milliseconds=5)
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    assert "Attempt 2 of 5, next try" in html
    assert "ConnectionError: attempt 1 failed" in html
    assert client.get(f"/tasks/{task.pk}.json").json()["status"] == "RETRYING"


def test_retry_later_uses_the_asked_delay():
    task = longtask.start("test-flaky", {"fail_times": 1, "mode": "later"})
    broker.clear()
    before = timezone.now()
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.RETRYING
    delay = (task.next_attempt_at - before).total_seconds()
    assert 29 <= delay <= 31
    [(_, eta)] = broker.jobs()
    assert eta is not None and eta >= task.next_attempt_at - datetime.timedelta(milliseconds=5)


@pytest.mark.parametrize("mode", ["fatal", "declared-fatal"])
def test_fatal_errors_fail_at_once(mode):
    task = longtask.start("test-flaky", {"fail_times": 3, "mode": mode})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 1


def test_attempt_limit_fails_for_good():
    task = longtask.start("test-flaky", {"fail_times": 99})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 5
    assert len(task.history) == 5


def test_age_limit_keeps_retrying_young_tasks():
    young = RetryPolicy(max_attempts=1, age_limit=3600, min_backoff=0.01)
    kind = longtask.kinds.registry.get("test-flaky")
    task = longtask.start("test-flaky", {"fail_times": 3})
    broker.clear()
    type(kind).retry, saved = young, type(kind).retry
    try:
        runner.run(str(task.pk))
        task.refresh_from_db()
        assert task.status == Status.RETRYING  # attempts exceeded, age not
        LongTask.objects.filter(pk=task.pk).update(
            created_at=timezone.now() - datetime.timedelta(hours=2)
        )
        broker.clear()
        runner.run(str(task.pk))
        task.refresh_from_db()
        assert task.status == Status.FAILED  # both exceeded
    finally:
        type(kind).retry = saved


def test_subtask_failing_twice_then_succeeding_counts_once():
    task = longtask.start("test-squares", {"n": 3, "flaky": 2})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.subtasks_done == 3
    assert set(SubTask.objects.filter(parent=task).values_list("attempts", flat=True)) == {3}


def test_dedup_under_concurrent_starts():
    barrier = threading.Barrier(4)
    ids, errors = [], []

    def start() -> None:
        try:
            barrier.wait()
            ids.append(longtask.start("test-count", {"n": 1}, name="nightly").pk)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(set(ids)) == 1 and LongTask.objects.count() == 1


def test_cancel_a_queued_task_it_never_runs(client):
    task = longtask.start("test-count", {"n": 1})
    response = client.post(f"/tasks/{task.pk}/cancel/")
    assert response.status_code == 303
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.CANCELLED and task.attempts == 0


@override_settings(LONGTASK_HEARTBEAT_INTERVAL=0.05)
def test_cancel_a_running_task_stops_it_at_its_next_progress():
    task = longtask.start("test-loop", {})
    broker.clear()
    worker = threading.Thread(target=lambda: (runner.run(str(task.pk)), close_old_connections()))
    worker.start()
    try:
        wait_for(lambda: LongTask.objects.get(pk=task.pk).status == Status.RUNNING, 10, "it to run")
        assert longtask.cancel(LongTask.objects.get(pk=task.pk))
    finally:
        worker.join(20)
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    assert task.result is None and task.last_progress["current"] < 9_999


def test_cancel_a_fan_out_mid_way_skips_the_rest_and_never_gathers():
    from tests import kinds as test_kinds

    test_kinds.GATHERED.clear()
    with override_settings(LONGTASK_SPLIT_BATCH=5):
        task = longtask.start("test-squares", {"n": 40})
        runner.run(str(task.pk))
    chunk = next(package for package, _ in broker.jobs() if package["func"] == dispatch.CHUNK_JOB)
    chunks.run_chunk(*chunk["args"])
    task.refresh_from_db()
    assert 0 < task.subtasks_done < 40
    assert longtask.cancel(task)
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.CANCELLED and test_kinds.GATHERED == []
    assert (
        SubTask.objects.filter(parent=task, status=Status.CANCELLED).count()
        == 40 - task.subtasks_done
    )


def stale(minutes: int = 5) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(minutes=minutes)


def test_sweep_requeues_a_task_whose_worker_died_counting_the_attempt():
    task = longtask.start("test-flaky", {"fail_times": 0})
    broker.clear()
    claim(task)  # then the worker "dies"
    LongTask.objects.filter(pk=task.pk).update(heartbeat_at=stale())
    assert recovery.sweep()["tasks"] == 1
    task.refresh_from_db()
    assert task.status == Status.RETRYING and task.attempts == 1
    assert task.history[-1]["error"].startswith("RuntimeError: WorkerLost")
    assert recovery.sweep()["tasks"] == 0  # nothing twice
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.attempts == 2


def test_sweep_requeues_a_waiting_task_whose_job_died_with_a_cluster():
    task = longtask.start("test-flaky", {"fail_times": 1})
    broker.clear()
    runner.run(str(task.pk))  # attempt 1 fails: RETRYING, its job queued...
    broker.clear()  # ...and then lost with a killed cluster
    task.refresh_from_db()
    assert task.status == Status.RETRYING
    assert recovery.sweep()["requeued"] == 0  # not due for long enough yet
    LongTask.objects.filter(pk=task.pk).update(due_at=stale(), next_attempt_at=stale())
    assert recovery.sweep()["requeued"] == 1
    assert recovery.sweep()["requeued"] == 0  # once per due time
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.attempts == 2


def test_sweep_leaves_beating_tasks_alone():
    task = longtask.start("test-count", {"n": 1})
    claim(task)
    assert recovery.sweep() == {
        "unblocked": 0,
        "tasks": 0,
        "subtasks": 0,
        "requeued": 0,
        "subtasks_requeued": 0,
        "fan_ins": 0,
    }
    task.refresh_from_db()
    assert task.status == Status.RUNNING


def test_sweep_requeues_lost_subtasks_and_the_quilt_completes_once():
    from tests import kinds as test_kinds

    test_kinds.GATHERED.clear()
    task = longtask.start("test-squares", {"n": 12})
    runner.run(str(task.pk))
    # A worker claims every subtask, then dies without recording anything.
    states.claim_subtasks(str(task.pk), 0, 11, None)
    broker.clear()  # and its jobs are gone with it
    SubTask.objects.filter(parent=task).update(heartbeat_at=stale())
    assert recovery.sweep()["subtasks"] == 12
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == [i * i for i in range(12)]
    assert set(SubTask.objects.filter(parent=task).values_list("attempts", flat=True)) == {2}
    assert [str(task.pk)] == test_kinds.GATHERED


def test_sweep_requeues_queued_subtasks_whose_jobs_were_lost():
    task = longtask.start("test-squares", {"n": 9})
    runner.run(str(task.pk))
    broker.clear()  # a dead cluster had taken every chunk job with it
    assert recovery.sweep()["subtasks_requeued"] == 0  # not waiting long enough yet
    SubTask.objects.filter(parent=task).update(due_at=stale())
    assert recovery.sweep()["subtasks_requeued"] == 9
    assert recovery.sweep()["subtasks_requeued"] == 0  # once per due time
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.subtasks_done == 9


def test_sweep_finishes_a_fan_in_nobody_ran():
    task = longtask.start("test-squares", {"n": 3})
    runner.run(str(task.pk))
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    # A parent left RUNNING with every subtask done: the recorder of the last one died
    # before queueing the gather.
    LongTask.objects.filter(pk=task.pk).update(
        status=Status.RUNNING, result=None, finished_at=None, fan_in_at=None, token=""
    )
    assert recovery.sweep()["fan_ins"] == 1
    assert LongTask.objects.get(pk=task.pk).status == Status.QUEUED  # the sweeper never gathers
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == [0, 1, 4]


def test_a_run_past_its_time_limit_is_a_failed_attempt():
    from django_q.exceptions import TimeoutException
    from django_q.timeout import TimeoutHandler

    from longtask import jobs

    task = longtask.start("test-sleepy", {})
    [(package, _)] = broker.jobs()
    assert package["timeout"] == 1  # the kind's limit travels with the job
    broker.clear()
    # What a django-q2 worker does with the job's timeout:
    with pytest.raises(TimeoutException), TimeoutHandler(package["timeout"]):
        jobs.run_task(*package["args"])
    task.refresh_from_db()
    assert task.status == Status.RETRYING and task.attempts == 1
    assert task.error.startswith("TimeLimitExceeded: the run took longer than its time limit of 1s")
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == "woke up in time"


def test_time_limit_above_the_cluster_timeout_is_flagged(settings):
    from longtask.checks import check_time_limits

    assert check_time_limits(None) == []
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 0}
    messages = check_time_limits(None)
    assert [m.id for m in messages] == ["longtask.W001"]
    assert "test-sleepy" in messages[0].msg


def test_dedup_returns_the_existing_task_until_the_window_passes():
    first = longtask.start("test-count", {"n": 1}, name="daily")
    assert first.deduplicated is False
    again = longtask.start("test-count", {"n": 1}, name="daily")
    assert again.pk == first.pk and again.deduplicated is True
    drain_queue()
    window = datetime.timedelta(hours=1)
    # Finished, but within the window: still the same task.
    assert longtask.start("test-count", {"n": 1}, name="daily", dedup_window=window).pk == first.pk
    LongTask.objects.filter(pk=first.pk).update(finished_at=stale(minutes=120))
    fresh = longtask.start("test-count", {"n": 1}, name="daily", dedup_window=window)
    assert fresh.pk != first.pk and not fresh.deduplicated
    first.refresh_from_db()
    assert first.name is None and first.history[-1]["event"] == "name released"

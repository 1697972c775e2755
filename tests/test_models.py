from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from longtask.models import ERROR_MAX_LENGTH, LongTask, Status, one_line

pytestmark = pytest.mark.django_db


def make_task(**fields) -> LongTask:
    return LongTask.objects.create(kind="test-count", queue="default", **fields)


def test_claim_runs_a_queued_task_once():
    task = make_task()
    assert task.claim()
    assert task.status == Status.RUNNING
    assert task.attempts == 1
    assert task.started_at is not None and task.heartbeat_at is not None
    # A second worker holding a stale copy cannot claim it too.
    stale = LongTask.objects.get(pk=task.pk)
    stale.status = Status.QUEUED
    assert not stale.claim()
    assert LongTask.objects.get(pk=task.pk).attempts == 1


def test_claim_keeps_the_first_start_time_on_a_retry():
    task = make_task()
    task.claim()
    first_start = task.started_at
    LongTask.objects.filter(pk=task.pk).update(status=Status.RETRYING)
    task.refresh_from_db()
    assert task.claim()
    assert task.attempts == 2
    assert task.started_at == first_start


def test_succeed_only_from_running():
    task = make_task()
    assert not task.succeed({"x": 1})
    task.claim()
    assert task.succeed({"x": 1}, {"current": 3, "total": 3})
    task.refresh_from_db()
    assert (task.status, task.result, task.last_progress["current"]) == (
        Status.SUCCEEDED,
        {"x": 1},
        3,
    )
    assert task.finished_at is not None
    # Two workers cannot both finish it.
    assert not task.succeed({"x": 2})
    assert not task.fail("late")
    task.refresh_from_db()
    assert task.result == {"x": 1}


def test_fail_stores_one_line_and_traceback():
    task = make_task()
    task.claim()
    assert task.fail("bad\nthing   happened", "Traceback ...")
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error == "bad thing happened"
    assert task.traceback == "Traceback ..."


def test_cancel_queued_at_once_running_cooperatively_finished_never():
    queued = make_task()
    assert queued.cancel()
    assert queued.status == Status.CANCELLED and queued.finished_at is not None
    assert not queued.claim()
    running = make_task()
    running.claim()
    assert not running.cancelled
    assert running.cancel()  # asked to stop; the worker acknowledges
    running.refresh_from_db()
    assert running.status == Status.RUNNING and running.cancel_requested_at is not None
    assert running.cancelled
    assert running.finish_cancelled()
    assert running.status == Status.CANCELLED
    assert not running.cancel()


def test_mark_result_viewed_only_once():
    task = make_task()
    task.claim()
    task.succeed(1)
    assert task.mark_result_viewed()
    first = task.result_viewed_at
    assert not task.mark_result_viewed()
    task.refresh_from_db()
    assert task.result_viewed_at == first


@pytest.mark.parametrize(
    "fields",
    [
        {"status": Status.SUCCEEDED},  # finished without finished_at
        {"status": Status.QUEUED, "finished_at": timezone.now()},
        {"status": Status.RUNNING},  # running without started_at
        {"status": Status.FAILED, "finished_at": timezone.now(), "result": {"x": 1}},
        {"status": "BOGUS"},
    ],
)
def test_constraints_reject_impossible_states(fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_task(**fields)


def test_name_is_unique():
    make_task(name="nightly")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_task(name="nightly")
    # Many tasks may have no name.
    make_task()
    make_task()


def test_one_line_truncates():
    assert len(one_line("x" * 5000)) == ERROR_MAX_LENGTH

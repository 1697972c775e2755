from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from longtask.engine import states
from longtask.models import ERROR_MAX_LENGTH, LongTask, Status, one_line

pytestmark = pytest.mark.django_db


def make_task(**fields) -> LongTask:
    return LongTask.objects.create(kind="test-count", queue="default", **fields)


def claim(task: LongTask) -> states.Run | None:
    claimed = states.claim(task.pk)
    task.refresh_from_db()
    return claimed[0] if claimed else None


def test_claim_runs_a_queued_task_once():
    task = make_task()
    run = claim(task)
    assert run and task.token == run.token
    assert task.status == Status.RUNNING
    assert task.attempts == 1
    assert task.started_at is not None and task.heartbeat_at is not None
    # A second worker (a duplicate delivery) cannot claim it too.
    assert states.claim(task.pk) is None
    assert LongTask.objects.get(pk=task.pk).attempts == 1


def test_claim_keeps_the_first_start_time_on_a_retry():
    task = make_task()
    claim(task)
    first_start = task.started_at
    LongTask.objects.filter(pk=task.pk).update(status=Status.RETRYING)
    assert claim(task)
    assert task.attempts == 2
    assert task.started_at == first_start


def test_succeed_only_from_running():
    task = make_task()
    assert not states.succeed(states.Run(task.pk, ""), {"x": 1}, None)
    run = claim(task)
    assert states.succeed(run, {"x": 1}, {"current": 3, "total": 3})
    task.refresh_from_db()
    assert (task.status, task.result, task.last_progress["current"]) == (
        Status.SUCCEEDED,
        {"x": 1},
        3,
    )
    assert task.finished_at is not None
    # Two workers cannot both finish it.
    assert not states.succeed(run, {"x": 2}, None)
    assert not states.fail(run, task, states.Failure("late"))
    task.refresh_from_db()
    assert task.result == {"x": 1}


def test_a_stale_run_is_fenced_off(caplog):
    """The sweeper re-queued a slow run; the new attempt's outcome stands, the old one's not."""
    task = make_task()
    old = claim(task)
    LongTask.objects.filter(pk=task.pk).update(status=Status.RETRYING)  # as the sweeper does
    new = claim(task)
    assert new.token != old.token
    assert not states.beat(old)
    assert not states.fail(old, task, states.Failure("late failure of the old attempt"))
    assert not states.schedule_retry(old, task, states.Failure("old"), timezone.now())
    assert not states.finish_cancelled(old, None)
    assert "no longer holds the task" in caplog.text
    assert states.beat(new)
    assert states.succeed(new, {"x": 2}, None)
    task.refresh_from_db()
    assert (task.status, task.result) == (Status.SUCCEEDED, {"x": 2})


def test_fail_stores_one_line_and_traceback():
    task = make_task()
    run = claim(task)
    assert states.fail(run, task, states.Failure("bad\nthing   happened", "Traceback ..."))
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error == "bad thing happened"
    assert task.traceback == "Traceback ..."


def test_cancel_queued_at_once_running_cooperatively_finished_never():
    queued = make_task()
    assert states.cancel(queued)
    assert queued.status == Status.CANCELLED and queued.finished_at is not None
    assert states.claim(queued.pk) is None
    running = make_task()
    run = claim(running)
    assert not running.cancelled
    assert states.cancel(running)  # asked to stop; the worker acknowledges
    assert running.status == Status.RUNNING and running.cancel_requested_at is not None
    assert running.cancelled
    assert not states.beat(run)  # the heartbeat tells the run to stop
    assert states.finish_cancelled(run, None)
    running.refresh_from_db()
    assert running.status == Status.CANCELLED
    assert not states.cancel(running)


def test_a_retry_of_a_task_cancelled_while_running_runs_again():
    """Item 12: requeue clears the cancel request, so the new run is not stopped again."""
    task = make_task()
    run = claim(task)
    states.cancel(task)
    states.finish_cancelled(run, None)
    task.refresh_from_db()
    assert states.requeue(task)
    assert task.cancel_requested_at is None and task.attempts == 0
    again = claim(task)
    assert states.beat(again)
    assert not task.cancelled


def test_transitions_tables_cover_every_status():
    for table in (states.TASK_TRANSITIONS, states.SUBTASK_TRANSITIONS):
        assert {t.target for t in table.values()} | {
            s for t in table.values() for s in t.sources
        } == set(Status.values)


def test_mark_result_viewed_only_once():
    task = make_task()
    states.succeed(claim(task), 1, None)
    task.refresh_from_db()
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

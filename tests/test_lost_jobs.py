"""Lost jobs are dispatched again, on both brokers, within a bound; a backlog is left alone.

Bound: a task or subtask still waiting STALE_AFTER past its due time, with no job older
than that due time left in its queue, is dispatched again by the next sweep.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.utils import timezone

import longtask
from longtask.engine import recovery
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import drain_queue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


def drain_everything(capture: Any) -> None:
    """Run every job, and the jobs their commits push (Redis pushes after the commit)."""
    while True:
        with capture(execute=True) as pushed:
            drain_queue()
        if not pushed:
            return


def ago(seconds: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(seconds=seconds)


def test_a_start_whose_process_died_before_its_on_commit_still_has_its_job(
    django_capture_on_commit_callbacks,
):
    """Item 6: the process dies between COMMIT and the on_commit enqueue."""
    with django_capture_on_commit_callbacks(execute=False):  # the callbacks never run
        task = longtask.start("test-count", {"n": 1})
    if broker.on_orm():
        # The ORM broker's job was written in the row's own transaction.
        assert broker.count() == 1
    else:
        assert broker.count() == 0  # lost: pushed to Redis only after the commit
        LongTask.objects.filter(pk=task.pk).update(due_at=ago(61))
        with django_capture_on_commit_callbacks(execute=True):
            assert recovery.sweep()["requeued"] == 1
        assert broker.count() == 1
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED


def test_a_task_whose_job_vanished_is_dispatched_again_once(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        task = longtask.start("test-count", {"n": 1})
    broker.clear()  # taken by a cluster that was then killed, or a Redis restart
    assert recovery.sweep()["requeued"] == 0  # not past STALE_AFTER yet
    LongTask.objects.filter(pk=task.pk).update(due_at=ago(61))
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.sweep()["requeued"] == 1
    assert broker.count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.sweep()["requeued"] == 0  # once: its due time moved
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.attempts == 1


def test_a_far_future_delayed_job_does_not_block_recovery(django_capture_on_commit_callbacks):
    """Item 7: a queue holding a delayed job (a RetryLater(86400)) still recovers lost ones."""
    with django_capture_on_commit_callbacks(execute=True):
        waiting = longtask.start("test-count", {"n": 1})
        lost = longtask.start("test-count", {"n": 2})
    broker.clear()
    from longtask.engine import enqueue

    with django_capture_on_commit_callbacks(execute=True):
        enqueue.task_job(waiting, eta=timezone.now() + datetime.timedelta(days=1))
    LongTask.objects.filter(pk=waiting.pk).update(
        status=Status.RETRYING, due_at=timezone.now() + datetime.timedelta(days=1)
    )
    LongTask.objects.filter(pk=lost.pk).update(due_at=ago(61))
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.sweep()["requeued"] == 1
    assert broker.count() == 2


def test_a_backlog_is_not_duplicated(django_capture_on_commit_callbacks):
    """Jobs still waiting in the queue, older than the task's due time: nothing is lost."""
    with django_capture_on_commit_callbacks(execute=True):
        tasks = [longtask.start("test-count", {"n": 1}) for _ in range(3)]
    # They waited long (workers busy), but their jobs are still in the queue.
    LongTask.objects.filter(pk__in=[t.pk for t in tasks]).update(due_at=timezone.now())
    later = timezone.now() + datetime.timedelta(seconds=120)
    assert recovery.sweep(now=later)["requeued"] == 0
    assert broker.count() == 3


def test_lost_subtask_jobs_are_dispatched_again_but_a_backlog_is_not(
    django_capture_on_commit_callbacks,
):
    from longtask.engine import run

    with django_capture_on_commit_callbacks(execute=True):
        task = longtask.start("test-squares", {"n": 9})
        run.run(str(task.pk))  # the split: 9 waiting subtasks, their chunk jobs queued
    later = timezone.now() + datetime.timedelta(seconds=120)
    assert recovery.sweep(now=later)["subtasks_requeued"] == 0  # their jobs still wait
    broker.clear()  # now they are lost
    with django_capture_on_commit_callbacks(execute=True):  # (Redis: pushed on commit)
        assert recovery.sweep(now=later)["subtasks_requeued"] == 9
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.sweep(now=later)["subtasks_requeued"] == 0  # their new jobs wait
    drain_everything(django_capture_on_commit_callbacks)
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert set(SubTask.objects.filter(parent=task).values_list("attempts", flat=True)) == {1}

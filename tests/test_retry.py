from __future__ import annotations

import pytest

import longtask
from longtask import api
from longtask.models import Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.helpers import drain_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    test_kinds.FAILING.clear()
    test_kinds.GATHERED.clear()
    yield from broker.emptied()
    test_kinds.FAILING.clear()


def test_retry_runs_a_failed_task_again_and_keeps_the_error_in_history():
    task = longtask.start("test-boom", {})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert api.retry(task)
    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.finished_at is None and task.error == ""
    assert [e["event"] for e in task.history] == ["failed", "retried"]
    assert task.history[0]["error"].startswith("RuntimeError: it broke")
    assert broker.count() == 1
    drain_queue()
    task.refresh_from_db()
    # A manual retry gets the whole attempt budget again (here one attempt: it fails for good).
    assert task.status == Status.FAILED and task.attempts == 1
    assert [e["event"] for e in task.history] == ["failed", "retried", "failed"]


def test_retry_refuses_tasks_that_did_not_fail():
    task = longtask.start("test-count", {"n": 1})
    assert not api.retry(task)  # queued
    drain_queue()
    task.refresh_from_db()
    assert not api.retry(task)  # succeeded


def test_retry_of_a_fan_out_requeues_only_failed_subtasks():
    test_kinds.FAILING.update({3, 7})
    task = longtask.start("test-squares-switchable", {"n": 12})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED
    succeeded_before = dict(
        SubTask.objects.filter(parent=task, status=Status.SUCCEEDED).values_list(
            "index", "finished_at"
        )
    )
    assert succeeded_before
    test_kinds.FAILING.clear()
    assert api.retry(task)
    task.refresh_from_db()
    assert task.status == Status.QUEUED  # its run queues the failed subtasks again
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, task.error
    assert task.result == [i * i for i in range(12)]
    assert (task.subtasks_done, task.subtasks_failed) == (12, 0)
    # Succeeded subtasks were kept, not run again.
    for index, finished_at in succeeded_before.items():
        assert SubTask.objects.get(parent=task, index=index).finished_at == finished_at
    assert [str(task.pk)] == test_kinds.GATHERED
    assert task.history[0]["error"].startswith("subtask 3 failed")
    seqs = sorted(SubTask.objects.filter(parent=task).values_list("finish_seq", flat=True))
    assert len(set(seqs)) == 12


def test_retry_of_a_tolerated_fan_out_redoes_the_failed_squares():
    task = longtask.start("test-squares-tolerant", {"n": 6, "fail_index": 2})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result[2] is None
    assert not api.retry(task)  # it succeeded: nothing to retry


def test_cancelled_queued_task_can_be_retried():
    task = longtask.start("test-count", {"n": 2})
    api.cancel(task)
    broker.clear()
    assert api.retry(task)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED

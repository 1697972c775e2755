"""Quick tasks queued by one transaction share a job (engine/enqueue.py, engine/batch.py).

A kind is quick once it has run and never for over a second. Each task of a batch is
still claimed, run and finished on its own; a batch past its budget hands the rest to
jobs of their own; a batch's job lost after the commit is found by the sweeper.
"""

from __future__ import annotations

import datetime

import pytest
from django.db import transaction
from django.utils import timezone

import longtask
from longtask.dispatch import RUN_JOB, RUN_TASKS_JOB
from longtask.engine import batch, enqueue, recovery
from longtask.models import TOTALS, LongTask, Status, TaskMinute
from tests import broker
from tests.helpers import drain_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


def made_quick(kind: str = "test-count") -> None:
    """One run of the kind, so that its counts say it is quick."""
    longtask.start(kind, {"n": 1})
    drain_queue()
    enqueue._quick.clear()


def start_many(n: int, kind: str = "test-count") -> list[LongTask]:
    with transaction.atomic():
        return [longtask.start(kind, {"n": 1}) for _ in range(n)]


def queued_ids() -> list[str]:
    ids: list[str] = []
    for job in broker.jobs():
        first = job.package["args"][0]
        ids += first if job.package["func"] == RUN_TASKS_JOB else [first]
    return ids


def succeeded(tasks: list[LongTask]) -> int:
    return LongTask.objects.filter(pk__in=[t.pk for t in tasks], status=Status.SUCCEEDED).count()


def test_quick_tasks_of_one_transaction_share_jobs_of_up_to_sixteen():
    """The first has its own job, written in the transaction (on the ORM broker)."""
    made_quick()
    tasks = start_many(21)
    jobs = broker.jobs()
    assert [job.package["func"] for job in jobs] == [RUN_JOB, RUN_TASKS_JOB, RUN_TASKS_JOB]
    assert [len(job.package["args"][0]) for job in jobs[1:]] == [16, 4]
    assert queued_ids() == [str(t.pk) for t in tasks]
    drain_queue()
    assert succeeded(tasks) == 21


def test_a_transactions_first_quick_task_has_a_job_whatever_becomes_of_the_batch(monkeypatch):
    """On the ORM broker it is written in the transaction, as any task's job."""
    made_quick()
    monkeypatch.setattr(enqueue, "_send_batch", lambda *args: None)  # died after COMMIT
    tasks = start_many(3)
    assert queued_ids() == [str(tasks[0].pk)]


def test_a_kind_that_never_ran_or_ran_long_gets_a_job_per_task():
    start_many(3)  # no counts yet: not known to be quick
    assert [job.package["func"] for job in broker.jobs()] == [RUN_JOB] * 3
    drain_queue()
    TaskMinute.objects.filter(minute=TOTALS, kind="test-count").update(runs_le_1=0)  # one ran 2 s
    enqueue._quick.clear()
    start_many(2)
    assert [job.package["func"] for job in broker.jobs()] == [RUN_JOB] * 2


def test_outside_a_transaction_each_task_has_its_own_job():
    made_quick()
    longtask.start("test-count", {"n": 1})
    longtask.start("test-count", {"n": 1})
    assert [job.package["func"] for job in broker.jobs()] == [RUN_JOB] * 2


def test_a_rolled_back_savepoint_drops_only_its_own_tasks():
    made_quick()
    with transaction.atomic():
        kept = [longtask.start("test-count", {"n": 1}) for _ in range(2)]
        try:
            with transaction.atomic():
                longtask.start("test-count", {"n": 1})
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        kept.append(longtask.start("test-count", {"n": 1}))
    assert sorted(queued_ids()) == sorted(str(t.pk) for t in kept)


def test_a_batch_past_its_budget_hands_the_rest_to_jobs_of_their_own(monkeypatch):
    made_quick()
    tasks = start_many(6)  # the first on its own, then a batch of five
    first, job = broker.jobs()
    assert job.package["func"] == RUN_TASKS_JOB
    broker.clear()
    monkeypatch.setattr(batch, "BATCH_BUDGET", 0.0)  # every task "took too long"
    broker.run(first.package)
    broker.run(job.package)
    assert succeeded(tasks) == 2
    handed = broker.jobs()
    assert [j.package["func"] for j in handed] == [RUN_JOB] * 4
    drain_queue()
    assert succeeded(tasks) == 6


def test_a_batch_whose_job_was_lost_is_found_by_the_sweeper():
    made_quick()
    tasks = start_many(3)
    broker.clear()  # the job, written after the commit, was lost
    later = timezone.now() + datetime.timedelta(hours=1)
    assert recovery.sweep(now=later)["requeued"] == 3
    drain_queue()
    assert succeeded(tasks) == 3


def test_a_batch_counts_as_waiting_since_its_tasks_became_due(monkeypatch):
    """The sweeper takes a task whose due time is past STALE_AFTER, with no job in its
    queue as old, for one whose job was lost: a batch sent at the commit of a long
    transaction must not look newer than its tasks."""
    made_quick()
    real_now = timezone.now
    with transaction.atomic():
        monkeypatch.setattr(timezone, "now", lambda: real_now() - datetime.timedelta(hours=1))
        tasks = [longtask.start("test-count", {"n": 1}) for _ in range(3)]
        monkeypatch.setattr(timezone, "now", real_now)
    assert queued_ids() == [str(t.pk) for t in tasks]
    assert broker.run_next()  # the first task's own job: the batch's is the oldest left
    assert recovery.sweep()["requeued"] == 0
    drain_queue()
    assert LongTask.objects.filter(status=Status.SUCCEEDED, attempts=1).count() >= 3

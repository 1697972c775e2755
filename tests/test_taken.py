"""A claim takes its own job from the ORM broker's table (longtask/dispatch/taken.py).

The worker holds the job django-q2 handed it (``pre_execute``); the claim deletes that
job's row in its transaction and, once it commits, clears the job's ``ack_id`` so that
django-q2's monitor has nothing left to acknowledge: one write fewer per task on the
one SQLite write lock. Only the job of that task is taken, and only by a claim that
commits.
"""

from __future__ import annotations

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.models import OrmQ

import longtask
from longtask.dispatch import taken
from longtask.dispatch.base import CHUNK_JOB, RUN_JOB
from longtask.engine import states
from longtask.models import LongTask, Status
from tests import broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()
    taken._hold(None, func=None, task=None)


def in_hand(task: LongTask, func: str = RUN_JOB) -> dict[str, object]:
    """A job of ``func`` for ``task`` as django-q2's worker holds it, with its row."""
    row = OrmQ.objects.create(key="test-taken", payload="signed", lock=timezone.now())
    job: dict[str, object] = {"func": func, "args": [str(task.pk)], "ack_id": row.pk}
    taken._hold(None, func=None, task=job)
    return job


def rows() -> int:
    return OrmQ.objects.filter(key="test-taken").count()


def test_a_claim_takes_its_job_and_leaves_the_monitor_nothing_to_acknowledge():
    task = longtask.start("test-count", {"n": 1})
    job = in_hand(task)
    assert states.claim(task.pk) is not None
    assert rows() == 0 and job["ack_id"] is None


def test_a_claim_that_rolls_back_takes_nothing():
    task = longtask.start("test-count", {"n": 1})
    job = in_hand(task)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert states.claim(task.pk) is not None
        raise RuntimeError("after the claim, before its commit")
    assert LongTask.objects.get(pk=task.pk).status == Status.QUEUED
    assert rows() == 1 and job["ack_id"] is not None  # the monitor acknowledges it


def test_only_the_claimed_tasks_own_run_job_is_taken():
    task, other = longtask.start("test-count", {"n": 1}), longtask.start("test-count", {"n": 2})
    job = in_hand(other)  # another task's job
    assert states.claim(task.pk) is not None
    assert rows() == 1 and job["ack_id"] is not None
    chunk = in_hand(other, func=CHUNK_JOB)  # not a run_task job
    assert states.claim(other.pk) is not None
    assert rows() == 2 and chunk["ack_id"] is not None


def test_a_task_that_cannot_be_claimed_leaves_its_job():
    task = longtask.start("test-count", {"n": 1})
    assert states.claim(task.pk) is not None
    job = in_hand(task)  # delivered again while it runs
    assert states.claim(task.pk) is None
    assert rows() == 1 and job["ack_id"] is not None

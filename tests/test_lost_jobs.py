"""The sweeper re-queues tasks whose first job was lost by the broker (Redis)."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone
from django_q.brokers import get_broker

import longtask
from longtask import recovery
from longtask.models import LongTask
from tests.conftest import ON_SERVICES

pytestmark = pytest.mark.django_db


def test_a_task_whose_first_job_vanished_is_queued_again_once_the_queue_is_empty(
    test_kinds_registered, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        task = longtask.start("test-count", {"n": 1})
    broker = get_broker()
    assert broker.queue_size() == 1
    # Its job is lost: taken by a cluster that was then killed, or by a Redis restart.
    broker.delete_queue()
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    LongTask.objects.filter(pk=task.pk).update(created_at=long_ago)
    counts = recovery.sweep()
    if ON_SERVICES:
        assert counts["unstarted"] == 1
        assert broker.queue_size() == 1
        assert recovery.sweep()["unstarted"] == 0  # once: the task is marked
    else:
        # The ORM broker never loses a job (it hands it out again after `retry`), so
        # nothing is queued twice on the embedded default.
        assert counts["unstarted"] == 0


@pytest.mark.skipif(not ON_SERVICES, reason="Redis only: the ORM broker keeps waiting jobs")
def test_a_backlog_is_not_duplicated(test_kinds_registered, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        tasks = [longtask.start("test-count", {"n": 1}) for _ in range(3)]
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    LongTask.objects.filter(pk__in=[t.pk for t in tasks]).update(created_at=long_ago)
    assert recovery.sweep()["unstarted"] == 0  # their jobs still wait in the list
    assert get_broker().queue_size() == 3

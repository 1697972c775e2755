"""A task's status page and JSON cost the same for a fan-out of 10 subtasks and of 2,000."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longtask.models import LongTask, Status, SubTask

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("test_kinds_registered")]


def _fan_out(n: int) -> LongTask:
    parent = LongTask.objects.create(
        kind="test-squares",
        queue="default",
        parameters={"n": n},
        status=Status.RUNNING,
        started_at=timezone.now(),
        split_done=True,
        subtasks_total=n,
        subtasks_done=n // 2,
    )
    SubTask.objects.bulk_create(
        SubTask(
            parent=parent,
            index=i,
            status=Status.SUCCEEDED if i < n // 2 else Status.QUEUED,
            finish_seq=i + 1 if i < n // 2 else None,
            result=i,
        )
        for i in range(n)
    )
    return parent


def _reads(client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return [query["sql"] for query in captured.captured_queries]


@pytest.mark.parametrize("suffix", [".json", "/"])
def test_a_fan_outs_status_costs_the_same_at_any_size(client, suffix):
    small, big = _fan_out(10), _fan_out(2000)
    small_reads = _reads(client, f"/tasks/{small.pk}{suffix}")
    big_reads = _reads(client, f"/tasks/{big.pk}{suffix}")
    assert len(small_reads) == len(big_reads)
    if suffix == ".json":
        assert not [sql for sql in big_reads if '"longtask_subtask"' in sql]
        document = client.get(f"/tasks/{big.pk}.json").json()
        assert document["subtasks"] == {
            "total": 2000,
            "succeeded": 1000,
            "failed": 0,
            "pending": 1000,
            "skipped": 0,
        }

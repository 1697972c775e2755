"""End to end through real django-q2 worker processes on the embedded default."""

from __future__ import annotations

import pytest
from django.db import close_old_connections

import longtask
from longtask.models import LongTask, Status
from tests.helpers import wait_for
from tests.processes import qcluster, stop

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(task: LongTask) -> LongTask | None:
    close_old_connections()
    task.refresh_from_db()
    return task if task.is_finished else None


def test_report_runs_on_a_real_cluster(tmp_path, client):
    task = longtask.start("report", {"month": "2026-10", "work_ms": 30})
    seen_running = False
    with qcluster(tmp_path / "qcluster.log") as cluster:

        def progressed():
            nonlocal seen_running
            doc = client.get(f"/tasks/{task.pk}.json").json()
            if doc["status"] == "RUNNING" and (doc["progress"]["current"] or 0) > 0:
                seen_running = True
                return doc
            return finished(task)

        wait_for(progressed, 60, "the report to start reporting progress")
        wait_for(lambda: finished(task), 60, "the report to finish")
        stop(cluster)
    log = (tmp_path / "qcluster.log").read_text()
    assert task.status == Status.SUCCEEDED, (task.error, log[-3000:])
    assert seen_running, "progress was never observed while the task ran"
    assert task.attempts == 1
    assert len(task.result["rows"]) == 32
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    assert "2026-10-31" in html
    assert client.get(f"/tasks/{task.pk}/download/").status_code == 200


def test_two_workers_share_many_tasks_without_locking_errors(tmp_path):
    tasks = [
        longtask.start("report", {"month": f"2025-{m:02d}", "work_ms": 0}) for m in range(1, 13)
    ]
    with qcluster(tmp_path / "qcluster.log", LONGTASK_WORKERS="2"):
        wait_for(lambda: all(finished(t) for t in tasks), 120, "twelve reports to finish")
    log = (tmp_path / "qcluster.log").read_text()
    assert "database is locked" not in log
    assert {t.status for t in tasks} == {Status.SUCCEEDED}, log[-3000:]
    assert all(t.attempts == 1 for t in tasks)

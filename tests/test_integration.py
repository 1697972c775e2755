"""End to end through real django-q2 worker processes on the embedded default."""

from __future__ import annotations

import pytest
from django.db import close_old_connections

import longtask
from longtask.models import LongTask, Status
from tests.helpers import quilt_squares, wait_for
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


def test_quilt_fans_out_over_real_parent_and_subtask_clusters(tmp_path, client):
    from django.conf import settings

    from longtask.models import SubTask

    task = longtask.start("quilt", {"rows": 20, "cols": 20, "work_ms": 2})
    subtask_env = {"Q_CLUSTER_NAME": settings.LONGTASK_QUEUES["subtasks"]["cluster"]}
    with (
        qcluster(tmp_path / "parents.log"),
        qcluster(tmp_path / "subtasks.log", **subtask_env),
    ):
        wait_for(lambda: finished(task), 120, "the 20x20 quilt to finish")
    logs = (tmp_path / "parents.log").read_text() + (tmp_path / "subtasks.log").read_text()
    assert task.status == Status.SUCCEEDED, (task.error, logs[-3000:])
    assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (400, 400, 0)
    subtasks = list(SubTask.objects.filter(parent=task).order_by("index"))
    # Every square ran once and was counted once.
    assert [s.index for s in subtasks] == list(range(400))
    assert {s.attempts for s in subtasks} == {1}
    assert sorted(s.finish_seq for s in subtasks) == list(range(1, 401))
    colors = task.result["colors"]
    for s in subtasks:
        assert colors[s.result["row"]][s.result["col"]] == s.result["color"]
    assert "database is locked" not in logs
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    assert quilt_squares(html) == (400, 0)

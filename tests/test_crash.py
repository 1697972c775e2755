"""Workers killed outright (SIGKILL) in the middle of a quilt: it still completes, once."""

from __future__ import annotations

import os
import signal

import pytest
from django.conf import settings
from django.db import close_old_connections

import longtask
from longtask.models import LongTask, Status, SubTask
from tests.helpers import wait_for
from tests.processes import group_alive, qcluster

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FAST_RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.3",
    "LONGTASK_STALE_AFTER": "2",
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}


def state(task: LongTask) -> LongTask:
    close_old_connections()
    task.refresh_from_db()
    return task


def test_sigkilled_subtask_cluster_mid_quilt_completes_exactly_once(tmp_path):
    task = longtask.start("quilt", {"rows": 10, "cols": 10, "work_ms": 40})
    subtasks = {"Q_CLUSTER_NAME": settings.LONGTASK_QUEUES["subtasks"]["cluster"], **FAST_RECOVERY}
    log = tmp_path / "workers.log"
    with qcluster(log, **FAST_RECOVERY):  # the parents' cluster
        with qcluster(log, **subtasks) as doomed:
            wait_for(lambda: state(task).subtasks_done >= 20, 60, "some squares to finish")
            os.killpg(doomed.pid, signal.SIGKILL)  # the machine is lost mid-chunk
            doomed.wait(10)
            wait_for(lambda: not group_alive(doomed.pid), 10, "the killed cluster to vanish")
        done_at_kill = state(task).subtasks_done
        assert done_at_kill < 100, "the quilt finished before the kill; make it longer"
        lost = SubTask.objects.filter(parent=task, status=Status.RUNNING).count()
        assert lost > 0, "no square was in flight when the cluster died"
        # A new worker (with its sweeper) takes over; the lost squares are re-queued.
        with qcluster(log, command=("longtask_worker", "--queue", "subtasks"), **subtasks):
            wait_for(lambda: state(task).is_finished, 120, "the quilt to complete")
    output = log.read_text()
    assert task.status == Status.SUCCEEDED, (task.error, output[-3000:])
    assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (100, 100, 0)
    rows = SubTask.objects.filter(parent=task)
    assert sorted(rows.values_list("finish_seq", flat=True)) == list(range(1, 101))
    assert rows.filter(attempts__gt=1).count() >= lost  # the lost runs were counted
    assert all(color for line in task.result["colors"] for color in line)
    assert output.count("status=SUCCEEDED after fan-in") == 1
    assert "database is locked" not in output

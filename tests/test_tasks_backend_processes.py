"""A django.tasks task on real workers: it survives a SIGKILLed worker, with two worker ids."""

from __future__ import annotations

import os
import signal

import pytest
from django.db import close_old_connections
from django.tasks import TaskResultStatus

from longtask.models import LongTask, Status
from tests import tasks_sample as sample
from tests.helpers import wait_for
from tests.processes import group_alive, qcluster

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FAST_RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.3",
    "LONGTASK_STALE_AFTER": "2",
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}


def status(task_id: str) -> str:
    close_old_connections()
    return LongTask.objects.get(pk=task_id).status


def test_a_task_whose_worker_is_sigkilled_is_recovered_on_another(tmp_path):
    flag = tmp_path / "go"
    result = sample.wait_for_file.enqueue(str(flag))
    log = tmp_path / "workers.log"
    with qcluster(log, **FAST_RECOVERY) as doomed:
        wait_for(lambda: status(result.id) == Status.RUNNING, 60, "the first attempt to run")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        wait_for(lambda: not group_alive(doomed.pid), 10, "the killed cluster to vanish")
    flag.write_text("done")
    with qcluster(log, command=("longtask_worker",), **FAST_RECOVERY):
        wait_for(lambda: status(result.id) == Status.SUCCEEDED, 60, "the recovered attempt")
    result.refresh()
    output = log.read_text()
    assert result.status == TaskResultStatus.SUCCESSFUL, output[-3000:]
    assert result.return_value == "done"
    assert len(result.worker_ids) == 2 and result.worker_ids[0] != result.worker_ids[1]
    assert result.errors[0].exception_class is RuntimeError
    assert "WorkerLost" in result.errors[0].traceback

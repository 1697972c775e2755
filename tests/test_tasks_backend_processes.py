"""A django.tasks task on real workers: it survives a SIGKILLed worker, with two worker ids."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import close_old_connections
from django.tasks import TaskResultStatus, default_task_backend

from longtask.models import LongTask, Status
from tests import tasks_sample as sample
from tests.helpers import wait_for
from tests.processes import ROOT, group_alive, process_env, qcluster, stop_all
from tests.test_live import daphne
from tests.test_make_run import Browser

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


# `make run` as its Procfile runs it: daphne and one longtask_worker per queue -------------

#: Generous: two cores, shared with other test runs.
DEADLINE = 60


def shell(code: str) -> str:
    """Run ``manage.py shell -c code`` as a user would; return the last line it printed."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def enqueue_in_shell(call: str) -> str:
    """Enqueue ``call`` (a ``quiltsite.tasks`` task) from a shell; return the result's id."""
    printed = shell(f"from quiltsite.tasks import count_to; print({call}.id)")
    return str(uuid.UUID(printed))


def log_in(browser: Browser, username: str, password: str) -> None:
    html = browser.request("/admin/login/")[2]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token, html[-2000:]
    form = {"csrfmiddlewaretoken": token[1], "username": username, "password": password}
    status, headers, _ = browser.request("/admin/login/", {**form, "next": "/admin/"})
    assert status == 302 and headers["Location"].endswith("/admin/"), (status, headers)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = parent_of(pid)
        except OSError:
            return False
    return False


def test_make_run_serves_a_shell_enqueued_task_and_recovers_it_from_a_sigkilled_worker(
    tmp_path, django_user_model
):
    django_user_model.objects.create_superuser("root", password="pw-root")
    default = ("longtask_worker", "--queue", "default")
    subtasks = ("longtask_worker", "--queue", "subtasks")
    with (
        daphne(tmp_path / "daphne.log") as base,
        qcluster(tmp_path / "default.log", command=default, **FAST_RECOVERY) as worker,
        qcluster(tmp_path / "subtasks.log", command=subtasks, **FAST_RECOVERY) as other,
    ):
        browser = Browser(base)
        log_in(browser, "root", "pw-root")

        def document(task_id: str) -> dict:
            status, _, body = browser.request(f"/tasks/{task_id}.json")
            assert status == 200, body[-2000:]
            return json.loads(body)

        # A task enqueued in a shell, followed on its status page to its end.
        quick = enqueue_in_shell("count_to.enqueue(3, step_ms=10)")
        wait_for(lambda: document(quick)["status"] == "SUCCEEDED", DEADLINE, "the quick task")
        result = default_task_backend.get_result(quick)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == {"counted": 3} and result.attempts == 1

        # One that runs for a while: its worker process is killed outright mid-task.
        steps = 40
        slow = enqueue_in_shell(f"count_to.enqueue({steps}, step_ms=50)")
        wait_for(
            lambda: document(slow)["progress"]["current"] >= 2, DEADLINE, "the slow task to count"
        )
        [worker_id] = default_task_backend.get_result(slow).worker_ids
        host, pid = worker_id.rsplit(":", 1)
        assert host == socket.gethostname()
        assert descends_from(int(pid), worker.pid)  # a process of this test's worker
        assert document(slow)["progress"]["current"] < steps
        os.kill(int(pid), signal.SIGKILL)

        # The sweeper finds it without a heartbeat and queues its next attempt.
        wait_for(lambda: document(slow)["status"] == "SUCCEEDED", DEADLINE, "the recovered attempt")
        assert worker.poll() is None  # `make run`'s worker was never restarted by hand
        stop_all([worker, other])  # both at once, as honcho stops them
    result = default_task_backend.get_result(slow)
    output = (tmp_path / "default.log").read_text()
    assert result.status == TaskResultStatus.SUCCESSFUL, output[-3000:]
    assert result.return_value == {"counted": steps}
    assert len(result.worker_ids) == 2 and result.worker_ids[0] == worker_id
    assert result.worker_ids[1] != worker_id
    assert result.errors[0].exception_class is RuntimeError
    assert "WorkerLost" in result.errors[0].traceback
    assert f"its worker pid={pid} died" in output  # the cluster was restarted

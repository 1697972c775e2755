"""`manage.py longtask_worker` restarts its django-q2 cluster when a process of it dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import close_old_connections

import longtask
from longtask.kinds import registry
from longtask.models import LongTask, Status
from tests.helpers import wait_for
from tests.kinds import TimeLimited
from tests.processes import children, qcluster, stop, wchan

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WEDGE_AFTER = 2.0
#: A task started after a kill must succeed within this (seconds): a restart measured
#: 1.3-2.5 s here (death seen within 0.2 s, the old cluster gone within 1 s, qcluster's
#: start about 1 s), so 15 s leaves room for a loaded machine and still fails fast.
BOUND = 15.0
WORKER_ENV = {
    "LONGTASK_TEST_APP": "1",  # the workers know tests.kinds.TimeLimited
    "LONGTASK_WEDGE_AFTER": str(WEDGE_AFTER),
    "LONGTASK_WORKERS": "2",
}


@dataclass
class Cluster:
    main: int
    sentinel: int
    workers: list[int]
    monitor: int
    pusher: int

    def pipe_reader(self) -> int | None:
        """The idle worker blocked reading the task pipe: it holds the queue's read lock."""
        readers = [pid for pid in self.workers if "pipe_read" in wchan(pid)]
        return readers[0] if len(readers) == 1 else None


def current_cluster(worker: subprocess.Popen, log: Path) -> Cluster | None:
    """The cluster under ``worker`` once all its processes are up, or None."""
    mains = children(worker.pid)
    sentinels = children(mains[0]) if mains else []
    members = children(sentinels[0]) if sentinels else []
    text = log.read_text()

    def pids(pattern: str) -> list[int]:
        return [int(pid) for pid in re.findall(pattern, text) if int(pid) in members]

    workers = pids(r"ready for work at (\d+)")
    monitor, pusher = pids(r"monitoring at (\d+)"), pids(r"pushing tasks at (\d+)")
    if not (monitor and pusher and len(workers) == len(members) - 2 >= 1):
        return None
    return Cluster(mains[0], sentinels[0], workers, monitor[0], pusher[0])


def idle_cluster(worker: subprocess.Popen, log: Path) -> Cluster:
    """Wait for a cluster whose idle workers wait on the task queue, one reading its pipe."""

    def ready() -> Cluster | None:
        cluster = current_cluster(worker, log)
        return cluster if cluster and cluster.pipe_reader() else None

    # A look scans /proc three times (about 0.1 s of CPU here): poll gently, or the
    # test itself slows qcluster's start on a 2-core machine.
    return wait_for(ready, 30, "an idle cluster with a worker reading the task pipe", 0.25)


@contextmanager
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    log = tmp_path / "worker.log"
    with qcluster(log, command=("longtask_worker",), **WORKER_ENV) as worker:
        yield worker, log


@pytest.fixture
def time_limited_kind() -> Iterator[None]:
    # Not in conftest's TEST_KINDS: a second kind with a time limit would change the
    # system check that test_failures expects.
    registry.register(TimeLimited)
    yield
    registry.unregister(TimeLimited.name)


def state(task: LongTask) -> LongTask:
    close_old_connections()
    task.refresh_from_db()
    return task


def assert_queue_runs(log: Path) -> float:
    """Start a plain task; it must succeed within BOUND. Return the seconds it took."""
    began = time.monotonic()
    task = longtask.start("report", {"month": "2026-10", "work_ms": 0})
    try:
        wait_for(lambda: state(task).status == Status.SUCCEEDED, BOUND, "a new task to succeed")
    except AssertionError:
        raise AssertionError(f"stuck {state(task).status}:\n{log.read_text()[-3000:]}") from None
    return time.monotonic() - began


def replaced(worker: subprocess.Popen, log: Path, old: Cluster) -> Cluster:
    """Wait for a new idle cluster in place of ``old``.

    Jobs the old cluster had taken from the broker are lost with it (until the broker's
    ``retry``, or the sweeper), so a test starts its next task only on the new one.
    """

    def new() -> Cluster | None:
        cluster = current_cluster(worker, log)
        return cluster if cluster and cluster.main != old.main and cluster.pipe_reader() else None

    try:
        return wait_for(new, BOUND, "the cluster to be restarted", 0.25)
    except AssertionError:
        raise AssertionError(f"no restart:\n{log.read_text()[-3000:]}") from None


def restarts(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "restarting its cluster" in line]


def test_a_killed_idle_worker_holding_the_task_pipe_does_not_wedge_the_queue(tmp_path):
    with supervised(tmp_path) as (worker, log):
        cluster = idle_cluster(worker, log)
        # Without supervision the reincarnated worker and the survivor wait forever on the
        # read lock the killed one held: the next task stayed QUEUED (200 s measured).
        os.kill(cluster.pipe_reader(), signal.SIGKILL)
        replaced(worker, log, cluster)
        assert_queue_runs(log)
        assert len(restarts(log)) == 1, log.read_text()[-3000:]


@pytest.mark.parametrize("role", ["monitor", "pusher"])
def test_a_killed_monitor_or_pusher_restarts_the_cluster(tmp_path, role):
    with supervised(tmp_path) as (worker, log):
        cluster = idle_cluster(worker, log)
        os.kill(getattr(cluster, role), signal.SIGKILL)
        replaced(worker, log, cluster)
        assert_queue_runs(log)
        [line] = restarts(log)
        assert "WARNING" in line, line


def test_a_killed_busy_worker_restarts_the_cluster(tmp_path):
    busy = longtask.start("report", {"month": "2026-10", "work_ms": 500})  # 16 s of work
    with supervised(tmp_path) as (worker, log):
        cluster = idle_cluster(worker, log)
        wait_for(lambda: state(busy).status == Status.RUNNING, BOUND, "the long task to run")
        pid = int(busy.worker.rsplit(":", 1)[1])
        assert pid in cluster.workers
        os.kill(pid, signal.SIGKILL)
        replaced(worker, log, cluster)
        assert_queue_runs(log)
    assert state(busy).status == Status.RUNNING  # left to the sweeper, after STALE_AFTER


def test_jobs_past_their_time_limit_twenty_times_in_a_row(tmp_path, time_limited_kind):
    # django-q2 replaces a worker whose job outlived its timeout; doing so can leave the
    # result queue's lock held (django-q2 #339), so each time the cluster is restarted.
    with supervised(tmp_path) as (worker, log):
        cluster = idle_cluster(worker, log)
        for round_ in range(20):
            task = longtask.start("test-time-limited", {})
            wait_for(lambda t=task: state(t).is_finished, BOUND, f"time limit {round_ + 1}")
            assert task.status == Status.FAILED and "TimeLimitExceeded" in task.error
            cluster = replaced(worker, log, cluster)
        assert_queue_runs(log)
    assert len(restarts(log)) == 20


def test_sigterm_while_restarting_stops_within_seconds(tmp_path):
    with supervised(tmp_path) as (worker, log):
        cluster = idle_cluster(worker, log)
        os.kill(cluster.pipe_reader(), signal.SIGKILL)
        wait_for(lambda: restarts(log), BOUND, "the restart to begin")
        assert stop(worker, timeout=10) < 3
        assert worker.returncode == 0


def test_a_recycled_worker_is_replaced_without_a_restart(tmp_path):
    """django-q2 replaces a worker every LONGTASK_WORKER_RECYCLE jobs: the worker beside it
    keeps running its task (a restart killed it, and left it to the sweeper)."""
    long = longtask.start("report", {"month": "2026-10", "work_ms": 300})  # ~10 s of work
    log = tmp_path / "worker.log"
    env = {**WORKER_ENV, "LONGTASK_WORKER_RECYCLE": "3"}
    with qcluster(log, command=("longtask_worker",), **env) as worker:
        idle_cluster(worker, log)
        wait_for(lambda: state(long).status == Status.RUNNING, BOUND, "the long task to run")
        short = [longtask.start("report", {"month": "2026-10", "work_ms": 0}) for _ in range(7)]
        for task in short:
            wait_for(lambda t=task: state(t).status == Status.SUCCEEDED, BOUND, "a short task")
        recycled = [line for line in log.read_text().splitlines() if "recycled worker" in line]
        assert len(recycled) >= 2, log.read_text()[-3000:]
        wait_for(lambda: state(long).is_finished, 60, "the long task to finish")
        assert restarts(log) == [], log.read_text()[-3000:]
    assert (long.status, long.attempts) == (Status.SUCCEEDED, 1)

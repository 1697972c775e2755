"""On PostgreSQL and Redis: a quilt shared by two machines, and service restarts mid-quilt.

These run only in the services pass (DATABASE_URL and REDIS_URL set). Each starts real
worker processes; crash recovery is shortened (FAST_RECOVERY) so that the sweeper
re-queues lost work within seconds. The restart tests stop and start the machine's own
Redis and PostgreSQL, so they need root and the servers' tools; they skip otherwise,
unless LONGTASK_REQUIRE_SERVICES=1 makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.db import InterfaceError, OperationalError, close_old_connections, connection

import longtask
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.conftest import services
from tests.helpers import close_connections_everywhere, wait_for
from tests.processes import group_alive, qcluster

pytestmark = [services, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FAST_RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.3",
    "LONGTASK_STALE_AFTER": "2",
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}
TASK_WORKER = ("longtask_worker", "--queue", "default")
SUBTASK_WORKER = ("longtask_worker", "--queue", "subtasks")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_CLI = ["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT)]
REDIS_START = [
    "redis-server",
    "--daemonize", "yes",
    "--bind", "127.0.0.1", "-::1",
    "--port", str(REDIS_PORT),
    "--save", "",
    "--appendonly", "no",
    "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_jobs_left() -> Iterator[None]:
    # Redis is not rolled back with the database: no job from another test runs here,
    # and none queued twice by the sweeper here (a harmless duplicate) is left behind.
    yield from broker.emptied()


# Reading the database while it may be away --------------------------------------------


def query[T](read: Callable[[], T]) -> T | None:
    """Run ``read`` on a fresh or healthy connection; None while the database is away."""
    try:
        close_old_connections()
        return read()
    except (OperationalError, InterfaceError):
        connection.close()  # reconnect at the next try
        return None


def fresh(task: LongTask) -> LongTask | None:
    return query(lambda: (task.refresh_from_db(), task)[1])


def finished(task: LongTask) -> bool:
    return bool((t := fresh(task)) and t.is_finished)


def done_at_least(task: LongTask, n: int) -> bool:
    return bool((t := fresh(task)) and t.split_done and t.subtasks_done >= n)


def queued_jobs(queue_name: str) -> int:
    """Jobs waiting in a queue's Redis list and delayed set (not yet taken by a cluster)."""
    return broker.count(broker.cluster_of(queue_name))


def mid_quilt(task: LongTask) -> bool:
    """Squares have finished and chunk jobs still wait in Redis: the moment to break things.

    (These tests run without the fan-out window, which would keep few jobs in Redis.)"""
    return done_at_least(task, 100) and queued_jobs("subtasks") >= 3


# Processes ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_machine(worker: subprocess.Popen) -> None:
    """SIGKILL a ``longtask_worker`` and its qcluster, as if their machine were lost.

    ``longtask_worker`` runs qcluster in a process group of its own (and asks for
    SIGTERM if its parent dies, a clean stop), so both groups are killed, qcluster's first.
    """
    groups = [os.getpgid(child) for child in children(worker.pid)]
    assert groups, "longtask_worker has no qcluster child"
    for pgid in [*groups, worker.pid]:
        os.killpg(pgid, signal.SIGKILL)
    worker.wait(10)
    for pgid in [*groups, worker.pid]:
        wait_for(lambda pgid=pgid: not group_alive(pgid), 10, "the killed machine to vanish")


def lose_mid_chunk(worker: subprocess.Popen, node: str, task: LongTask) -> list[int]:
    """Kill ``node``'s machine (``worker``) while it holds squares of ``task``; return them.

    The machine is frozen (SIGSTOP) and looked at: holding squares RUNNING, it is killed;
    between two chunks, it goes on (SIGCONT) and is looked at again. (Killed after one
    look, it could record its chunk in between, and none would be lost.)
    """
    held_by_node = SubTask.objects.filter(parent=task, worker=node, status=Status.RUNNING)
    groups = [*(os.getpgid(child) for child in children(worker.pid)), worker.pid]

    def frozen_holding() -> list[int] | None:
        for pgid in groups:
            os.killpg(pgid, signal.SIGSTOP)
        held = list(held_by_node.values_list("pk", flat=True))
        if held:
            kill_machine(worker)
            return held
        for pgid in groups:
            os.killpg(pgid, signal.SIGCONT)
        return None

    return wait_for(lambda: query(frozen_holding), 30, "the machine frozen holding squares")


def logs_text(*paths: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in paths if path.exists())


# The machine's services -------------------------------------------------------------------


def need_local_service(url_variable: str, port: int, *tools: str) -> None:
    """Skip (fail under LONGTASK_REQUIRE_SERVICES=1) unless this test can restart the server."""
    url = urlsplit(os.environ.get(url_variable, ""))
    reason = None
    if os.geteuid() != 0:
        reason = "restarting the machine's servers needs root"
    elif missing := [tool for tool in tools if shutil.which(tool) is None]:
        reason = f"{', '.join(missing)} not found on PATH"
    elif url.hostname not in {"127.0.0.1", "localhost"} or (url.port or port) != port:
        reason = f"{url_variable} is not the local server on port {port}, which this test restarts"
    if reason:
        if os.environ.get("LONGTASK_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (LONGTASK_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


def redis_info(field: str) -> str | None:
    """A field of Redis's INFO (None when Redis does not answer)."""
    try:
        out = subprocess.run(
            [*REDIS_CLI, "info", "server"], capture_output=True, text=True, timeout=5
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    for line in out.splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    return None


def redis_up() -> bool:
    try:
        ping = subprocess.run([*REDIS_CLI, "ping"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return ping.stdout.strip() == "PONG"


@contextmanager
def redis_comes_back() -> Iterator[None]:
    """Whatever happens in the block, Redis runs again afterwards."""
    try:
        yield
    finally:
        if not redis_up():
            subprocess.run(REDIS_START, capture_output=True, timeout=30)
        wait_for(redis_up, 30, "Redis to answer PING again")


def restart_redis() -> None:
    """Restart Redis without saving: every list, delayed set and cache entry is lost."""
    subprocess.run([*REDIS_CLI, "shutdown", "nosave"], capture_output=True, timeout=30)
    wait_for(lambda: not redis_up(), 30, "Redis to stop")
    subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    wait_for(redis_up, 30, "Redis to answer PING after its restart")


def pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    assert len(versions) == 1, f"expected one PostgreSQL cluster version, found {versions}"
    return versions[0]


def pg_ctl(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action],
        capture_output=True,
        text=True,
        timeout=120,
    )


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1"], capture_output=True).returncode == 0


@contextmanager
def postgres_comes_back() -> Iterator[None]:
    try:
        yield
    finally:
        if not pg_ready():
            pg_ctl("start")
        wait_for(pg_ready, 60, "PostgreSQL to accept connections again")
        connection.close()  # pytest-django's teardown flushes on a fresh connection


def postmaster_started() -> str | None:
    return query(lambda: _one("SELECT pg_postmaster_start_time()::text"))


def _one(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


# What every completed quilt must show -----------------------------------------------------


def assert_quilt_complete_once(task: LongTask, squares: int, output: str) -> None:
    task = fresh(task)
    assert task is not None
    assert task.status == Status.SUCCEEDED, (task.error, output[-3000:])
    assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (squares, squares, 0)
    rows = SubTask.objects.filter(parent=task)
    assert rows.count() == squares
    assert not rows.exclude(status=Status.SUCCEEDED).exists()
    # Each square counted exactly once, in one finishing order without gaps.
    assert sorted(rows.values_list("finish_seq", flat=True)) == list(range(1, squares + 1))
    colors = [color for line in task.result["colors"] for color in line]
    assert len(colors) == squares and all(colors), "a square of the result has no colour"
    fan_ins = output.count(f"id={task.pk} kind=quilt status=SUCCEEDED after fan-in")
    assert fan_ins == 1, f"fan-in logged {fan_ins} times"


# The tests ---------------------------------------------------------------------------------


def test_two_nodes_share_a_quilt_and_the_survivor_finishes_when_one_is_killed(tmp_path):
    squares = 50 * 50
    task = longtask.start("quilt", {"rows": 50, "cols": 50, "work_ms": 10})
    logs = {name: tmp_path / f"{name}.log" for name in ("tasks", "node-a", "node-b")}
    began = time.monotonic()
    with ExitStack() as stack:
        # The parents' cluster: a plain qcluster, no sweeper, so node-b's sweeper recovers.
        stack.enter_context(qcluster(logs["tasks"], LONGTASK_NODE="tasks", **FAST_RECOVERY))
        node_a, _ = (
            stack.enter_context(
                qcluster(logs[node], command=SUBTASK_WORKER, LONGTASK_NODE=node, **FAST_RECOVERY)
            )
            for node in ("node-a", "node-b")
        )

        def both_nodes_busy() -> bool:
            rows = SubTask.objects.filter(parent=task)
            return (
                LongTask.objects.get(pk=task.pk).subtasks_done >= squares // 5
                and all(
                    rows.filter(worker=node, status=Status.SUCCEEDED).exists()
                    for node in ("node-a", "node-b")
                )
                and rows.filter(worker="node-a", status=Status.RUNNING).exists()
            )

        wait_for(lambda: query(both_nodes_busy), 60, "a fifth of the squares, run by both nodes")
        lost = lose_mid_chunk(node_a, "node-a", task)
        killed_after = time.monotonic() - began
        done_at_kill = fresh(task).subtasks_done
        assert done_at_kill < squares * 0.8, "the quilt was nearly done at the kill; make it longer"
        assert lost, "no square was in flight on node-a when it died"
        wait_for(lambda: finished(task), 180, "node-b to complete the quilt")
    output = logs_text(*logs.values())
    assert_quilt_complete_once(task, squares, output)
    rows = SubTask.objects.filter(parent=task)
    by_node = {node: rows.filter(worker=node).count() for node in ("node-a", "node-b")}
    assert by_node["node-a"] > 0 and by_node["node-b"] > 0, by_node
    assert sum(by_node.values()) == squares, f"squares run by another worker: {by_node}"
    # node-a's squares in flight were counted as lost attempts and finished by node-b.
    recovered = rows.filter(pk__in=lost)
    assert set(recovered.values_list("worker", flat=True)) == {"node-b"}
    assert all(attempts >= 2 for attempts in recovered.values_list("attempts", flat=True))
    assert "longtask sweep recovered" in logs["node-b"].read_text()  # node-b's sweeper did
    print(
        f"\nmulti-node: killed node-a at {killed_after:.1f}s with {done_at_kill}/{squares} done "
        f"and {len(lost)} in flight; done at {time.monotonic() - began:.1f}s; squares {by_node}"
    )


@pytest.mark.parametrize("window", ["off", "on"])
def test_a_quilt_completes_when_redis_restarts_mid_way(tmp_path, window):
    """Off: every square queued at the split, so that many chunk jobs wait in Redis when it
    goes away (a window's few are soon in the workers' own queues). On (the default): the
    window's refills pushed while Redis is away are lost, and must not stall it."""
    need_local_service("REDIS_URL", REDIS_PORT, "redis-server", "redis-cli")
    squares = 40 * 40
    task = longtask.start("quilt", {"rows": 40, "cols": 40, "work_ms": 10})
    logs = [tmp_path / "tasks.log", tmp_path / "subtasks.log"]
    began = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(redis_comes_back())  # exits last: after the workers stopped
        env = {**FAST_RECOVERY, **({"LONGTASK_FANOUT_WINDOW_JOBS": "0"} if window == "off" else {})}
        tasks = stack.enter_context(qcluster(logs[0], command=TASK_WORKER, **env))
        subtasks = stack.enter_context(qcluster(logs[1], command=SUBTASK_WORKER, **env))
        if window == "off":
            wait_for(lambda: mid_quilt(task), 60, "100 squares done and chunk jobs waiting")
        else:
            wait_for(lambda: done_at_least(task, 100), 60, "100 squares done")
        run_id = redis_info("run_id")
        restart_redis()  # the queued chunk jobs are gone with it
        restarted_after = time.monotonic() - began
        assert redis_info("run_id") != run_id, "Redis did not restart"
        done_at_restart = fresh(task).subtasks_done
        assert done_at_restart < squares * 0.8, "the quilt was nearly done; make it longer"
        wait_for(lambda: finished(task), 180, "the quilt to complete after Redis restarted")
        completed_after = time.monotonic() - began
        # The workers reconnected: neither had to be started again, and both take new jobs.
        assert tasks.poll() is None and subtasks.poll() is None, "a worker died with Redis"
        later = longtask.start("quilt", {"rows": 2, "cols": 2, "work_ms": 0})
        wait_for(lambda: finished(later), 60, "a quilt started after the restart to complete")
    output = logs_text(*logs)
    assert_quilt_complete_once(task, squares, output)
    assert_quilt_complete_once(later, 4, output)
    if window == "off":  # the chunk jobs waiting in Redis were lost: the sweeper re-queued them
        assert "longtask sweep recovered" in output
    print(
        f"\nredis restart at {restarted_after:.1f}s with {done_at_restart}/{squares} done; "
        f"done at {completed_after:.1f}s; a new quilt done at {time.monotonic() - began:.1f}s"
    )


@pytest.mark.parametrize("window", ["off", "on"])
def test_a_quilt_completes_when_postgresql_restarts_mid_way(tmp_path, window):
    """Off: every square queued at the split (see the Redis test); on: the default window,
    whose refills fail with the database and must not stall it."""
    need_local_service("DATABASE_URL", 5432, "pg_ctlcluster", "pg_isready")
    squares = 40 * 40
    task = longtask.start("quilt", {"rows": 40, "cols": 40, "work_ms": 10})
    logs = [tmp_path / "tasks.log", tmp_path / "subtasks.log"]
    began = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(postgres_comes_back())  # exits last: after the workers stopped
        env = {**FAST_RECOVERY, **({"LONGTASK_FANOUT_WINDOW_JOBS": "0"} if window == "off" else {})}
        tasks = stack.enter_context(qcluster(logs[0], command=TASK_WORKER, **env))
        subtasks = stack.enter_context(qcluster(logs[1], command=SUBTASK_WORKER, **env))
        if window == "off":
            wait_for(lambda: mid_quilt(task), 60, "100 squares done and chunk jobs waiting")
        else:
            wait_for(lambda: done_at_least(task, 100), 60, "100 squares done")
        started = postmaster_started()
        restart = pg_ctl("restart")
        assert restart.returncode == 0, restart.stderr
        restarted_after = time.monotonic() - began
        wait_for(pg_ready, 60, "PostgreSQL to accept connections after its restart")
        close_connections_everywhere()  # this process's connections died with the server
        assert wait_for(postmaster_started, 30, "a query to succeed") != started, "no restart"
        done_at_restart = fresh(task).subtasks_done
        assert done_at_restart < squares * 0.8, "the quilt was nearly done; make it longer"
        wait_for(lambda: finished(task), 180, "the quilt to complete after PostgreSQL restarted")
        completed_after = time.monotonic() - began
        assert tasks.poll() is None and subtasks.poll() is None, "a worker died with PostgreSQL"
        later = longtask.start("quilt", {"rows": 2, "cols": 2, "work_ms": 0})
        wait_for(lambda: finished(later), 60, "a quilt started after the restart to complete")
    output = logs_text(*logs)
    assert_quilt_complete_once(task, squares, output)
    assert_quilt_complete_once(later, 4, output)
    print(
        f"\npostgresql restart at {restarted_after:.1f}s with {done_at_restart}/{squares} done; "
        f"done at {completed_after:.1f}s; a new quilt done at {time.monotonic() - began:.1f}s"
    )

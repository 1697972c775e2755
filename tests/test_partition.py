"""A network partition (services pass): node-a is cut off from PostgreSQL and Redis mid-quilt.

node-a's workers reach PostgreSQL and Redis through ``tests.tcpproxy`` proxies; node-b's
connect directly. In the middle of a quilt, while node-a also runs a report, the test
cuts node-a off for longer than STALE_AFTER, until node-b's sweeper has taken node-a's
work over, then heals the partition. Expected: node-b carries on meanwhile and takes
over node-a's squares and report; node-a wakes up in runs it no longer owns and every
write they make is refused (the task-level refusals logged); nothing is counted twice;
the quilt completes once and the report succeeds once, by node-b's attempt.

The partitions:

- ``stalled-between-transactions``: node-a's open connections stall (nothing crosses,
  nothing is closed: a network that drops packets, a paused VM) and new ones hang;
  cut at a moment when none of node-a's database sessions is inside a transaction.
- ``stalled-holding-the-quilt-lock``: the same, cut while one of node-a's sessions holds
  the quilt's row lock (``SELECT ... FOR UPDATE`` of the parent: recording outcomes).
  PostgreSQL keeps that session and its lock for as long as the client stays silent.
- ``reset``: node-a's connections are reset at both ends and new ones refused; the
  server rolls back whatever node-a had begun.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

import longtask
from longtask.models import LongTask, Status, SubTask
from quiltsite.invoices import invoices_for
from quiltsite.models import Invoice
from tests import broker
from tests.conftest import services
from tests.helpers import wait_for
from tests.processes import qcluster, stop_all
from tests.tcpproxy import Proxy, is_loopback

pytestmark = [services, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALE_AFTER = 3.0
RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.5",
    "LONGTASK_STALE_AFTER": str(STALE_AFTER),
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}
TASK_WORKER = ("longtask_worker", "--queue", "default")
SUBTASK_WORKER = ("longtask_worker", "--queue", "subtasks")
ROWS = COLS = 24
SQUARES = ROWS * COLS
WORK_MS = 50
MONTH = "2026-10"
REPORT_WORK_MS = 300  # per day of the report: 31 days, about 9 s a run
#: Words of the lines a run logs when a write of its own is refused (longtask/engine/states/).
REFUSED = ("no longer holds", "refused")
#: A cut that missed its moment is healed at once (well within STALE_AFTER) and tried again.
CUT_TRIES = 200


class Partition(NamedTuple):
    existing: str  # what happens to node-a's open connections: "stall" or "reset"
    new: str  # what happens to its new connections: "drop" (they hang) or "refuse"
    moment: str  # "between" transactions, "holding" the quilt's row lock, or "any"


PARTITIONS = {
    "stalled-between-transactions": Partition("stall", "drop", "between"),
    "stalled-holding-the-quilt-lock": Partition("stall", "drop", "holding"),
    "reset": Partition("reset", "refuse", "any"),
}


@pytest.fixture(autouse=True)
def _no_jobs_left() -> Iterator[None]:
    yield from broker.emptied()


# node-a's connections --------------------------------------------------------------------


def need_loopback_services(*urls: str) -> None:
    """Skip (fail under LONGTASK_REQUIRE_SERVICES=1) unless the servers are on this machine.

    The proxy forwards to loopback addresses only, and telling node-a's sessions from
    node-b's needs the server's view of the proxy's ports (pg_stat_activity, /proc/net/tcp).
    """
    remote = [url for url in urls if not is_loopback(urlsplit(url).hostname or "")]
    if remote:
        reason = f"the partition test proxies only servers on this machine's loopback: {remote}"
        if os.environ.get("LONGTASK_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (LONGTASK_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


def through(proxy: Proxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def proxy_for(url: str) -> Proxy:
    parts = urlsplit(url)
    return Proxy(parts.hostname or "127.0.0.1", parts.port, max_connections=512, lifetime=300)


class Session(NamedTuple):
    """One of node-a's PostgreSQL sessions, as the server sees it."""

    pid: int
    state: str
    wait_event_type: str
    in_transaction: bool
    #: It holds a row lock of a task (SELECT ... FOR UPDATE on longtask_longtask).
    locks_a_task: bool
    query: str

    @property
    def waits_for_client(self) -> bool:
        """The server waits for this client (between statements, or mid-pipeline)."""
        return self.state.startswith("idle") or self.wait_event_type == "Client"

    @property
    def holds_transaction(self) -> bool:
        return self.in_transaction and self.waits_for_client


def sessions(proxy: Proxy) -> list[Session]:
    """node-a's sessions: those whose client port is one of the proxy's upstream ports."""
    ports = sorted(proxy.upstream_ports())
    if not ports:
        return []
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.pid, coalesce(a.state, ''), coalesce(a.wait_event_type, ''),"
            " a.xact_start IS NOT NULL,"
            " EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted"
            "   AND l.relation = %s::regclass AND l.mode = 'RowShareLock'),"
            " left(a.query, 120)"
            " FROM pg_stat_activity a WHERE a.client_port = ANY(%s)",
            [LongTask._meta.db_table, ports],
        )
        return [Session(*row) for row in cursor.fetchall()]


def unread(proxy: Proxy) -> int:
    """Bytes the proxy has forwarded that the server has not read yet.

    The receive queues of the server's ends of node-a's connections and the send queues
    of the proxy's ends, from /proc/net/tcp (both ends are on this machine).
    """
    ports, server = proxy.upstream_ports(), proxy.target[1]
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
            tx_queue, rx_queue = (int(queue, 16) for queue in fields[4].split(":"))
            if local == server and remote in ports:
                total += rx_queue
            elif local in ports and remote == server:
                total += tx_queue
    return total


def settled(proxy: Proxy) -> Callable[[], tuple[list[Session]] | None]:
    """A condition: node-a's sessions once the server has read all it was sent and none
    is still executing, seen twice in a row (a 1-tuple), else None."""
    seen: list[list[Session]] = []

    def condition() -> tuple[list[Session]] | None:
        found = sessions(proxy)
        busy = [
            s for s in found if s.state == "active" and s.wait_event_type not in {"Client", "Lock"}
        ]
        if busy or unread(proxy):
            seen.clear()
            return None
        seen.append(found)
        return (found,) if len(seen) >= 2 and seen[-1] == seen[-2] else None

    return condition


def blocked_sessions() -> list[tuple]:
    """Sessions waiting for a lock: (pid, blocked by, query)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_blocking_pids(pid), left(query, 100) FROM pg_stat_activity"
            " WHERE cardinality(pg_blocking_pids(pid)) > 0"
        )
        return cursor.fetchall()


def cut_off(pg: Proxy, redis: Proxy, partition: Partition) -> tuple[list[Session], int]:
    """Cut node-a off at the partition's moment; return its sessions holding a transaction
    (as the cut left them) and how many cuts missed the moment (healed at once)."""
    for missed in range(CUT_TRIES):
        if partition.moment == "holding":
            wait_for(
                lambda: any(s.locks_a_task for s in sessions(pg)),
                30,
                "a node-a session to lock the quilt's row",
                interval=0.001,
            )
        elif partition.moment == "between":
            wait_for(
                lambda: not any(s.in_transaction for s in sessions(pg)),
                30,
                "node-a's sessions to be outside a transaction",
                interval=0.001,
            )
        before = sessions(pg)
        for proxy in (pg, redis):
            proxy.cut(existing=partition.existing, new=partition.new)
        if partition.moment == "any":
            return [s for s in before if s.in_transaction], missed
        (found,) = wait_for(settled(pg), 10, "node-a's sessions to settle at the cut")
        holding = [s for s in found if s.holds_transaction]
        if partition.moment == "holding" and any(s.locks_a_task for s in holding):
            return holding, missed
        if partition.moment == "between" and not holding:
            return holding, missed
        for proxy in (pg, redis):
            proxy.restore()
    raise AssertionError(f"no cut at the moment {partition.moment!r} in {CUT_TRIES} tries")


# Processes and logs ------------------------------------------------------------------------


def worker(log_path: Path, command: tuple[str, ...], **env: str) -> Any:
    return qcluster(log_path, command=command, **env)


def fresh(task: LongTask) -> LongTask:
    close_old_connections()
    task.refresh_from_db()
    return task


def logs_text(*paths: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in paths if path.exists())


def refused_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in REFUSED)]


# The test ------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", list(PARTITIONS.values()), ids=list(PARTITIONS))
def test_a_partitioned_node_is_taken_over_and_its_stale_writes_are_refused(tmp_path, partition):
    database_url, redis_url = settings.DATABASE_URL, settings.REDIS_URL
    need_loopback_services(database_url, redis_url)
    began = time.monotonic()
    report = longtask.start("report", {"month": MONTH, "work_ms": REPORT_WORK_MS})
    quilt = longtask.start("quilt", {"rows": ROWS, "cols": COLS, "work_ms": WORK_MS})
    logs = {
        name: tmp_path / f"{name}.log"
        for name in ("node-a-tasks", "node-a-subtasks", "node-b-tasks", "node-b-subtasks")
    }
    node_a_logs = (logs["node-a-tasks"], logs["node-a-subtasks"])
    with ExitStack() as stack:
        pg = stack.enter_context(proxy_for(database_url))
        redis = stack.enter_context(proxy_for(redis_url))
        node_a = {
            "LONGTASK_NODE": "node-a",
            "DATABASE_URL": through(pg, database_url),
            "REDIS_URL": through(redis, redis_url),
            **RECOVERY,
        }
        node_b = {"LONGTASK_NODE": "node-b", **RECOVERY}
        workers = [
            stack.enter_context(worker(logs["node-a-tasks"], TASK_WORKER, **node_a)),
            stack.enter_context(worker(logs["node-a-subtasks"], SUBTASK_WORKER, **node_a)),
            stack.enter_context(worker(logs["node-b-subtasks"], SUBTASK_WORKER, **node_b)),
        ]
        # The report runs on node-a (node-b's task worker starts once node-a has it).
        wait_for(
            lambda: fresh(report).status == Status.RUNNING and report.worker == "node-a",
            60,
            "node-a to run the report",
        )
        workers.append(stack.enter_context(worker(logs["node-b-tasks"], TASK_WORKER, **node_b)))
        # Whatever happens, the partition heals before the workers are stopped.
        stack.callback(redis.restore)
        stack.callback(pg.restore)
        squares = SubTask.objects.filter(parent=quilt)

        def mid_quilt() -> bool:
            return (
                fresh(quilt).split_done
                and quilt.subtasks_done >= SQUARES // 6
                and squares.filter(worker="node-a", status=Status.RUNNING).exists()
                and squares.filter(worker="node-b", status=Status.SUCCEEDED).exists()
                and fresh(report).status == Status.RUNNING
            )

        wait_for(mid_quilt, 60, "both nodes to run squares, node-a the report too")
        assert sessions(pg), "PostgreSQL shows none of node-a's sessions (another proxy between?)"
        holding, missed_cuts = cut_off(pg, redis, partition)
        cut_at = time.monotonic()
        forwarded_at_cut = pg.bytes_forwarded + redis.bytes_forwarded
        # What node-a held when it was cut off.
        in_flight = dict(
            squares.filter(worker="node-a", status=Status.RUNNING).values_list("pk", "token")
        )
        report_token = fresh(report).token
        done_at_cut = fresh(quilt).subtasks_done
        assert done_at_cut < SQUARES * 0.8, "the quilt was nearly done at the cut; make it longer"
        assert report.worker == "node-a" and report.status == Status.RUNNING
        assert in_flight, "node-a ran no square at the cut"

        def taken_over() -> bool:
            held = squares.filter(pk__in=list(in_flight), status=Status.RUNNING)
            return (
                not any(in_flight[pk] == token for pk, token in held.values_list("pk", "token"))
                and fresh(report).token != report_token
                and fresh(quilt).subtasks_done > done_at_cut
            )

        try:
            wait_for(taken_over, 30, "node-b to take over node-a's squares and report")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc} (done at the cut: {done_at_cut}, now: {fresh(quilt).subtasks_done}); "
                f"node-a's sessions holding a transaction at the cut: {holding}; "
                f"now: {[s for s in sessions(pg) if s.in_transaction]}; "
                f"sessions waiting for a lock: {blocked_sessions()}"
            ) from None
        took_over_after = time.monotonic() - cut_at
        done_in_cut = fresh(quilt).subtasks_done - done_at_cut
        forwarded_in_cut = pg.bytes_forwarded + redis.bytes_forwarded - forwarded_at_cut
        cut_connections = pg.cut_connections + redis.cut_connections
        refused_connections = pg.refused + redis.refused
        for proxy in (pg, redis):
            proxy.restore()
        restored_after = time.monotonic() - cut_at
        restored_at = timezone.now()

        wait_for(lambda: fresh(quilt).is_finished, 90, "the quilt to complete")
        wait_for(lambda: fresh(report).is_finished, 60, "the report to finish")
        assert (quilt.status, report.status) == (Status.SUCCEEDED, Status.SUCCEEDED), (
            quilt.error,
            report.error,
            report.history,
            logs_text(*logs.values())[-3000:],
        )
        if partition.existing == "stall":
            # node-a wakes up in the report's run it lost: its write is refused, and logged.
            stale_run = f"LongTask id={report.pk} "
            refusal = f"(token {report_token}) no longer holds the task"
            wait_for(
                lambda: any(
                    stale_run in line and refusal in line
                    for line in refused_lines(logs_text(*node_a_logs))
                ),
                30,
                "node-a's lost run of the report to log its refused write",
            )
        # node-a works again after the partition.
        later = longtask.start("quilt", {"rows": 8, "cols": 8, "work_ms": 20})
        wait_for(lambda: fresh(later).is_finished, 60, "a quilt started after the partition")
        alive = [worker.poll() is None for worker in workers]
        stop_all(workers)
    output = logs_text(*logs.values())
    node_a_output = logs_text(*node_a_logs)

    # The quilt completed once, each square counted once; counters equal the rows.
    quilt = fresh(quilt)
    assert quilt.status == Status.SUCCEEDED, (quilt.error, output[-3000:])
    rows = SubTask.objects.filter(parent=quilt)
    succeeded, failed = (rows.filter(status=s).count() for s in (Status.SUCCEEDED, Status.FAILED))
    assert (quilt.subtasks_total, quilt.subtasks_done, quilt.subtasks_failed) == (
        rows.count(),
        succeeded + failed,
        failed,
    )
    assert (quilt.subtasks_total, succeeded, failed) == (SQUARES, SQUARES, 0)
    assert sorted(rows.values_list("finish_seq", flat=True)) == list(range(1, SQUARES + 1))
    colors = [color for line in quilt.result["colors"] for color in line]
    assert len(colors) == SQUARES and all(colors), "a square of the result has no colour"
    assert output.count(f"id={quilt.pk} kind=quilt status=SUCCEEDED after fan-in") == 1
    # node-a's squares in flight at the cut were counted as lost attempts and run again.
    recovered = rows.filter(pk__in=list(in_flight))
    assert all(attempts >= 2 for attempts in recovered.values_list("attempts", flat=True))
    assert not recovered.filter(token__in=list(in_flight.values())).exists()

    # The report succeeded once, by node-b's attempt; node-a's lost run changed nothing.
    report = fresh(report)
    assert report.status == Status.SUCCEEDED, (report.error, report.history, output[-3000:])
    assert (report.attempts, report.worker) == (2, "node-b"), report.history
    assert [event["event"] for event in report.history] == ["attempt failed"], report.history
    assert "WorkerLost" in report.history[0]["error"]
    first = datetime.date.fromisoformat(f"{MONTH}-01")
    days = [first + datetime.timedelta(days=n) for n in range(31)]
    table = report.result["rows"]
    assert [row[0] for row in table] == [*map(str, days), "total"]
    assert [row[1] for row in table[:-1]] == [len(invoices_for(day)) for day in days]
    assert Invoice.objects.filter(date__in=days).count() == sum(len(invoices_for(d)) for d in days)
    assert output.count(f"id={report.pk} kind=report status=SUCCEEDED") == 1
    assert f"id={report.pk} kind=report status=SUCCEEDED" not in node_a_output

    assert fresh(later).status == Status.SUCCEEDED
    assert all(alive), f"a worker died: {alive}"
    by_node_a_after = SubTask.objects.filter(
        worker="node-a", status=Status.SUCCEEDED, finished_at__gt=restored_at
    ).count()
    refused = refused_lines(node_a_output)
    print(
        f"\npartition {partition}: cut at {cut_at - began:.1f}s ({missed_cuts} cuts missed the "
        f"moment) with {done_at_cut}/{SQUARES} done, {len(in_flight)} squares and the report "
        f"in flight on node-a, {cut_connections} connections cut, {len(holding)} of node-a's "
        f"sessions inside a transaction; node-b took over after {took_over_after:.1f}s, "
        f"doing {done_in_cut} squares meanwhile; {forwarded_in_cut} bytes crossed the cut, "
        f"{refused_connections} connections refused; restored at {restored_after:.1f}s; node-a "
        f"logged {len(refused)} refused writes and then finished {by_node_a_after} squares; "
        f"done at {time.monotonic() - began:.1f}s"
    )
    for line in refused:
        print("  node-a:", line[:200])

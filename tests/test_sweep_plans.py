"""The sweeper's reads use indexes: their cost does not grow with finished history.

Every sweep query that reads ``longtask_subtask`` or ``longtask_longtask`` is captured
and explained on the database under test (SQLite in the embedded pass, PostgreSQL in the
service pass). A read may walk a *partial* index (it holds only waiting or running rows)
or search any index by a condition; a full scan of the table, or of a full index, fails.
On PostgreSQL sequential scans are priced out (``enable_seqscan = off``): the planner then
shows a Seq Scan only where no index can serve the query, whatever the table's size.
"""

from __future__ import annotations

import datetime
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longtask.engine import recovery
from longtask.guards import abuse
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask
from tests.helpers import index_walks

pytestmark = pytest.mark.django_db

TABLES = ("longtask_subtask", "longtask_longtask")
#: Indexes that hold only active rows: walking one whole is bounded by the active work.
PARTIAL = {
    index.name
    for model in (LongTask, SubTask)
    for index in model._meta.indexes
    if index.condition is not None
}


def _rows() -> None:
    """A running fan-out with subtasks in every state, and finished history beside it."""
    old = timezone.now() - datetime.timedelta(hours=1)
    parent = LongTask.objects.create(
        kind="test-squares",
        queue="default",
        parameters={"n": 8},
        status=Status.RUNNING,
        token="t1",
        heartbeat_at=old,
        started_at=old,
        split_done=True,
        subtasks_total=8,
    )
    statuses = [Status.QUEUED, Status.RETRYING, Status.RUNNING, Status.SUCCEEDED] * 2
    SubTask.objects.bulk_create(
        SubTask(
            parent=parent,
            index=i,
            parameters={"i": i},
            status=status,
            due_at=old,
            heartbeat_at=old if status == Status.RUNNING else None,
            token="c1" if status == Status.RUNNING else "",
            finish_seq=i + 1 if status == Status.SUCCEEDED else None,
        )
        for i, status in enumerate(statuses)
    )
    LongTask.objects.create(kind="test-count", queue="default", status=Status.QUEUED, due_at=old)
    LongTask.objects.create(
        kind="test-count", queue="default", status=Status.SUCCEEDED, finished_at=old
    )


def _sweep_reads() -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        recovery.sweep()
    reads = [
        query["sql"]
        for query in captured.captured_queries
        if query["sql"].lstrip().upper().startswith("SELECT")
        and any(f'"{table}"' in query["sql"] for table in TABLES)
    ]
    assert reads, "the sweep read nothing: the capture is broken"
    return reads


def _full_scans(sql: str) -> list[str]:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            details = [row[-1] for row in cursor.fetchall()]
        bad = []
        for detail in details:
            match = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", detail)
            if match and match[1] in TABLES and match[2] not in PARTIAL:
                bad.append(detail)
        return bad
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = [row[0] for row in cursor.fetchall()]
    bad = [line for line in plan if re.search(rf"Seq Scan on ({'|'.join(TABLES)})", line)]
    # A full index (not partial) walked without a condition is a full scan too.
    scan = rf"Index (?:Only )?Scan using (\w+) on ({'|'.join(TABLES)})"
    bad += [line for index, line in index_walks(plan, scan) if index not in PARTIAL]
    return bad


@pytest.mark.usefixtures("test_kinds_registered")
def test_every_sweep_read_uses_an_index():
    _rows()
    reads = _sweep_reads()
    scans = {sql: bad for sql in reads if (bad := _full_scans(sql))}
    assert scans == {}


@pytest.mark.usefixtures("test_kinds_registered")
def test_the_subtasks_cap_reads_the_parents_counters_through_an_index(user):
    # MAX_QUEUED_SUBTASKS is checked at every fan-out start (guards/abuse.py): from the
    # actor's active parents, never by counting the subtask table.
    _rows()
    LongTask.objects.filter(kind="test-squares").update(owner=user)
    for actor in (abuse.Actor(user=user), abuse.Actor(client_ip="192.0.2.1")):
        with CaptureQueriesContext(connection) as captured:
            abuse.check_start(registry.get("test-squares"), actor)
        reads = [q["sql"] for q in captured.captured_queries]
        assert not [sql for sql in reads if '"longtask_subtask"' in sql]
        assert {sql: bad for sql in reads if (bad := _full_scans(sql))} == {}

"""The task row's prepared statements (engine/states/statements.py): insert and claim;
and its read by primary key (models/rows.py), what every status request does.

A new task's row is inserted by a statement built once, and must be the row ``save``
makes. The claim is one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite 3.35+: the check
``longtask.E004`` refuses other databases).
"""

from __future__ import annotations

import sqlite3
import uuid

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.db.models.signals import post_save
from django.utils import timezone

import longtask
from longtask import checks
from longtask.engine import states
from longtask.engine.heartbeat import node_name
from longtask.models import TOTALS, LongTask, Status, TaskMinute, rows
from tests import broker
from tests import tasks_sample as sample

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


def started_count(kind: str) -> int:
    return (
        TaskMinute.objects.filter(minute=TOTALS, kind=kind).values_list("started", flat=True).get()
    )


def test_a_claim_moves_the_row_and_returns_it_as_claimed():
    task = longtask.start("test-count", {"n": 1})
    run, claimed = states.claim(task.pk)
    row = LongTask.objects.get(pk=task.pk)
    assert (row.status, row.token, row.attempts, row.worker) == (
        Status.RUNNING,
        run.token,
        1,
        node_name(),
    )
    assert row.started_at is not None and row.heartbeat_at == row.started_at
    for name in ("status", "token", "attempts", "started_at", "heartbeat_at", "kind", "queue"):
        assert getattr(claimed, name) == getattr(row, name), name
    assert claimed.parameters == row.parameters and row.parameters["n"] == 1
    assert (run.kind, run.started_at) == (row.kind, row.started_at)
    assert row.runs == []  # the kind keeps no runs


def test_a_task_that_runs_is_not_claimed_again():
    task = longtask.start("test-count", {"n": 1})
    first = states.claim(task.pk)
    assert first is not None
    assert states.claim(task.pk) is None
    assert LongTask.objects.get(pk=task.pk).token == first[0].token


def test_a_later_claim_keeps_the_first_start_and_the_start_is_counted_once():
    task = longtask.start("test-count", {"n": 1})
    first, _ = states.claim(task.pk, keep_runs=lambda kind: True)
    LongTask.objects.filter(pk=task.pk).update(status=Status.RETRYING)
    second, claimed = states.claim(task.pk, keep_runs=lambda kind: True)
    row = LongTask.objects.get(pk=task.pk)
    assert row.attempts == claimed.attempts == 2
    assert row.started_at == claimed.started_at == first.started_at == second.started_at
    assert [entry["worker"] for entry in row.runs] == [node_name(), node_name()]
    assert claimed.runs == row.runs
    assert started_count(task.kind) == 1


def test_only_kinds_that_keep_runs_get_an_entry():
    """django.tasks functions get theirs in the claim's own statement; other kinds that
    keep runs by a second UPDATE in its transaction; the rest get none."""
    plain = longtask.start("test-count", {"n": 1})
    _, claimed = states.claim(plain.pk)
    assert claimed.runs == LongTask.objects.get(pk=plain.pk).runs == []
    function = sample.noop_task.enqueue()
    _, claimed = states.claim(function.id, keep_runs=lambda kind: True)
    assert claimed.runs == LongTask.objects.get(pk=function.id).runs
    assert [entry["worker"] for entry in claimed.runs] == [node_name()]


def _store_undecodable(task: LongTask, column: str) -> None:
    huge = '{"n": ' + "9" * 5000 + "}"
    cast = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE longtask_longtask SET {column} = {cast} WHERE id = %s",  # noqa: S608
            [huge, LongTask._meta.pk.get_db_prep_value(task.pk, connection)],
        )


def test_parameters_python_cannot_decode_are_left_to_the_run():
    """The claim still succeeds; the run's read of them fails the task, not the claim."""
    task = longtask.start("test-count", {"n": 1})
    _store_undecodable(task, "parameters")
    run, claimed = states.claim(task.pk)
    assert "parameters" in claimed.get_deferred_fields()
    assert LongTask.objects.filter(pk=task.pk, status=Status.RUNNING, token=run.token).exists()


def test_a_row_read_by_its_key_is_the_row_the_orm_reads():
    owner = get_user_model().objects.create_user("grace")
    task = longtask.start("test-count", {"n": 2, "word": "é"}, owner=owner, name="read-me")
    LongTask.objects.filter(pk=task.pk).update(
        result={"total": 2, "nested": [1.5, None, "x"]},
        status=Status.SUCCEEDED,
        finished_at=timezone.now(),
    )
    fetched = rows.fetch(str(task.pk))
    expected = LongTask.objects.get(pk=task.pk)
    assert fetched is not None and fetched.get_deferred_fields() == set()
    for field in LongTask._meta.concrete_fields:
        assert getattr(fetched, field.attname) == getattr(expected, field.attname), field.name
    assert not fetched._state.adding and fetched._state.db == "default"
    assert rows.fetch(uuid.uuid4()) is None


def test_a_row_python_cannot_decode_reads_as_empty_where_it_is_shown():
    task = longtask.start("test-count", {"n": 1})
    LongTask.objects.filter(pk=task.pk).update(status=Status.SUCCEEDED, finished_at=timezone.now())
    _store_undecodable(task, "parameters")
    _store_undecodable(task, "result")
    assert rows.fetch(task.pk).get_deferred_fields() == {"parameters", "result"}
    shown = rows.fetch(task.pk, readable=True)
    assert (shown.parameters, shown.result, shown.get_deferred_fields()) == ({}, None, set())


def test_a_started_task_has_the_row_save_would_have_written():
    owner = get_user_model().objects.create_user("ada")
    fast = longtask.start("test-count", {"n": 3}, owner=owner, name="the-fast-one")
    slow = LongTask(kind=fast.kind, parameters=fast.parameters, owner=owner, queue=fast.queue)
    slow.save(force_insert=True)
    fields = [f.attname for f in LongTask._meta.concrete_fields]
    ignored = {"id", "name", "created_at", "due_at"}
    rows = {
        row["id"]: row for row in LongTask.objects.filter(pk__in=[fast.pk, slow.pk]).values(*fields)
    }
    assert {k: v for k, v in rows[fast.pk].items() if k not in ignored} == {
        k: v for k, v in rows[slow.pk].items() if k not in ignored
    }
    assert rows[fast.pk]["name"] == "the-fast-one" and rows[fast.pk]["owner_id"] == owner.pk
    assert not fast._state.adding and fast._state.db == "default"


def test_receivers_of_save_signals_still_hear_a_started_task():
    heard = []

    def receiver(sender, instance, created, **kwargs):
        heard.append((instance.pk, created))

    post_save.connect(receiver, sender=LongTask)
    try:
        task = longtask.start("test-count", {"n": 1})
    finally:
        post_save.disconnect(receiver, sender=LongTask)
    assert heard == [(task.pk, True)]


def test_a_database_without_update_returning_is_refused_by_a_check(monkeypatch):
    assert checks.check_database(None) == []
    if connection.vendor == "sqlite":
        monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    else:
        monkeypatch.setattr(connections["default"], "vendor", "mysql")
    [error] = checks.check_database(None)
    assert error.id == "longtask.E004" and "3.35" in error.msg


def test_a_claim_of_one_statement_counts_a_first_start_only():
    """Where only django.tasks functions keep runs (``runs_by_prefix``), PostgreSQL's claim
    is one statement with its count: the count and the runs entry as in a transaction."""
    result = sample.noop_task.enqueue()
    kind = LongTask.objects.get(pk=result.id).kind
    first, _ = states.claim(result.id, runs_by_prefix=True)
    LongTask.objects.filter(pk=result.id).update(status=Status.RETRYING)
    second, claimed = states.claim(result.id, runs_by_prefix=True)
    assert states.claim(result.id, runs_by_prefix=True) is None  # running: not claimed again
    row = LongTask.objects.get(pk=result.id)
    assert (row.token, row.attempts, claimed.attempts) == (second.token, 2, 2)
    assert row.started_at == first.started_at == second.started_at
    assert (
        [entry["worker"] for entry in row.runs]
        == [node_name(), node_name()]
        == [entry["worker"] for entry in claimed.runs]
    )
    assert started_count(kind) == 1


def succeeded_count(kind: str) -> int:
    found = TaskMinute.objects.filter(minute=TOTALS, kind=kind).values_list("succeeded", "runs")
    return sum(succeeded for succeeded, _ in found)


def test_a_refused_finish_counts_nothing():
    """The finish's count joins its move (one statement on PostgreSQL): a run fenced off
    by a later claim neither moves the row nor counts."""
    result = sample.noop_task.enqueue()
    stale, task = states.claim(result.id, runs_by_prefix=True)
    LongTask.objects.filter(pk=result.id).update(status=Status.RETRYING)
    current, _ = states.claim(result.id, runs_by_prefix=True)
    assert not states.succeed(stale, {"late": True}, None, task)
    row = LongTask.objects.get(pk=result.id)
    assert (row.status, row.result) == (Status.RUNNING, None)
    assert succeeded_count(task.kind) == 0
    assert states.succeed(current, 1, None)
    assert LongTask.objects.get(pk=result.id).status == Status.SUCCEEDED
    assert TaskMinute.objects.get(minute=TOTALS, kind=task.kind).succeeded == 1


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.parametrize("prepare", [True, False])
def test_a_runs_statements_are_prepared_once_per_connection_on_postgresql(settings, prepare):
    """Parsing and planning them was a third of PostgreSQL's CPU per run; Django's own
    queries stay as Django runs them (never prepared)."""
    settings.LONGTASK_PREPARE_STATEMENTS = prepare
    for _ in range(2):
        result = sample.noop_task.enqueue()
        (job,) = broker.jobs()
        broker.clear()
        broker.run(job.package)
        assert LongTask.objects.get(pk=result.id).status == Status.SUCCEEDED
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    starts = sorted(
        statement.split(" ", 2)[0] + " " + statement.split(" ", 2)[1] for statement in prepared
    )
    if prepare:
        assert starts == ["INSERT INTO", "WITH claimed", "WITH moved"], prepared
    else:
        assert prepared == []


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_hot_statement_after_a_lost_connection_runs_on_a_new_one():
    """Django replaces a connection that fails its health check when a cursor is made:
    the prepared statements' cursor is made on the connection that check leaves."""
    task = longtask.start("test-count", {"n": 1})
    states.claim(task.pk)  # the connection is open and has prepared its claim
    second = longtask.start("test-count", {"n": 2})
    connection.health_check_enabled = True  # CONN_HEALTH_CHECKS, as the demo sets it
    try:
        with psycopg.connect(**connection.get_connection_params()) as other:  # a restart
            other.execute(
                "SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid]
            )
        connection.health_check_done = False  # as at the start of a request or a job
        # One statement, no transaction first (whose BEGIN would check the connection).
        assert states.claim(second.pk, runs_by_prefix=True) is not None
    finally:
        connection.health_check_enabled = False

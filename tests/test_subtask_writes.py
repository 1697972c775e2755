"""What a chunk of subtasks costs the database: statements per batch, and their plans.

A fan-out of a million subtasks writes each row four times (saved, dispatched, claimed,
finished). Those writes go in one statement per batch, not one per subtask, and the
statements of the hot path (claim, heartbeat, record) reach their rows through the
primary key or (parent, index): never by walking a whole partial index, which on
PostgreSQL without statistics made every chunk read every waiting or running version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import longtask
from longtask.engine import states
from longtask.engine.states import fanout
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import index_walks

pytestmark = pytest.mark.django_db

TABLE = '"longtask_subtask"'


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


@contextmanager
def executions() -> Iterator[list[tuple[str, int]]]:
    """(sql, times run) of each statement: an executemany counts once per row."""
    seen: list[tuple[str, int]] = []

    def keep(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append((sql, len(params) if many else 1))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        yield seen


def _runs(seen: list[tuple[str, int]], verb: str) -> int:
    return sum(
        times
        for sql, times in seen
        if sql.lstrip().upper().startswith(verb) and TABLE in sql.split("WHERE")[0]
    )


def _split(n: int) -> tuple[LongTask, states.Run]:
    kind = registry.get("test-squares-tolerant")
    task = longtask.start(kind.name, {"n": n})
    broker.clear()
    run, _ = states.claim(task.pk)
    assert run is not None
    batch = [{"i": i, "fail": False, "flaky": 0} for i in range(n)]
    with executions() as seen:
        assert states.save_split_batch(run, task, kind, batch)
    assert _runs(seen, "INSERT") <= max(1, n * 9 // 999 + 1)  # SQLite caps parameters
    states.finish_split(run, task)
    return task, run


def test_a_split_batch_and_a_chunks_outcomes_take_a_statement_each_not_one_per_subtask():
    n = 300
    kind = registry.get("test-squares-tolerant")
    task, _ = _split(n)
    assert SubTask.objects.filter(parent=task).count() == n
    with executions() as seen:
        claimed = states.claim_subtasks(str(task.pk), 0, n - 1, None)
    assert [verb for verb in ("SELECT", "UPDATE") if _runs(seen, verb)] == ["UPDATE"], seen
    assert _runs(seen, "UPDATE") == 1  # one UPDATE ... RETURNING claims the chunk
    assert len(claimed.rows) == n
    assert [row[1] for row in claimed.rows] == list(range(n))  # in index order
    assert {row[3] for row in claimed.rows} == {1}  # the attempt each is on
    assert claimed.rows[5][2] == {"i": 5, "fail": False, "flaky": 0}
    assert states.claim_subtasks(str(task.pk), 0, n - 1, None).rows == []  # running now
    outcomes = [
        states.Outcome(pk, i, attempt, 0.001, token=claimed.token, result={"square": i * i})
        for pk, i, _params, attempt in claimed.rows
    ]
    # Fencing still holds row by row inside the one statement: a stale token, and the
    # same subtask twice, are refused.
    stale = outcomes[7]
    outcomes[7] = states.Outcome(
        stale.pk, stale.index, stale.attempts, 0.0, token="stale", result=0
    )
    outcomes.append(outcomes[8])
    with executions() as seen:
        recorded = states.record(str(task.pk), kind, outcomes)
    assert recorded.moved == n - 1
    updates = _runs(seen, "UPDATE")
    assert updates <= 3, seen  # the finished rows, the window's dispatch: not n
    rows = dict(
        SubTask.objects.filter(parent=task).values_list("index", "status").order_by("index")
    )
    assert rows.pop(7) == Status.RUNNING
    assert set(rows.values()) == {Status.SUCCEEDED}
    done = SubTask.objects.filter(parent=task, status=Status.SUCCEEDED)
    assert sorted(done.values_list("finish_seq", flat=True)) == list(range(1, n))
    assert done.get(index=5).result == {"square": 25}
    task.refresh_from_db()
    assert (task.subtasks_done, task.subtask_cursor) == (n - 1, n - 1)


def _walked_whole(sql: str) -> list[str]:
    """Plan lines that read longtask_subtask without searching an index by a condition."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'longtask_subtask'")
        ours = {row[0] for row in cursor.fetchall()}
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = [row[0] for row in cursor.fetchall()]
    bad = [line for line in plan if "Seq Scan on longtask_subtask" in line]
    scan = r"(?:Bitmap Index Scan on|Index (?:Only )?Scan using) (\w+)"
    return bad + [line for index, line in index_walks(plan, scan) if index in ours]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_the_chunk_statements_search_their_rows_by_key_without_statistics():
    # Thousands of rows in every state, as a large fan-out leaves them mid-way, and no
    # ANALYZE (CI's PostgreSQL runs without autovacuum; a fresh split has none either).
    n = 6000
    kind = registry.get("test-squares-tolerant")
    task, _ = _split(n)
    SubTask.objects.filter(parent=task).update(due_at=task.created_at)
    for first in range(0, 4000, 500):
        claimed = states.claim_subtasks(str(task.pk), first, first + 499, None)
        outcomes = [
            states.Outcome(pk, i, attempt, 0.0, token=claimed.token, result=i)
            for pk, i, _params, attempt in claimed.rows
        ]
        states.record(str(task.pk), kind, outcomes[: len(outcomes) // 2 + 100])
    with literal_statements() as seen:
        claimed = states.claim_subtasks(str(task.pk), 4000, 4124, None)
        pks = [row[0] for row in claimed.rows]
        states.beat_subtasks(claimed.token, pks)
        states.record(
            str(task.pk),
            kind,
            [
                states.Outcome(pk, i, attempt, 0.0, token=claimed.token, result=i)
                for pk, i, _params, attempt in claimed.rows
            ],
        )
    hot = [
        sql
        for sql in seen
        if TABLE in sql and sql.lstrip().upper().startswith(("SELECT", "UPDATE"))
    ]
    assert len(hot) >= 4, hot
    assert any("unnest(" in sql for sql in hot), hot  # the record's, bound on the server
    assert {sql[:120]: bad for sql in hot if (bad := _walked_whole(sql))} == {}


@contextmanager
def literal_statements() -> Iterator[list[str]]:
    """Each statement run, its parameters written into it (also those bound on the server,
    which Django logs apart from their statement), for EXPLAIN."""
    seen: list[str] = []

    def keep(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(psycopg.ClientCursor(connection.connection).mogrify(sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        yield seen


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
# (jsonb keeps numbers as numerics: a whole float comes back an int, on any path.)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(st.dictionaries(_TEXT, _JSON, max_size=4), min_size=1, max_size=30))
def test_a_split_batch_saves_each_parameters_as_given_numbered_in_order(batch):
    """Quotes, backslashes, braces, commas and any Unicode survive the batch's INSERT (on
    PostgreSQL a text array cast row by row to jsonb), and each row gets its index."""
    parent = longtask.start("test-squares", {"n": 1})
    first = 7
    with transaction.atomic():
        fanout._insert_subtasks(parent.pk, first, batch)
    saved = list(
        SubTask.objects.filter(parent=parent).order_by("index").values_list("index", "parameters")
    )
    assert saved == [(first + i, params) for i, params in enumerate(batch)]
    assert set(SubTask.objects.filter(parent=parent).values_list("status", flat=True)) == {"QUEUED"}
    parent.delete()

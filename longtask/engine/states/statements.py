"""The task row's hot statements, prepared once: its insert, a run's claim, fenced UPDATEs.

A no-op task is claimed and finished in a few hundred microseconds of database work,
but building those statements through the ORM (a QuerySet, its lookups, the compiler)
cost about a millisecond of Python per task, most of it with SQLite's write lock held.
Here each statement's SQL is built once per shape (the columns it sets, the conditions it
has) from the model's own ``_meta``, and only the values are prepared per call, with
each field's own ``get_db_prep_save``. The statements mean exactly what their QuerySet
spelling means (``task_rows(...).update(...)``); an expression value (``F(...)``) is left
to the ORM by the callers.

The claim is one ``UPDATE ... RETURNING`` (PostgreSQL; SQLite 3.35+, which
``longtask.E004`` requires): the row moves to
RUNNING under a new token only if it is claimable at that instant, and the statement
returns the row it claimed, so there is no read before it and no window between a read
and the write (two claims of one row: one moves it, the other matches nothing).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Field
from django.db.models.signals import post_save, pre_save

from longtask.conf import settings
from longtask.models import LongTask, rows

_META = LongTask._meta


def _field(name: str) -> Field[Any, Any]:
    field = _META.get_field(name)
    assert isinstance(field, Field) and field.concrete
    return field


def column(name: str) -> str:
    """The quoted column of the task's field ``name``."""
    name_in_db = _field(name).column
    assert name_in_db is not None
    return connection.ops.quote_name(name_in_db)


def _prep(name: str, value: object) -> Any:
    return _field(name).get_db_prep_save(value, connection)


def task_pk(task_id: UUID | str) -> Any:
    """A task's id (a UUID or its text) as the database takes it."""
    pk = _field("id")
    return pk.get_db_prep_value(pk.to_python(task_id), connection)


@functools.cache
def _update_sql(vendor: str, names: tuple[str, ...], sources: int, fenced: bool, beat: bool) -> str:
    table = connection.ops.quote_name(_META.db_table)
    sets = ", ".join(f"{column(name)} = %s" for name in names)
    where = [f"{column('id')} = %s", f"{column('status')} IN ({', '.join(['%s'] * sources)})"]
    if fenced:
        where.append(f"{column('token')} = %s")
    if beat:
        where.append(f"{column('heartbeat_at')} = %s")
    # Only quoted names from the model's own _meta are interpolated; values are params.
    return f"UPDATE {table} SET {sets} WHERE {' AND '.join(where)}"  # noqa: S608


def update_statement(
    task_id: UUID | str,
    sources: Sequence[str],
    changes: Mapping[str, object],
    token: str | None = None,
    heartbeat_at: datetime.datetime | None = None,
) -> tuple[str, list[Any]]:
    """``update``'s SQL and values, which a caller may prepare before its transaction."""
    names = tuple(changes)
    sql = _update_sql(
        connection.vendor, names, len(sources), token is not None, heartbeat_at is not None
    )
    params: list[Any] = [_prep(name, changes[name]) for name in names]
    params += [task_pk(task_id), *sources]
    if token is not None:
        params.append(token)
    if heartbeat_at is not None:
        params.append(_prep("heartbeat_at", heartbeat_at))
    return sql, params


def cursor(db: BaseDatabaseWrapper = connection) -> CursorWrapper:
    """A cursor for the hot statements here (Django's own, so its wrappers still see them).

    On PostgreSQL with psycopg 3 (and ``PREPARE_STATEMENTS``), its statements are
    prepared on the server at their first use on the connection, then only bound and
    executed: parsing and planning them was about a third of PostgreSQL's CPU per run.
    Django's own queries are left as they are (bound on the client, never prepared):
    the connection's ``prepare_threshold``, None as Django leaves it, is set to one
    that no statement reaches, so only a cursor that asks (this one) prepares.
    """
    if db.vendor != "postgresql" or _Preparing is None or not settings.PREPARE_STATEMENTS:
        return db.cursor()
    # Django's cursor first: it replaces a connection that failed its health check, and
    # wraps the cursor as every other (query logging, execute_wrappers).
    wrapper = db.cursor()
    raw = db.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _NEVER
    wrapper.cursor.close()
    wrapper.cursor = _Preparing(raw)
    # As Django's create_cursor: the cursor's time zone, if the connection's differs.
    if db.timezone != raw.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT).timezone:
        register_tzloader(db.timezone, wrapper.cursor)
    return wrapper


#: A count of executions no statement reaches: only ``prepare=True`` prepares.
_NEVER = 2**62


if find_spec("psycopg") is not None:
    import psycopg
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    _TIMESTAMPTZ = psycopg.adapters.types["timestamptz"].oid

    class _PreparingCursor(psycopg.Cursor[Any]):
        """Parameters bound on the server, the statement prepared at its first use."""

        def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
            return super().execute(query, params, prepare=True)

    _Preparing: type[psycopg.Cursor[Any]] | None = _PreparingCursor
else:  # psycopg2: statements as Django runs them
    _Preparing = None


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run a prepared statement; return the number of rows it changed."""
    with cursor() as cursor_:
        cursor_.execute(sql, params)
        return int(cursor_.rowcount)


def update(
    task_id: UUID | str,
    sources: Sequence[str],
    changes: Mapping[str, object],
    token: str | None = None,
    heartbeat_at: datetime.datetime | None = None,
) -> int:
    """``UPDATE`` the task's row if its status is one of ``sources`` (and, when given, its
    token and heartbeat are those); return the number of rows moved (0 or 1)."""
    return execute(*update_statement(task_id, sources, changes, token, heartbeat_at))


@functools.cache
def _insert_sql(vendor: str) -> str:
    table = connection.ops.quote_name(_META.db_table)
    marks = ", ".join(["%s"] * len(_META.concrete_fields))
    # The columns in _meta order, as rows.columns() lists them for the claim's RETURNING.
    return f"INSERT INTO {table} ({rows.columns()}) VALUES ({marks})"  # noqa: S608


def insert(task: LongTask) -> None:
    """Save a new task's row, as ``task.save(force_insert=True)`` would.

    Every field is prepared as ``save`` prepares it (``pre_save``, then
    ``get_db_prep_save``); only the statement is built once. With receivers of
    ``pre_save`` or ``post_save`` for LongTask it is ``save`` itself, so they still run.
    """
    if pre_save.has_listeners(LongTask) or post_save.has_listeners(LongTask):
        task.save(force_insert=True)
        return
    db = connections[DEFAULT_DB_ALIAS]  # not the proxy: each of its reads is a Local lookup
    params = [
        field.get_db_prep_save(field.pre_save(task, True), db) for field in _META.concrete_fields
    ]
    with cursor(db) as cursor_:
        cursor_.execute(_insert_sql(db.vendor), params)
    task._state.adding = False
    task._state.db = db.alias


@functools.cache
def _claim_sql(vendor: str, sources: int, append_run: bool) -> str:
    table = connection.ops.quote_name(_META.db_table)
    started, status, runs = column("started_at"), column("status"), column("runs")
    sets = [
        f"{status} = %s",
        f"{column('token')} = %s",
        f"{column('attempts')} = {column('attempts')} + 1",
        f"{started} = COALESCE({started}, %s)",
        f"{column('heartbeat_at')} = %s",
        f"{column('next_attempt_at')} = NULL",
        f"{column('worker')} = %s",
    ]
    if append_run:  # the entry joins ``runs`` when the kind's name has the prefix given
        sets.append(
            f"{runs} = CASE WHEN substr({column('kind')}, 1, %s) = %s "
            f"THEN {_APPEND[vendor].format(runs=runs)} ELSE {runs} END"
        )
    return (
        f"UPDATE {table} SET {', '.join(sets)} "  # noqa: S608 (names from _meta; values are params)
        f"WHERE {column('id')} = %s AND {status} IN ({', '.join(['%s'] * sources)}) "
        f"RETURNING {rows.columns()}"
    )


#: An element added at the end of a JSON array column, per vendor.
_APPEND = {
    "sqlite": "json_insert({runs}, '$[#]', json(%s))",
    "postgresql": "{runs} || jsonb_build_array(%s::jsonb)",
}


def appends_runs(vendor: str) -> bool:
    """Whether ``claim`` can add an entry to ``runs`` in its own statement here."""
    return vendor in _APPEND


def claim_statement(
    task_id: UUID | str,
    sources: Sequence[str],
    target: str,
    token: str,
    worker: str,
    now: datetime.datetime,
    run_entry: tuple[str, object] | None = None,
) -> tuple[str, list[Any]]:
    """The claim's SQL and its values, prepared before its transaction begins (so that
    the write lock is held for the statement only).

    ``run_entry`` (kind prefix, entry): the entry is added to ``runs`` by the same
    statement when the task's kind starts with the prefix (``appends_runs`` vendors).
    """
    sql = _claim_sql(connection.vendor, len(sources), run_entry is not None)
    now_db = _prep("heartbeat_at", now)
    params: list[Any] = [target, token, now_db, now_db, worker]
    if run_entry is not None:
        prefix, entry = run_entry
        params += [len(prefix), prefix, json.dumps(entry)]
    params += [task_pk(task_id), *sources]
    return sql, params


def claim(sql: str, params: Sequence[Any]) -> Sequence[object] | None:
    """Move a claimable task to its target under its token in one statement (prepared by
    ``claim_statement``); return the row as claimed, as the database returned it
    (``rows.instance`` makes it a model, after the transaction: the write lock is not
    held for the conversion), or None."""
    with cursor() as cursor_:
        cursor_.execute(sql, params)
        row: Sequence[object] | None = cursor_.fetchone()
    return row

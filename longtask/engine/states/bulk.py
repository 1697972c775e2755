"""Set-based writes of many subtask rows: one statement per batch, not one per row.

A statement per row (``executemany``) costs PostgreSQL a parse, a plan and an execution
each time (Django binds parameters on the client, so nothing is prepared): for a fan-out
of no-op subtasks that was most of the database's work per subtask. One multi-row
INSERT, or one UPDATE joined to a VALUES list, per batch does the same writes.

On PostgreSQL the rows go as arrays, unnested by the statement: its text is the same
for every batch, so it is prepared once per connection (``statements.cursor``)
instead of a VALUES list of thousands of parameters that psycopg split and PostgreSQL
parsed and planned anew each time.

Only quoted column names from the model's own ``_meta`` are interpolated; every value is
a parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.db import connection
from django.db.models import Field

from longtask.engine.states import statements
from longtask.engine.states.common import subtask_column
from longtask.models import SubTask

Rows = Sequence[Sequence[Any]]


def _batches(rows: Rows, per_row: int) -> Iterator[Rows]:
    """``rows`` in slices small enough for the backend's limit on parameters per statement."""
    limit = connection.features.max_query_params
    size = max(1, limit // per_row) if limit else len(rows) or 1
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _arrays(fields: Sequence[Field[Any, Any]]) -> str:
    """PostgreSQL: ``unnest`` of one array parameter per field, typed as its column."""
    return "unnest(" + ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields) + ")"


def _columns(rows: Rows, width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def insert_numbered(
    fixed: Sequence[tuple[Field[Any, Any], Any]],
    index: Field[Any, Any],
    first: int,
    document: Field[Any, Any],
    texts: Sequence[str],
) -> None:
    """INSERT a row per JSON text of ``texts``, as ``document``; ``index`` numbered from
    ``first``; the ``fixed`` values (prepared) the same in every row.

    On PostgreSQL one array parameter, the texts: sent as arrays, the values repeated
    down the other columns were most of psycopg's work for a split (quoting each
    element of each). Elsewhere multi-row VALUES lists.
    """
    table = connection.ops.quote_name(SubTask._meta.db_table)
    columns = ", ".join(subtask_column(f) for f in (*(f for f, _ in fixed), index, document))
    if connection.vendor != "postgresql":
        constant = [value for _, value in fixed]
        rows = [[*constant, first + offset, text] for offset, text in enumerate(texts)]
        marks = "(" + ", ".join(["%s"] * (len(fixed) + 2)) + ")"
        with connection.cursor() as cursor:
            for batch in _batches(rows, len(fixed) + 2):
                sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([marks] * len(batch))}"  # noqa: S608
                cursor.execute(sql, [value for row in batch for value in row])
        return
    values = ", ".join(f"%s::{f.db_type(connection)}" for f, _ in fixed)
    sql = (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608
        f"SELECT {values}, (%s::bigint + u.n - 1)::{index.db_type(connection)}, "
        f"u.text::{document.db_type(connection)} "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u (text, n)"
    )
    with statements.cursor() as cursor:
        cursor.execute(sql, [*(value for _, value in fixed), first, list(texts)])


def update_where(
    fields: Sequence[Field[Any, Any]],
    rows: Rows,
    key: Field[Any, Any],
    conditions: Sequence[tuple[Field[Any, Any], Any]],
) -> int:
    """Write ``fields`` of each row by its ``key``, where every condition holds; return the
    rows written.

    Each row is ``[*values, key, *condition values]``. A condition ``(field, value)``
    compares the column to ``value``, the same for every row; ``(field, None)`` to the
    row's own value, which comes after its key. One UPDATE ... FROM a VALUES list per
    batch: PostgreSQL joins it to the table through the key's index.
    """
    if not rows:
        return 0
    table = connection.ops.quote_name(SubTask._meta.db_table)
    # A VALUES list's columns are column1, column2, ... on both backends. (A WITH clause
    # could name them, but Python's sqlite3 then reports no rowcount.)
    width = len(fields) + 1 + sum(value is None for _, value in conditions)
    names = [f"v.column{i}" for i in range(1, width + 1)]
    assignments = ", ".join(
        f"{subtask_column(f)} = {name}" for f, name in zip(fields, names, strict=False)
    )
    where = [f"{table}.{subtask_column(key)} = {names[len(fields)]}"]
    fixed: list[Any] = []
    position = len(fields) + 1
    for field, value in conditions:
        if value is None:
            where.append(f"{table}.{subtask_column(field)} = {names[position]}")
            position += 1
        else:
            where.append(f"{table}.{subtask_column(field)} = %s")
            fixed.append(value)
    if connection.vendor == "postgresql":
        key_fields = [key, *(field for field, value in conditions if value is None)]
        sql = (
            f"UPDATE {table} SET {assignments} "  # noqa: S608
            f"FROM {_arrays([*fields, *key_fields])} "
            f"AS v ({', '.join(name.removeprefix('v.') for name in names)}) "
            f"WHERE {' AND '.join(where)}"
        )
        with statements.cursor() as cursor:
            cursor.execute(sql, [*_columns(rows, width), *fixed])
            return int(cursor.rowcount)
    marks = "(" + ", ".join(["%s"] * width) + ")"
    moved = 0
    with connection.cursor() as cursor:
        for batch in _batches(rows, width):
            sql = (
                f"UPDATE {table} SET {assignments} "  # noqa: S608
                f"FROM (VALUES {', '.join([marks] * len(batch))}) AS v "
                f"WHERE {' AND '.join(where)}"
            )
            cursor.execute(sql, [value for row in batch for value in row] + fixed)
            moved += cursor.rowcount
    return moved

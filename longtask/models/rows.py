"""A task row read by its primary key without the ORM's compiler, and rows made models.

``LongTask.objects.filter(pk=...).first()`` builds a QuerySet, compiles it (with an
``ORDER BY`` that a primary key does not need) and converts the row: about 0.7 ms of
Python for a 0.05 ms query, on every status request, JSON poll and websocket connect.
``fetch`` runs the same SELECT, built once per database vendor from the model's own
``_meta``, and converts the row with each field's own converters, as the ORM does.

A value Python cannot decode (parameters or a result written around ``start()``, such
as a 5,000-digit number) is left deferred, not raised (``get_deferred_fields()`` names
them): a run then fails the task on reading them; pages read them as empty.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections

from longtask.models.task import LongTask

_META = LongTask._meta


def instance(row: Sequence[object]) -> LongTask:
    """The model of a row of every concrete field, in ``_meta`` order; undecodable
    values left deferred."""
    db = connections[DEFAULT_DB_ALIAS]
    names, values = [], []
    for (attname, converters, expression), value in zip(_plan(db.vendor), row, strict=True):
        try:
            for converter in converters:
                value = converter(value, expression, db)
        except (ValueError, RecursionError):
            continue
        names.append(attname)
        values.append(value)
    return LongTask.from_db(db.alias, names, values)


def value(row: Sequence[object], attname: str) -> object:
    """One field of a row of every concrete field, converted as ``instance`` converts it."""
    db = connections[DEFAULT_DB_ALIAS]
    at = _positions()[attname]
    _, converters, expression = _plan(db.vendor)[at]
    converted = row[at]
    for converter in converters:
        converted = converter(converted, expression, db)
    return converted


def columns() -> str:
    """Every concrete column, quoted, in the order ``instance`` reads them."""
    return ", ".join(connection.ops.quote_name(f.column or f.name) for f in _META.concrete_fields)


def fetch(task_id: UUID | str, *, readable: bool = False) -> LongTask | None:
    """The task with this primary key, or None (what ``filter(pk=...).first()`` returns).

    ``readable``: undecodable parameters read as ``{}`` and an undecodable result as None,
    so that a page or a watcher shown the row never fails on them.
    """
    pk = _META.pk
    assert pk is not None
    value = pk.get_db_prep_value(pk.to_python(task_id), connection)
    with connection.cursor() as cursor:
        cursor.execute(_select_sql(connection.vendor), [value])
        row = cursor.fetchone()
    if row is None:
        return None
    task = instance(row)
    if readable:
        for name in task.get_deferred_fields() & {"parameters", "result"}:
            task.__dict__[name] = {} if name == "parameters" else None
    return task


@functools.cache
def _select_sql(vendor: str) -> str:
    assert _META.pk is not None and _META.pk.column is not None
    table = connection.ops.quote_name(_META.db_table)
    key = connection.ops.quote_name(_META.pk.column)
    return f"SELECT {columns()} FROM {table} WHERE {key} = %s"  # noqa: S608 (names from _meta)


@functools.cache
def _positions() -> dict[str, int]:
    return {field.attname: at for at, field in enumerate(_META.concrete_fields)}


@functools.cache
def _plan(vendor: str) -> list[tuple[str, tuple[Any, ...], Any]]:
    """Per concrete field: its attribute, its converters (backend's, then field's), and
    the column expression they are called with, as the ORM calls them."""
    plan = []
    for field in _META.concrete_fields:
        expression = field.get_col(_META.db_table)
        backend = connection.ops.get_db_converters(expression)
        converters = (*backend, *field.get_db_converters(connection))
        plan.append((field.attname, converters, expression))
    return plan

"""Transitions of a fan-out's subtasks, claimed and moved in chunks."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import F, JSONField, QuerySet
from django.utils import timezone

from longtask.engine import enqueue
from longtask.engine.heartbeat import node_name
from longtask.engine.states import statements
from longtask.engine.states.common import (
    CANCELLED,
    CLAIMABLE,
    DUE_TOLERANCE,
    FAILED,
    QUEUED,
    RUNNING,
    SUBTASK_TRANSITIONS,
    SUCCEEDED,
    new_token,
    subtask_column,
    subtask_field,
)
from longtask.models import FINISHED_STATUSES, LongTask, SubTask
from longtask.serialize import JSONObject

# A parent id arrives as a UUID or as the str a job carried. Django takes
# both in ``parent_id=`` (as in ``pk=``), but django-stubs types an FK's lookup with the
# related pk's UUID only: the lines marked "type: ignore[misc]" below are those.


def skip_subtasks(parent_id: UUID | str) -> int:
    """Skip a stopped parent's subtasks that have not started (they are not counted)."""
    return SubTask.objects.filter(parent_id=parent_id, status__in=CLAIMABLE).update(  # type: ignore[misc]
        status=CANCELLED, token=""
    )


def abandon_subtasks(parent_id: UUID | str) -> int:
    """Stop the running subtasks of a finished parent whose chunks are gone (kind removed)."""
    with transaction.atomic():
        parent = lock_parent(parent_id)
        if parent is None or parent.status not in (SUCCEEDED, FAILED, CANCELLED):
            return 0
        return SubTask.objects.filter(parent_id=parent_id, status=RUNNING).update(  # type: ignore[misc]
            status=CANCELLED, token=""
        )


def reset_subtasks(parent_id: UUID | str) -> int:
    """Put a parent's failed, skipped and running subtasks back to QUEUED; return the failed.

    Call with the parent's row locked. Running ones are taken from their chunk (its
    token no longer matches), so nothing it writes later counts.
    """
    rows = SubTask.objects.filter(parent_id=parent_id)  # type: ignore[misc]
    changes: dict[str, object] = {
        "status": QUEUED,
        "finish_seq": None,
        "finished_at": None,
        "attempts": 0,
        "token": "",
        "error": "",
        # No job yet: the parent's next attempt queues them (engine/window.py).
        "due_at": None,
    }
    failed = rows.filter(status=FAILED).update(**changes)
    rows.filter(status__in=SUBTASK_TRANSITIONS["reset"].sources).update(**changes)
    return failed


@dataclass
class Claimed:
    token: str
    #: (pk, index, parameters, attempt) of each subtask, in index order.
    rows: list[tuple[int, int, JSONObject, int]] = field(default_factory=list)


def claim_subtasks(
    parent_id: UUID | str, first: int, last: int, indexes: Sequence[int] | None
) -> Claimed:
    """Mark a chunk's claimable subtasks RUNNING under one new token.

    One ``UPDATE ... RETURNING`` (a transaction of its own): the rows of the chunk that
    are claimable at that instant, while the parent runs, move to RUNNING under the
    token and come back as claimed. On PostgreSQL the rows are picked in index order by
    a ``FOR UPDATE SKIP LOCKED`` subquery, so a chunk never waits for rows that another
    claim, the sweeper or a retry holds (what the ORM's select_for_update did).
    """
    now, claimed = timezone.now(), Claimed(new_token())
    db = connections[DEFAULT_DB_ALIAS]
    sql = _claim_sql(db.vendor, None if indexes is None else len(indexes))
    prep = functools.partial(_prep_column, db=db)
    chosen = (
        [prep("index", first), prep("index", last)]
        if indexes is None
        else [prep("index", index) for index in indexes]
    )
    picked = [  # which rows may be claimed
        prep("parent", parent_id),
        *CLAIMABLE,
        QUEUED,
        prep("due_at", now + DUE_TOLERANCE),
        *chosen,
        statements.task_pk(parent_id),
        RUNNING,
    ]
    changes = [
        RUNNING,
        claimed.token,
        prep("started_at", now),
        prep("heartbeat_at", now),
        node_name(),
    ]
    params = [*changes, *picked, *CLAIMABLE] if db.vendor == "postgresql" else [*changes, *picked]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    parameters = SubTask._meta.get_field("parameters")
    assert isinstance(parameters, JSONField)
    column = parameters.get_col(SubTask._meta.db_table)  # what the ORM passes its converter
    claimed.rows = [
        (pk, index, parameters.from_db_value(params_, column, db), attempts)
        for pk, index, params_, attempts in returned
    ]
    claimed.rows.sort(key=lambda row: row[1])  # RETURNING keeps no order
    return claimed


def _prep_column(name: str, value: object, db: Any) -> Any:
    return subtask_field(name).get_db_prep_value(value, db, prepared=False)


@functools.cache
def _claim_sql(vendor: str, indexes: int | None) -> str:
    """The claim's statement: of a range of indexes (``indexes`` None), or of so many."""
    quote = connection.ops.quote_name
    table, tasks = quote(SubTask._meta.db_table), quote(LongTask._meta.db_table)
    col = {
        name: subtask_column(subtask_field(name))
        for name in (
            "id",
            "parent",
            "status",
            "due_at",
            "index",
            "token",
            "attempts",
            "started_at",
            "heartbeat_at",
            "worker",
            "parameters",
        )
    }
    task_id = quote(LongTask._meta.get_field("id").column)  # type: ignore[arg-type]
    task_status = quote(LongTask._meta.get_field("status").column)  # type: ignore[arg-type]
    claimable = ", ".join(["%s"] * len(CLAIMABLE))
    chosen = (
        f"{col['index']} BETWEEN %s AND %s"
        if indexes is None
        else f"{col['index']} IN ({', '.join(['%s'] * indexes)})"
    )
    picked = (
        f"{col['parent']} = %s AND {col['status']} IN ({claimable}) "  # noqa: S608
        f"AND ({col['status']} = %s OR {col['due_at']} IS NULL OR {col['due_at']} <= %s) "
        f"AND {chosen} "
        f"AND EXISTS (SELECT 1 FROM {tasks} "
        f"WHERE {tasks}.{task_id} = %s AND {tasks}.{task_status} = %s)"
    )
    if vendor == "postgresql":
        where = (
            f"{col['id']} IN (SELECT {col['id']} FROM {table} WHERE {picked} "  # noqa: S608
            f"ORDER BY {col['index']} FOR UPDATE SKIP LOCKED) AND {col['status']} IN ({claimable})"
        )
    else:  # SQLite: one writer at a time, no row locks to skip
        where = picked
    # Only quoted names from the models' own _meta are interpolated; values are params.
    return (
        f"UPDATE {table} SET {col['status']} = %s, {col['token']} = %s, "  # noqa: S608
        f"{col['attempts']} = {col['attempts']} + 1, {col['started_at']} = %s, "
        f"{col['heartbeat_at']} = %s, {col['worker']} = %s WHERE {where} "
        f"RETURNING {col['id']}, {col['index']}, {col['parameters']}, {col['attempts']}"
    )


def beat_subtasks(token: str, pks: Sequence[int]) -> int:
    """Move the heartbeat of the chunk's subtasks still running under its token."""
    return SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token).update(
        heartbeat_at=timezone.now()
    )


def lock_parent(parent_id: UUID | str) -> LongTask | None:
    return (
        LongTask.objects.select_for_update()
        .only("pk", "status", "kind", "queue", "subtask_cursor", "history", "attempts")
        .filter(pk=parent_id)
        .first()
    )


def stop_subtasks(parent_id: UUID | str, token: str, pks: Sequence[int]) -> int:
    """A chunk gives up the subtasks it has not run, because its parent stopped.

    Under the parent's lock: if the parent runs after all, they are queued again.
    """
    with transaction.atomic():
        parent = lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is not None and parent.status == RUNNING:
            return _give_back(parent, rows, timezone.now())
        return _set_aside(parent, rows)


def give_back(parent_id: UUID | str, token: str, pks: Sequence[int], eta: datetime.datetime) -> int:
    """A chunk hands back subtasks it claimed but did not start, to run at ``eta``."""
    with transaction.atomic():
        parent = lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is None or parent.status != RUNNING:
            return _set_aside(parent, rows)
        return _give_back(parent, rows, eta)


def _set_aside(parent: LongTask | None, rows: QuerySet[SubTask]) -> int:
    """Running subtasks of a parent that does not run now (its lock held).

    A finished (or deleted) parent's are skipped. A parent between two attempts (QUEUED
    or RETRYING after a lost worker, say) is not done with them: they wait, with no job,
    for its next attempt, which queues them (``window.redispatch_below_line``).
    Cancelled, they were never run again and the parent waited for them forever.
    """
    if parent is None or parent.status in FINISHED_STATUSES:
        return rows.update(status=CANCELLED, token="")
    return rows.update(status=QUEUED, attempts=F("attempts") - 1, worker="", token="", due_at=None)


def _give_back(parent: LongTask, rows: QuerySet[SubTask], eta: datetime.datetime) -> int:
    indexes = list(rows.order_by("index").values_list("index", flat=True))
    moved = rows.update(status=QUEUED, attempts=F("attempts") - 1, worker="", token="", due_at=eta)
    enqueue.chunk_indexes(parent, indexes, eta=eta)
    return moved


def redispatched(pks: Iterable[int], due_before: datetime.datetime) -> list[int]:
    """Mark waiting subtasks as dispatched now; return the indexes this caller won."""
    now = timezone.now()
    rows = SubTask.objects.filter(pk__in=list(pks), status__in=CLAIMABLE, due_at__lt=due_before)
    indexes = list(rows.select_for_update(skip_locked=True).values_list("index", flat=True))
    SubTask.objects.filter(pk__in=list(pks), index__in=indexes, status__in=CLAIMABLE).update(
        due_at=now
    )
    return sorted(indexes)

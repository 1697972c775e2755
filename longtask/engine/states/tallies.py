"""The counts behind the dashboard and /metrics, kept by the transitions themselves.

Each counted transition makes one call here, in its own transaction, after its UPDATE
moved the row: the counts commit with the change they count, or not at all. The call is
one statement, ``INSERT ... ON CONFLICT (minute, kind) DO UPDATE SET n = n + excluded.n``
(what ``F("n") + 1`` would write, without a read or a second round trip to create the
row), on two rows of ``TaskMinute``: the kind's current minute and its totals row. Both
are locked until the transaction ends, always in that order. On PostgreSQL a run's
claim and finish carry their count in their own statement instead (``after_claim``,
``after_move``): a ``WITH`` query that counts only what it moved.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

from django.db import connection

from longtask.engine.states import statements
from longtask.engine.states.common import CANCELLED, FAILED, SUCCEEDED, Run
from longtask.models import RUN_BUCKETS, TOTALS, LongTask, TaskMinute
from longtask.models.rollup import EVENTS, bucket_field

#: The counter a finished status adds to.
FINISHED_EVENT: dict[str, str] = {SUCCEEDED: "succeeded", FAILED: "failed", CANCELLED: "cancelled"}

_COUNTERS = (
    *EVENTS,
    "subtasks_done",
    "subtasks_failed",
    "runs",
    "run_seconds",
    *(bucket_field(bound) for bound in RUN_BUCKETS),
)


def add(kind: str, at: datetime.datetime, **counts: float) -> None:
    """Add ``counts`` (``started=1``, ``subtasks_done=40``...) to ``kind`` at ``at``'s minute."""
    statement = prepare(kind, at, **counts)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)


def prepare(kind: str, at: datetime.datetime, **counts: float) -> tuple[str, list[Any]] | None:
    """``add``'s statement and values (None when there is nothing to add), which a caller
    may prepare before its transaction and execute in it."""
    names, params = _values(kind, at, counts)
    if not names:
        return None
    return _upsert(connection.vendor, names), params


def _values(
    kind: str, at: datetime.datetime, counts: dict[str, float]
) -> tuple[tuple[str, ...], list[Any]]:
    """The counters named (in column order) and the values of the upsert's two rows."""
    names, values = _named(counts)
    params: list[Any] = []
    for when in (_minute(at), TOTALS):  # the minute first: every writer locks in this order
        params += [_moment(connection.vendor, when), kind, *values]
    return names, params


def _named(counts: dict[str, float]) -> tuple[tuple[str, ...], list[float]]:
    """The counters named, in column order, and their amounts (checked)."""
    unknown = set(counts) - set(_COUNTERS)
    if unknown:
        raise ValueError(f"no such counter: {sorted(unknown)}")
    if any(value < 0 for value in counts.values()):  # counters only grow (no CHECK on them)
        raise ValueError(f"a count cannot be negative: {counts}")
    # Only the counters given are written (the rest keep their value, or their default
    # on a new row): a claim's statement names one counter, not all of them.
    names = tuple(name for name in _COUNTERS if name in counts)
    # The counters are plain numbers (integer and float columns take them as they are).
    return names, [counts[name] for name in names]


def _minute(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(datetime.UTC).replace(second=0, microsecond=0)


@functools.lru_cache(maxsize=4)  # this minute's, the totals', and the last minute's
def _moment(vendor: str, when: datetime.datetime) -> Any:
    return _fields()[0].get_db_prep_save(when, connection)


def _fields() -> list[Any]:
    return [TaskMinute._meta.get_field(name) for name in ("minute", "kind", *_COUNTERS)]


@functools.cache
def _upsert(vendor: str, names: tuple[str, ...]) -> str:
    """The statement for these counters: two rows inserted, or each added to the row there.

    A new row gets 0 in the other counters (a literal: the columns have no database
    default); a row already there has only the counters named here set.
    """
    into, marks, conflict = _parts(vendor, names)
    return f"{into} VALUES ({marks}), ({marks}) {conflict}"


@functools.cache
def _parts(vendor: str, names: tuple[str, ...]) -> tuple[str, str, str]:
    """The upsert's ``INSERT INTO ... (columns)``, one row's marks, its ``ON CONFLICT``."""
    quote = connection.ops.quote_name
    table = quote(TaskMinute._meta.db_table)
    columns = [quote(field.column) for field in _fields()]
    given = [column for name, column in zip(_COUNTERS, columns[2:], strict=True) if name in names]
    marks = ", ".join(["%s", "%s", *("%s" if name in names else "0" for name in _COUNTERS)])
    increments = ", ".join(f"{column} = {table}.{column} + excluded.{column}" for column in given)
    # Only quoted names from the model's own _meta are interpolated; values are params.
    return (
        f"INSERT INTO {table} ({', '.join(columns)})",
        marks,
        f"ON CONFLICT ({columns[0]}, {columns[1]}) DO UPDATE SET {increments}",
    )


#: Vendors where a data-modifying statement can be a WITH query of another (PostgreSQL):
#: a move and its count are then one statement, a transaction of its own in autocommit.
ONE_STATEMENT = frozenset({"postgresql"})


def after_move(
    move: tuple[str, list[Any]], kind: str, at: datetime.datetime, **counts: float
) -> tuple[str, list[Any]]:
    """``move`` (a fenced UPDATE's statement) and ``add``'s count as one statement that
    counts only if the UPDATE moved its row (its row count is then 2, else 0).
    ``ONE_STATEMENT`` vendors only; ``counts`` must name a counter."""
    update_sql, update_params = move
    names, params = _values(kind, at, counts)
    into, marks, conflict = _parts(connection.vendor, names)
    sql = (
        f"WITH moved AS ({update_sql} RETURNING 1) {into} "  # noqa: S608 (as in _parts)
        f"SELECT * FROM (VALUES ({marks}), ({marks})) AS counts "
        f"WHERE EXISTS (SELECT 1 FROM moved) {conflict}"
    )
    return sql, [*update_params, *params]


def after_claim(
    claim: tuple[str, list[Any]], at: datetime.datetime, **counts: float
) -> tuple[str, list[Any]]:
    """``claim`` (an ``UPDATE ... RETURNING`` of a task row) and a count of the claimed
    row's kind, made only if the claim set its ``started_at`` to ``at`` (a first start),
    as one statement returning what the claim returns. ``ONE_STATEMENT`` vendors only."""
    claim_sql, claim_params = claim
    names, values = _named(counts)
    into, _, conflict = _parts(connection.vendor, names)
    kind, started_at = statements.column("kind"), statements.column("started_at")
    select = ", ".join(
        [
            "counts.minute",
            f"claimed.{kind}",
            *("%s" if name in names else "0" for name in _COUNTERS),
        ]
    )
    sql = (
        f"WITH claimed AS ({claim_sql}), counted AS ({into} SELECT {select} "  # noqa: S608
        f"FROM claimed, (VALUES (%s), (%s)) AS counts (minute) "
        f"WHERE claimed.{started_at} = %s {conflict}) SELECT * FROM claimed"
    )
    moments = [_moment(connection.vendor, when) for when in (_minute(at), TOTALS)]
    return sql, [*claim_params, *values, *moments, _fields()[0].get_db_prep_save(at, connection)]


def finished(
    kind: str, status: str, at: datetime.datetime, started_at: datetime.datetime | None
) -> None:
    """Count a task that reached ``status`` at ``at``, and its run time if it had started."""
    add(kind, at, **finished_counts(status, at, started_at))


def finished_counts(
    status: str, at: datetime.datetime, started_at: datetime.datetime | None
) -> dict[str, float]:
    """What ``finished`` adds: the status's counter, and the run's time if it had started."""
    counts: dict[str, float] = {FINISHED_EVENT[status]: 1}
    if started_at is not None:
        seconds = max(0.0, (at - started_at).total_seconds())
        counts.update(runs=1, run_seconds=seconds)
        counts.update({bucket_field(bound): 1 for bound in RUN_BUCKETS if seconds <= bound})
    return counts


def run_finished(run: Run, status: str, at: datetime.datetime) -> None:
    """``finished`` for the task ``run`` held; a Run made without its kind reads the row."""
    kind, started_at = run.kind, run.started_at
    if not kind:
        kind, started_at = (
            LongTask.objects.filter(pk=run.task_id).values_list("kind", "started_at").get()
        )
    finished(kind, status, at, started_at)

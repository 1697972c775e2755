"""Dispatch: the seam between longtask and django-q2's brokers.

Only ids and index ranges cross the broker; everything else is read from the database.
The engine, the sweeper, the checks, the worker command and the status document ask this
package (enqueue many, "when did the oldest waiting job become due?", queue depth, jobs
ahead); which broker answers is the business of one ``Dispatcher`` per broker class
(``orm``, ``redis``, and a generic fallback in ``base``). A new broker is a new module
here that registers its dispatcher.

On the ORM broker the queue is a table in the same database, so a job is written in
the caller's transaction: it commits with the state change that asked for it, or not
at all (no job is ever lost between a COMMIT and an enqueue). The one exception is a
batch of quick tasks (``commit_batch``, ``engine/enqueue.py``), written after the
commit on either broker and, if lost then, found as below. The Redis broker is
outside the transaction: its jobs are pushed once the transaction commits, and a job
lost there (a process killed at that moment, Redis restarted) is found by the sweeper,
which re-dispatches work that waited STALE_AFTER past its due time with no job older
than it left in its queue (``oldest_ready``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

from longtask.dispatch import orm, redis  # noqa: F401  (register their dispatchers)
from longtask.dispatch.base import (
    CHUNK_JOB,
    RUN_JOB,
    RUN_TASKS_JOB,
    Depth,
    commit_batch,
    dispatcher,
    package,
)
from longtask.dispatch.redis import delayed_key

__all__ = [
    "CHUNK_JOB",
    "RUN_JOB",
    "RUN_TASKS_JOB",
    "Depth",
    "commit_batch",
    "delayed_key",
    "depth",
    "dispatcher",
    "enqueue_many",
    "jobs_ahead",
    "oldest_ready",
]


def enqueue_many(
    func: str,
    args_list: Iterable[Sequence[object]],
    *,
    name: str = "",
    cluster: str | None = None,
    eta: datetime.datetime | None = None,
    timeout: int | None = None,
    since: datetime.datetime | None = None,
) -> int:
    """Queue many jobs at once: one INSERT on the ORM broker, one RPUSH on Redis.

    Call it inside the transaction that made the jobs necessary: on the ORM broker the
    rows are part of it; on Redis they are pushed after it commits (and dropped if it
    rolls back). With ``eta`` the jobs are delivered no earlier than then. ``since``:
    when their work became due, if before now (a batch sent at its commit), so that the
    sweeper does not take them for lost jobs of tasks that waited since then.
    """
    packs = [package(func, args, name, timeout, since) for args in args_list]
    if packs:
        dispatcher(cluster).enqueue(packs, eta, since)
    return len(packs)


def oldest_ready(cluster: str | None) -> datetime.datetime | None:
    """When the oldest job that a worker of ``cluster`` could take now became due; None if none.

    The broker hands jobs out oldest first, so a task that became due before this
    time and still waits has no job in the queue any more: it is running (then it is
    no longer QUEUED), or its job was lost with a killed cluster or a failed push.
    """
    return dispatcher(cluster).oldest_ready()


def depth(cluster: str | None) -> Depth:
    """How many jobs wait in ``cluster``'s broker: ready now, and delayed."""
    return dispatcher(cluster).depth()


def jobs_ahead(cluster: str | None, due: datetime.datetime | None) -> int:
    """How many jobs ``cluster``'s workers would take before a job that became due at
    ``due``, as cheaply as its broker can tell: one COUNT (ORM) or one LLEN (Redis)."""
    return dispatcher(cluster).ahead(due)

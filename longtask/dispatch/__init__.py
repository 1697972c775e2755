"""Dispatch: hand jobs to django-q2's broker, and ask it what waits.

Only ids and index ranges cross the broker; everything else is read from the database.

On the ORM broker the queue is a table in the same database, so a job is written in
the caller's transaction: it commits with the state change that asked for it, or not
at all (no job is ever lost between a COMMIT and an enqueue). The Redis broker is
outside the transaction: its jobs are pushed once the transaction commits, and a job
lost there (a process killed at that moment, Redis restarted) is found by the sweeper,
which re-dispatches work that waited STALE_AFTER past its due time with no job older
than it left in its queue (``oldest_ready``).

Delays: the ORM broker hides a row until its ``lock`` time. django-q2's Redis broker
has no delayed delivery, so delayed jobs go to a sorted set beside the list, scored by
due time, which ``longtask.redis_broker.RedisBroker`` drains.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

RUN_JOB = "longtask.jobs.run_task"
CHUNK_JOB = "longtask.jobs.run_chunk"


def _package(
    func: str, args: Sequence[Any], name: str, timeout: int | None = None
) -> dict[str, Any]:
    # The same package async_task() builds, so the cluster runs it like any other.
    # (django_q's modules read Django settings when imported: imported here, not at the top.)
    from django_q.conf import Conf
    from django_q.humanhash import uuid

    tag = uuid()
    package: dict[str, Any] = {
        "id": tag[1],
        "name": name or tag[0],
        "func": func,
        "args": tuple(args),
        "kwargs": {},
        "started": timezone.now(),
    }
    if Conf.ACK_FAILURES:
        package["ack_failure"] = True
    if timeout:
        package["timeout"] = timeout  # the worker raises TimeoutException after this long
    return package


def _broker(cluster: str | None) -> Any:
    from django_q.brokers import get_broker

    return get_broker(cluster)


def _is_orm(broker: Any) -> bool:
    from django_q.brokers.orm import ORM

    return isinstance(broker, ORM)


def enqueue_many(
    func: str,
    args_list: Iterable[Sequence[Any]],
    *,
    name: str = "",
    cluster: str | None = None,
    eta: datetime.datetime | None = None,
    timeout: int | None = None,
) -> int:
    """Queue many jobs at once: one INSERT on the ORM broker, one RPUSH on Redis.

    Call it inside the transaction that made the jobs necessary: on the ORM broker the
    rows are part of it; on Redis they are pushed after it commits (and dropped if it
    rolls back). With ``eta`` the jobs are delivered no earlier than then.
    """
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    broker = _broker(cluster)
    packs = [SignedPackage.dumps(_package(func, args, name, timeout)) for args in args_list]
    if not packs:
        return 0
    if _is_orm(broker):
        now = max(eta, timezone.now()) if eta else timezone.now()
        OrmQ.objects.using(broker.connection.db).bulk_create(
            [OrmQ(key=broker.list_key, payload=pack, lock=now) for pack in packs]
        )
    elif hasattr(broker.connection, "rpush"):
        # A job with an eta goes to the delayed set even if the eta passes before the
        # commit: the broker moves due jobs onto the list at its next dequeue.
        transaction.on_commit(lambda: _push(broker, packs, eta))
    else:  # another broker: its own enqueue, after the commit
        transaction.on_commit(lambda: [broker.enqueue(pack) for pack in packs])
    return len(packs)


def _push(broker: Any, packs: list[Any], eta: datetime.datetime | None) -> None:
    if eta:
        broker.connection.zadd(delayed_key(broker.list_key), dict.fromkeys(packs, eta.timestamp()))
    else:
        broker.connection.rpush(broker.list_key, *packs)


def oldest_ready(cluster: str | None) -> datetime.datetime | None:
    """When the oldest job that a worker of ``cluster`` could take now became due; None if none.

    The broker hands jobs out oldest first, so a task that became due before this
    time and still waits has no job in the queue any more: it is running (then it is
    no longer QUEUED), or its job was lost with a killed cluster or a failed push.
    """
    from django.db.models import Min
    from django_q.signing import SignedPackage

    broker = _broker(cluster)
    now = timezone.now()
    if _is_orm(broker):
        # A row is ready once its lock time has passed (a taken row is locked `retry` ahead).
        return (
            broker.get_connection()
            .filter(key=broker.list_key, lock__lte=now)
            .aggregate(oldest=Min("lock"))["oldest"]
        )
    if not hasattr(broker.connection, "lindex"):
        return None
    candidates = []
    head = broker.connection.lindex(broker.list_key, 0)
    if head is not None:
        candidates.append(SignedPackage.loads(head)["started"])
    due = broker.connection.zrangebyscore(
        delayed_key(broker.list_key), "-inf", now.timestamp(), start=0, num=1, withscores=True
    )
    if due:
        candidates.append(datetime.datetime.fromtimestamp(due[0][1], tz=datetime.UTC))
    return min(candidates) if candidates else None


def delayed_key(list_key: str) -> str:
    """The sorted set holding a Redis list's delayed jobs."""
    return f"{list_key}:delayed"

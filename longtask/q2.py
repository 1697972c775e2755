"""The edge to django-q2: putting jobs on its queues.

Only ids and index ranges cross the broker; everything else is read from the database.

Delays: the ORM broker hides a row until its ``lock`` time. django-q2's Redis broker
has no delayed delivery, so delayed jobs go to a sorted set beside the list, scored
by due time, which ``longtask.redis_broker.RedisBroker`` drains.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from django.utils import timezone


def _package(
    func: str, args: Sequence[Any], name: str, timeout: int | None = None
) -> dict[str, Any]:
    # The same package async_task() builds, so the cluster runs it like any other.
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

    With ``eta``, the ORM broker delivers the jobs no earlier than then: a queue row
    is invisible to workers until its ``lock`` time, which is polled every ``poll``
    seconds, so a retry delay is kept to well within a second.
    """
    from django_q.brokers import get_broker
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    broker = get_broker(cluster)
    packs = [SignedPackage.dumps(_package(func, args, name, timeout)) for args in args_list]
    if not packs:
        return 0
    if isinstance(broker, ORM):
        now = max(eta, timezone.now()) if eta else timezone.now()
        OrmQ.objects.using(broker.connection.db).bulk_create(
            [OrmQ(key=broker.list_key, payload=pack, lock=now) for pack in packs]
        )
    elif hasattr(broker.connection, "rpush"):
        if eta and eta > timezone.now():
            broker.connection.zadd(
                delayed_key(broker.list_key), dict.fromkeys(packs, eta.timestamp())
            )
        else:
            broker.connection.rpush(broker.list_key, *packs)
    else:
        for pack in packs:
            broker.enqueue(pack)
    return len(packs)


def delayed_key(list_key: str) -> str:
    """The sorted set holding a Redis list's delayed jobs."""
    return f"{list_key}:delayed"

"""The dispatcher interface, the registry of dispatchers by broker class, and job packages."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from django.db import transaction
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage

RUN_JOB = "longtask.jobs.run_task"
#: One job for several quick tasks queued by one transaction (``engine/batch.py``).
RUN_TASKS_JOB = "longtask.jobs.run_tasks"
CHUNK_JOB = "longtask.jobs.run_chunk"


@dataclass(frozen=True)
class Depth:
    """Jobs waiting in one cluster's broker."""

    #: A worker could take these now.
    ready: int
    #: Due later (a retry's backoff, a rate limit's wait).
    delayed: int = 0


class Dispatcher:
    """What longtask asks of one cluster's broker. This base serves any django-q2 broker
    through its own API: no delays, no "oldest ready" (so the sweeper re-dispatches only
    by its time bound), depth as the broker counts it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def enqueue(
        self,
        packs: list[str],
        eta: datetime.datetime | None,
        since: datetime.datetime | None = None,
    ) -> None:
        """Queue signed packages, as part of the caller's transaction or after it commits;
        ``since``: when their work became due, if before now (a batch sent at a commit)."""
        transaction.on_commit(lambda: [self.broker.enqueue(pack) for pack in packs])

    def oldest_ready(self) -> datetime.datetime | None:
        """When the oldest job a worker could take now became due; None if none (or unknown)."""
        return None

    def depth(self) -> Depth:
        return Depth(ready=int(self.broker.queue_size() or 0))

    def ahead(self, due: datetime.datetime | None) -> int:
        """How many jobs a worker would take before one that became due at ``due``.

        This base cannot tell where a job stands: every job the broker counts.
        """
        return self.depth().ready


_DISPATCHERS: dict[type, type[Dispatcher]] = {}


def register(broker_class: type) -> Callable[[type[Dispatcher]], type[Dispatcher]]:
    """Class decorator: serve ``broker_class`` (and its subclasses) with this dispatcher."""

    def add(dispatcher_class: type[Dispatcher]) -> type[Dispatcher]:
        _DISPATCHERS[broker_class] = dispatcher_class
        return dispatcher_class

    return add


@functools.cache
def broker_of(cluster: str | None) -> Broker:
    """``cluster``'s broker, one per process and cluster.

    django-q2's ``get_broker()`` makes a new one, with a new Redis connection pool, on
    every call; a new connection per job (and redis-py reading its own package metadata
    for each) cost more than the job's own database write. Redis pools are thread-safe
    and reconnect in a forked child; the ORM broker holds no connection of its own.
    """
    return get_broker(cluster) if cluster else get_broker()


def dispatcher(cluster: str | None) -> Dispatcher:
    """The dispatcher of ``cluster``'s broker (the closest registered class wins)."""
    broker = broker_of(cluster)
    for klass in type(broker).__mro__:
        if klass in _DISPATCHERS:
            return _DISPATCHERS[klass](broker)
    return Dispatcher(broker)


def package(
    func: str,
    args: Sequence[object],
    name: str,
    timeout: int | None = None,
    started: datetime.datetime | None = None,
) -> str:
    """A signed job package, the same one ``async_task()`` builds, so the cluster runs it
    like any other; ``started``: when its work became due, if before now."""
    job_id = uuid4().hex
    pack: dict[str, object] = {
        "id": job_id,
        # django-q2 names a job with words made from its id (humanhash): 5% of an
        # enqueue's time. Unnamed jobs keep the id as their name in its logs and rows.
        "name": name or job_id,
        "func": func,
        "args": tuple(args),
        "kwargs": {},
        "started": started or timezone.now(),
    }
    if Conf.ACK_FAILURES:
        pack["ack_failure"] = True
    if timeout:
        pack["timeout"] = timeout  # the worker raises TimeoutException after this long
    signed: str = SignedPackage.dumps(pack)
    return signed


def commit_batch(
    key: tuple[Any, ...], send: Callable[[list[Any]], None] | None
) -> list[Any] | None:
    """The items that ``send`` gets, all at once, when the current transaction commits;
    None outside a transaction.

    Items added in a savepoint are a batch of their own, registered inside it, so a
    rolled-back savepoint drops them with its other ``on_commit`` callbacks. Batches live
    as long as the connection's list of pending callbacks, which Django replaces at every
    commit, rollback and savepoint rollback: after any of those a new batch (and
    callback) starts, and nothing joins a batch whose send was dropped. With ``send``
    None, a batch not yet started is not started (None).
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        return None
    pending = connection.run_on_commit
    kept: tuple[list[Any], dict[Any, list[Any]]] | None = getattr(
        connection, "_longtask_commit_batches", None
    )
    if kept is None or kept[0] is not pending:
        kept = (pending, {})
        connection._longtask_commit_batches = kept
    full_key = (*key, tuple(connection.savepoint_ids))
    batch = kept[1].get(full_key)
    if batch is None and send is not None:
        batch = kept[1][full_key] = []
        transaction.on_commit(functools.partial(send, batch))
    return batch

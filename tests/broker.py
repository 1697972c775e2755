"""Broker-agnostic access to django-q2's queues, for tests.

The embedded pass uses django-q2's ORM broker (the ``OrmQ`` table); the services pass
uses ``longtask.dispatch.redis.RedisBroker`` (a Redis list per cluster, ``django_q:<cluster>:q``,
plus a sorted set of delayed jobs beside it, ``django_q:<cluster>:q:delayed``, scored by
due time). These helpers read, count, clear and run the jobs the same way on both.

A job is a ``Job(package, eta)``: the decoded package (``func``, ``args``, ``timeout``...)
and the earliest time a worker may take it: the ORM row's ``lock`` (its enqueue time for
a job that is not delayed) or, on Redis, the delayed set's score (None for a job in the
list, which is due at once).

Order: the ORM broker's order is the rows' insertion order (``id``). Redis keeps FIFO order
within each list; across lists and delayed sets, jobs are merged by the time their package
was made (``started``), which keeps each list's own order and otherwise follows insertion.
"""

from __future__ import annotations

import datetime
import functools
import heapq
from collections.abc import Iterator
from typing import Any, NamedTuple

#: Every cluster's list of jobs on Redis (delayed sets end in ":q:delayed", not matched).
REDIS_LISTS = "django_q:*:q"


class Job(NamedTuple):
    package: dict[str, Any]
    #: No earlier than this (ORM: the row's lock); None: due at once (a Redis list's job).
    eta: datetime.datetime | None


class _Entry(NamedTuple):
    """One job where it is stored, to remove it from exactly there."""

    package: dict[str, Any]
    eta: datetime.datetime | None
    where: str  # ORM: the key; Redis: the list or sorted set
    raw: Any  # ORM: the row id; Redis: the payload


def _broker(cluster: str | None = None) -> Any:
    from django_q.brokers import get_broker

    return get_broker(cluster)


@functools.cache
def _redis() -> Any:
    """One Redis client for the test process (django-q2 makes a new one per broker)."""
    return _broker().connection


def cluster_of(queue: str | None = None) -> str:
    """The django-q2 cluster serving the longtask queue ``queue`` (None: the default one)."""
    from django_q.conf import Conf

    from longtask.dispatch.queues import cluster_for

    return cluster_for(queue) or Conf.CLUSTER_NAME


def on_orm() -> bool:
    """True with django-q2's ORM broker (no broker class set) or longtask's subclass of it."""
    from django_q.conf import Conf

    return bool(Conf.ORM) and Conf.BROKER_CLASS in (None, "longtask.dispatch.orm.OrmBroker")


def _orm_rows(cluster: str | None = None) -> Any:
    """The ORM broker's queue rows, of ``cluster`` only if given."""
    from django_q.conf import Conf
    from django_q.models import OrmQ

    rows = OrmQ.objects.using(Conf.ORM)
    return rows if cluster is None else rows.filter(key=cluster)


def _loads(payload: Any) -> dict[str, Any]:
    from django_q.signing import SignedPackage

    return SignedPackage.loads(payload)


def _redis_keys(cluster: str | None) -> list[tuple[str, str]]:
    """(list key, delayed key) of ``cluster``, or of every cluster holding jobs."""
    from longtask.dispatch import delayed_key

    if cluster is not None:
        key = _broker(cluster).list_key
        return [(key, delayed_key(key))]
    connection = _redis()
    keys = {k.decode() if isinstance(k, bytes) else k for k in connection.scan_iter(REDIS_LISTS)}
    keys |= {
        (k.decode() if isinstance(k, bytes) else k).removesuffix(":delayed")
        for k in connection.scan_iter(REDIS_LISTS + ":delayed")
    }
    return [(key, delayed_key(key)) for key in sorted(keys)]


def _entries(cluster: str | None = None, *, heads_only: bool = False) -> list[_Entry]:
    """The queued jobs in delivery order (see the module's docstring)."""
    if on_orm():
        rows = _orm_rows(cluster).order_by("id")
        if heads_only:
            rows = rows[:1]
        return [_Entry(_loads(r.payload), r.lock, r.key, r.pk) for r in rows]
    connection = _redis()
    sequences: list[list[_Entry]] = []
    for list_key, delayed in _redis_keys(cluster):
        payloads = connection.lrange(list_key, 0, 0 if heads_only else -1)
        sequences.append([_Entry(_loads(p), None, list_key, p) for p in payloads])
        scored = [
            _Entry(_loads(p), datetime.datetime.fromtimestamp(score, tz=datetime.UTC), delayed, p)
            for p, score in connection.zrange(delayed, 0, -1, withscores=True)
        ]
        sequences.append(sorted(scored, key=lambda e: e.package["started"]))
    return list(heapq.merge(*sequences, key=lambda e: e.package["started"]))


def jobs(cluster: str | None = None) -> list[Job]:
    """The jobs queued on ``cluster`` (None: on every cluster), in delivery order."""
    return [Job(e.package, e.eta) for e in _entries(cluster)]


def count(cluster: str | None = None) -> int:
    """How many jobs are queued on ``cluster`` (None: on every cluster), delayed ones too."""
    if on_orm():
        return _orm_rows(cluster).count()
    connection = _redis()
    return sum(connection.llen(k) + connection.zcard(d) for k, d in _redis_keys(cluster))


def clear(cluster: str | None = None) -> int:
    """Delete the queued jobs (as a killed cluster loses them); return how many there were."""
    gone = count(cluster)
    if on_orm():
        _orm_rows(cluster).delete()
    else:
        keys = [key for pair in _redis_keys(cluster) for key in pair]
        if keys:
            _redis().delete(*keys)
    return gone


def _take(entry: _Entry) -> bool:
    """Remove ``entry`` from its queue; False if it was gone already."""
    if on_orm():
        return bool(_orm_rows().filter(pk=entry.raw).delete()[0])
    connection = _redis()
    if entry.eta is None:
        return bool(connection.lrem(entry.where, 1, entry.raw))
    return bool(connection.zrem(entry.where, entry.raw))


def run(package: dict[str, Any]) -> Any:
    """Run a job's function in this process, as a worker would."""
    from django.utils.module_loading import import_string

    return import_string(package["func"])(*package["args"], **package["kwargs"])


def run_next(cluster: str | None = None) -> bool:
    """Take the first job (delayed ones included: they run at once) and run it; False if none."""
    while True:
        heads = _entries(cluster, heads_only=True)
        if not heads:
            return False
        if _take(heads[0]):
            run(heads[0].package)
            return True


def drain_queue(limit: int = 100_000, cluster: str | None = None) -> int:
    """Run every queued job in this process in FIFO order, delayed ones at once.

    Jobs the run queues are run too. Return how many ran; AssertionError if the
    queue is still not empty after ``limit`` jobs.
    """
    ran = 0
    while ran < limit:
        if not run_next(cluster):
            return ran
        ran += 1
    if count(cluster):
        raise AssertionError(f"queue not empty after {limit} jobs")
    return ran


def emptied() -> Iterator[None]:
    """For an autouse fixture: no jobs on Redis before and after the test.

    Redis is not rolled back with the test database, so jobs one test leaves would be
    counted or run by the next. (The ORM broker's table goes with the database.)
    """
    if not on_orm():
        clear()
    yield
    if not on_orm():
        clear()

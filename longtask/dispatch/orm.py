"""django-q2's ORM broker: the queue is a table in the caller's database."""

from __future__ import annotations

import datetime
import functools
import time

from django.db import connections
from django.db.models import Min, QuerySet
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from longtask.dispatch.base import Depth, Dispatcher, register


class OrmBroker(ORM):
    """django-q2's ORM broker, whose pusher takes a poll's jobs with one statement.

    The stock ``dequeue`` reads up to ``bulk`` ready rows, then locks each with an
    UPDATE of its own: on SQLite, a write transaction per job, each waiting its turn for
    the one write lock with the workers, the monitor and the site. Here one
    ``UPDATE ... WHERE id IN (SELECT ... LIMIT bulk) RETURNING`` locks and returns them
    (PostgreSQL skips rows another cluster's pusher holds). The rows, their order (by
    id: as written) and the lock (``retry`` seconds ahead) are django-q2's. (SQLite 3.35+,
    or PostgreSQL: check ``longtask.E004``.)
    """

    def dequeue(self) -> list[tuple[int, str]] | None:
        rows = self.get_connection()  # closes a stale connection, as the stock one does
        connection = connections[rows.db]
        lock = OrmQ._meta.get_field("lock")
        now = timezone.now()
        params = [
            lock.get_db_prep_value(now + datetime.timedelta(seconds=Conf.RETRY), connection),
            self.list_key,
            lock.get_db_prep_value(now, connection),
            Conf.BULK,
        ]
        with connection.cursor() as cursor:
            cursor.execute(_take_sql(rows.db), params)
            taken = sorted(cursor.fetchall())
        if taken:
            return [(pk, payload) for pk, payload in taken]
        time.sleep(Conf.POLL)  # an empty queue: spare the CPU, as the stock one does
        return None

    def delete(self, task_id: int) -> None:
        """Remove a job (its acknowledgement, or a failure's) with one DELETE.

        The stock one goes through ``QuerySet.delete()``: a collector, and an explicit
        transaction around a statement that needs none, which on SQLite takes the write
        lock at ``BEGIN IMMEDIATE``; the monitor does it once per job.
        """
        rows = self.get_connection()
        with connections[rows.db].cursor() as cursor:
            cursor.execute(delete_sql(rows.db), [task_id])


@functools.cache
def _insert_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    columns = ", ".join(quote(name) for name in ("key", "payload", "lock"))
    return f"INSERT INTO {quote(OrmQ._meta.db_table)} ({columns}) VALUES (%s, %s, %s)"  # noqa: S608


@functools.cache
def delete_sql(alias: str) -> str:
    """One job's row deleted by its id."""
    quote = connections[alias].ops.quote_name
    return f"DELETE FROM {quote(OrmQ._meta.db_table)} WHERE {quote('id')} = %s"  # noqa: S608


@functools.cache
def _take_sql(alias: str) -> str:
    vendor, quote = connections[alias].vendor, connections[alias].ops.quote_name
    table = quote(OrmQ._meta.db_table)
    pk, key, lock, payload = (quote(name) for name in ("id", "key", "lock", "payload"))
    skip = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
    # Only quoted names from django-q2's model are interpolated; values are params.
    return (
        f"UPDATE {table} SET {lock} = %s WHERE {pk} IN ("  # noqa: S608
        f"SELECT {pk} FROM {table} WHERE {key} = %s AND {lock} < %s "
        f"ORDER BY {pk} LIMIT %s{skip}) RETURNING {pk}, {payload}"
    )


@register(ORM)  # and OrmBroker
class OrmDispatcher(Dispatcher):
    def enqueue(
        self,
        packs: list[str],
        eta: datetime.datetime | None,
        since: datetime.datetime | None = None,
    ) -> None:
        # Rows in the caller's transaction; a row is hidden until its lock time, and
        # counts as waiting since then (``oldest_ready``): since its work became due.
        # One prepared INSERT (a model and bulk_create() per job cost more than the row).
        now = max(eta, timezone.now()) if eta else min(since or timezone.now(), timezone.now())
        alias = self.broker.connection.db
        connection = connections[alias]
        lock = OrmQ._meta.get_field("lock").get_db_prep_value(now, connection)
        rows = [(self.broker.list_key, pack, lock) for pack in packs]
        with connection.cursor() as cursor:
            cursor.executemany(_insert_sql(alias), rows)

    def _rows(self) -> QuerySet[OrmQ]:
        rows: QuerySet[OrmQ] = self.broker.get_connection().filter(key=self.broker.list_key)
        return rows

    def oldest_ready(self) -> datetime.datetime | None:
        # A row is ready once its lock time has passed (a taken row is locked `retry` ahead).
        rows = self._rows().filter(lock__lte=timezone.now())
        oldest: datetime.datetime | None = rows.aggregate(oldest=Min("lock"))["oldest"]
        return oldest

    def ahead(self, due: datetime.datetime | None) -> int:
        # A job's own row cannot be found (its payload is signed), but it was written
        # when its task became due: the rows ready now that became due before it are
        # ahead of it. One COUNT of the queue table, which holds only the jobs not yet
        # acknowledged, never the history.
        rows = self._rows().filter(lock__lte=timezone.now())
        if due is not None:
            rows = rows.filter(lock__lt=due)
        return rows.count()

    def depth(self) -> Depth:
        now = timezone.now()
        rows = self._rows()
        return Depth(
            ready=rows.filter(lock__lte=now).count(), delayed=rows.filter(lock__gt=now).count()
        )

"""django-q2's ORM broker: the queue is a table in the caller's database."""

from __future__ import annotations

import datetime

from django.db.models import Min, QuerySet
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.models import OrmQ

from longtask.dispatch.base import Depth, Dispatcher, register


@register(ORM)
class OrmDispatcher(Dispatcher):
    def enqueue(self, packs: list[str], eta: datetime.datetime | None) -> None:
        # Rows in the caller's transaction; a row is hidden until its lock time.
        now = max(eta, timezone.now()) if eta else timezone.now()
        OrmQ.objects.using(self.broker.connection.db).bulk_create(
            [OrmQ(key=self.broker.list_key, payload=pack, lock=now) for pack in packs]
        )

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

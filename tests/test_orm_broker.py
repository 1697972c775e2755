"""longtask's ORM broker: a pusher's poll takes its jobs with one statement.

It runs on whichever database the pass uses (SQLite embedded, PostgreSQL in the service
pass, where the services' own broker is Redis but the ORM broker must still hold).
"""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from longtask.dispatch.orm import OrmBroker, OrmDispatcher
from tests.test_races import race

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "test-orm-broker"


@pytest.fixture(autouse=True)
def _bulk_of_four(monkeypatch):
    monkeypatch.setattr(Conf, "BULK", 4)
    monkeypatch.setattr(Conf, "POLL", 0.01)
    yield
    OrmQ.objects.filter(key__startswith=KEY).delete()


def put(n: int, *, key: str = KEY, delay: float = -1) -> list[int]:
    lock = timezone.now() + datetime.timedelta(seconds=delay)
    return [OrmQ.objects.create(key=key, payload=f"job {i}", lock=lock).pk for i in range(n)]


def test_a_poll_takes_up_to_bulk_ready_jobs_in_order_and_locks_them_for_retry():
    ready = put(6)
    put(2, delay=60)  # delayed: not yet
    put(2, key=KEY + "-other")  # another cluster's
    before = timezone.now()
    taken = OrmBroker(list_key=KEY).dequeue()
    assert [pk for pk, _ in taken] == ready[:4]
    assert [payload for _, payload in taken] == [f"job {i}" for i in range(4)]
    retry = datetime.timedelta(seconds=Conf.RETRY)
    for row in OrmQ.objects.filter(pk__in=ready[:4]):
        assert row.lock >= before + retry
    assert [pk for pk, _ in OrmBroker(list_key=KEY).dequeue()] == ready[4:]
    assert OrmBroker(list_key=KEY).dequeue() is None  # the rest are delayed


def test_a_poll_is_one_statement_however_many_jobs_it_takes():
    put(4)
    with CaptureQueriesContext(connection) as captured:
        assert len(OrmBroker(list_key=KEY).dequeue()) == 4
    statements = [q["sql"] for q in captured.captured_queries]
    assert len(statements) == 1 and statements[0].startswith("UPDATE"), statements


def test_pushers_polling_at_once_never_take_the_same_job():
    jobs = put(40)
    taken: list[int] = []

    def pusher() -> None:
        broker = OrmBroker(list_key=KEY)
        while batch := broker.dequeue():
            taken.extend(pk for pk, _ in batch)

    race(pusher, pusher, pusher)
    assert sorted(taken) == jobs


def test_an_acknowledgement_is_one_delete_without_a_transaction_of_its_own():
    """The monitor acknowledges each job: on SQLite an explicit transaction would take
    the write lock at BEGIN IMMEDIATE, in turn with the workers and the pusher."""
    first, second = put(2)
    with CaptureQueriesContext(connection) as captured:
        OrmBroker(list_key=KEY).acknowledge(first)
    statements = [q["sql"] for q in captured.captured_queries]
    assert len(statements) == 1 and statements[0].startswith("DELETE"), statements
    assert list(OrmQ.objects.filter(key=KEY).values_list("pk", flat=True)) == [second]


def test_jobs_are_written_by_one_prepared_insert_and_taken_as_written():
    dispatcher = OrmDispatcher(OrmBroker(list_key=KEY))
    with CaptureQueriesContext(connection) as captured:
        dispatcher.enqueue(["job a", "job b", "job c"], None)
    statements = [q["sql"] for q in captured.captured_queries]  # one executemany()
    assert len(statements) == 1 and statements[0].startswith("3 times: INSERT"), statements
    later = timezone.now() + datetime.timedelta(seconds=60)
    dispatcher.enqueue(["job later"], later)
    taken = OrmBroker(list_key=KEY).dequeue()
    assert [payload for _, payload in taken] == ["job a", "job b", "job c"]
    assert OrmQ.objects.get(payload="job later").lock == later

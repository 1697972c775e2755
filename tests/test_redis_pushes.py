"""Jobs queued in one transaction reach Redis in one push at its commit
(longtask/dispatch/redis.py ``_batch``), and only the jobs of what committed.

A transaction that starts 500 tasks made 500 pushes at its commit, a round trip each.
Now the jobs of one list and eta are one push; a savepoint's jobs are a batch of their
own, dropped with it when it rolls back.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from longtask.dispatch.redis import RedisBroker, RedisDispatcher, delayed_key
from tests.conftest import services

pytestmark = [services, pytest.mark.django_db(transaction=True)]

KEY = "test-redis-pushes"


@pytest.fixture
def pushed(monkeypatch) -> Iterator[tuple[RedisDispatcher, list[list[str]]]]:
    dispatcher = RedisDispatcher(RedisBroker(list_key=KEY))
    key = dispatcher.broker.list_key
    dispatcher.broker.connection.delete(key, delayed_key(key))
    pushes: list[list[str]] = []
    push = dispatcher._push

    def counted(packs: list[str], eta: Any) -> None:
        pushes.append(list(packs))
        push(packs, eta)

    monkeypatch.setattr(dispatcher, "_push", counted)
    yield dispatcher, pushes
    dispatcher.broker.connection.delete(key, delayed_key(key))


def listed(dispatcher: RedisDispatcher) -> list[str]:
    items = dispatcher.broker.connection.lrange(dispatcher.broker.list_key, 0, -1)
    return [item.decode() for item in items]


def test_a_transactions_jobs_are_one_push_at_its_commit_in_order(pushed):
    dispatcher, pushes = pushed
    with transaction.atomic():
        for i in range(5):
            dispatcher.enqueue([f"job {i}"], None)
        assert pushes == [] and listed(dispatcher) == []  # nothing before the commit
    assert pushes == [[f"job {i}" for i in range(5)]]
    assert listed(dispatcher) == [f"job {i}" for i in range(5)]


def test_a_rolled_back_transaction_pushes_nothing_and_the_next_one_pushes_its_own(pushed):
    dispatcher, pushes = pushed
    with pytest.raises(RuntimeError), transaction.atomic():
        dispatcher.enqueue(["lost"], None)
        raise RuntimeError("roll back")
    with transaction.atomic():
        dispatcher.enqueue(["kept"], None)
    assert pushes == [["kept"]] and listed(dispatcher) == ["kept"]


def test_a_rolled_back_savepoint_drops_its_jobs_only(pushed):
    dispatcher, pushes = pushed
    with transaction.atomic():
        dispatcher.enqueue(["before"], None)
        with pytest.raises(RuntimeError), transaction.atomic():
            dispatcher.enqueue(["inside"], None)
            raise RuntimeError("roll back the savepoint")
        dispatcher.enqueue(["after"], None)
    assert sorted(listed(dispatcher)) == ["after", "before"]
    assert sum(len(push) for push in pushes) == 2


def test_a_released_savepoints_jobs_commit_with_the_transaction(pushed):
    dispatcher, pushes = pushed
    with transaction.atomic():
        dispatcher.enqueue(["outer"], None)
        with transaction.atomic():
            dispatcher.enqueue(["inner"], None)
        dispatcher.enqueue(["outer again"], None)
    assert sorted(listed(dispatcher)) == ["inner", "outer", "outer again"]
    assert len(pushes) == 2  # the outer batch and the savepoint's


def test_outside_a_transaction_a_job_is_pushed_at_once_and_delayed_ones_apart(pushed):
    dispatcher, pushes = pushed
    dispatcher.enqueue(["now"], None)
    assert listed(dispatcher) == ["now"]
    later = timezone.now() + datetime.timedelta(minutes=5)
    with transaction.atomic():
        dispatcher.enqueue(["later 1"], later)
        dispatcher.enqueue(["soon"], None)
        dispatcher.enqueue(["later 2"], later)
    delayed = dispatcher.broker.connection.zrange(delayed_key(dispatcher.broker.list_key), 0, -1)
    assert sorted(item.decode() for item in delayed) == ["later 1", "later 2"]
    assert listed(dispatcher) == ["now", "soon"]
    assert pushes == [["now"], ["later 1", "later 2"], ["soon"]]

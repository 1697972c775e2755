from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.core.cache import cache

from longtask.engine import enqueue
from longtask.kinds import registry
from tests import kinds as test_kinds

TEST_KINDS = [
    test_kinds.Count,
    test_kinds.Boom,
    test_kinds.NotJson,
    test_kinds.Squares,
    test_kinds.TolerantSquares,
    test_kinds.OneShotSquares,
    test_kinds.SwitchableSquares,
    test_kinds.Flaky,
    test_kinds.Loop,
    test_kinds.Sleepy,
]


#: True when this run is on PostgreSQL and Redis (DATABASE_URL and REDIS_URL are set).
ON_SERVICES = bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))

#: Marks a test that needs the real PostgreSQL and Redis. `make test` runs the suite a
#: second time on the machine's services; CI (LONGTASK_REQUIRE_SERVICES=1) fails if
#: that run cannot happen, and elsewhere it is skipped with the reason printed.
services = pytest.mark.skipif(
    not ON_SERVICES,
    reason=(
        "needs PostgreSQL and Redis: runs in the second pass of `make test` "
        "(DATABASE_URL and REDIS_URL set), not in the embedded pass"
    ),
)


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
    enqueue._quick.clear()  # which kinds are quick: each test's counts start empty
    yield


@pytest.fixture
def test_kinds_registered() -> Iterator[None]:
    for kind in TEST_KINDS:
        registry.register(kind)
    yield
    for kind in TEST_KINDS:
        registry.unregister(kind.name)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("mallory", password="pw-mallory")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("root", password="pw-root", is_staff=True)


def user_with(django_user_model, username: str, *codenames: str, **fields):
    """Return a new user holding the given ``longtask`` permissions."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username, password=f"pw-{username}", **fields)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def viewer(django_user_model):
    """A staff user who may read every task (view_longtask) but not cancel it."""
    return user_with(django_user_model, "viewer", "view_longtask", is_staff=True)


@pytest.fixture
def changer(django_user_model):
    """A user who may read, cancel and retry every task (change_longtask), not staff."""
    return user_with(django_user_model, "changer", "change_longtask")

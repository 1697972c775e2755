from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

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


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
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

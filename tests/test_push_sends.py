"""A worker's pushes never wait, changes of one task share a message until it leaves, and
only watched tasks are pushed."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import caches
from django.test import override_settings

from longtask.conf import settings
from longtask.live.listener import Listener
from longtask.progress import push
from tests.helpers import wait_for


def watched(*task_ids: uuid.UUID) -> None:
    for task_id in task_ids:
        async_to_sync(push.mark_watched)(task_id)


class Layer:
    """A channel layer that records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def group_send(self, group: str, message: dict) -> None:
        self.sent.append(group)


@pytest.fixture
def layer(monkeypatch) -> Layer:
    fake = Layer()
    monkeypatch.setattr(push, "_layer", lambda: fake)
    return fake


def hold_the_sender() -> threading.Event:
    """Keep the sender loop's thread busy until the returned event is set."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(10)

    push._sender_loop().call_soon_threadsafe(hold)
    assert held.wait(10)
    return release


def test_changes_before_the_message_leaves_share_it_and_a_later_change_sends_again(layer):
    task, other = uuid.uuid4(), uuid.uuid4()
    watched(task, other)
    release = hold_the_sender()
    began = time.monotonic()
    for _ in range(3):  # claim, progress, finish of a quick task
        push.notify(task)
    push.notify(other)
    assert time.monotonic() - began < 0.5, "notify waited for the sender"
    release.set()
    wait_for(lambda: len(layer.sent) == 2, 10, "the two messages")
    assert sorted(layer.sent) == sorted([push.group_name(task), push.group_name(other)])
    push.notify(task)  # after its message left: a new one
    wait_for(lambda: len(layer.sent) == 3, 10, "the third message")
    assert layer.sent[-1] == push.group_name(task)


def test_a_quick_tasks_claim_and_finish_share_one_message(layer, monkeypatch):
    """A message leaves SEND_DELAY after its change: the changes of those seconds share it."""
    monkeypatch.setattr(push, "SEND_DELAY", 0.3)
    task, other = uuid.uuid4(), uuid.uuid4()
    watched(task, other)
    push.notify(task)  # the claim
    time.sleep(0.01)  # the run of a no-op task
    push.notify(task)  # the finish
    wait_for(lambda: len(layer.sent) == 1, 10, "the task's message")
    push.notify(other)  # a finish's own message would have been sent before this one
    wait_for(lambda: len(layer.sent) == 2, 10, "the other task's message")
    assert layer.sent == [push.group_name(task), push.group_name(other)]


def test_only_watched_tasks_are_pushed(layer):
    unwatched, task = uuid.uuid4(), uuid.uuid4()
    watched(task)
    push.notify(unwatched)
    push.notify(task)
    wait_for(lambda: layer.sent, 10, "the watched task's message")
    push.notify(task)  # sent after the first: the unwatched one had its chance before
    wait_for(lambda: len(layer.sent) == 2, 10, "the second message")
    assert layer.sent == [push.group_name(task)] * 2
    watched(unwatched)  # a watcher came: its task's next change is pushed
    push.notify(unwatched)
    wait_for(lambda: len(layer.sent) == 3, 10, "the newly watched task's message")
    assert layer.sent[-1] == push.group_name(unwatched)


def test_a_cache_of_one_process_cannot_hold_marks_so_every_task_is_pushed(layer):
    locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    push._marks_shared.cache_clear()
    try:
        with override_settings(CACHES=locmem):
            assert not push._marks_shared()
    finally:
        push._marks_shared.cache_clear()


class OrderedLayer:
    """Records the listener's calls to the layer, and whether the mark was there at each."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.task_id: uuid.UUID | None = None

    def _marked(self) -> bool:
        assert self.task_id is not None
        return push.watched_key(self.task_id) in caches[settings.CACHE_ALIAS].get_many(
            [push.watched_key(self.task_id)]
        )

    async def new_channel(self) -> str:
        return "channel"

    async def group_add(self, group: str, channel: str) -> None:
        self.calls.append(("group_add", self._marked()))

    async def group_discard(self, group: str, channel: str) -> None:
        self.calls.append(("group_discard", self._marked()))

    async def receive(self, channel: str) -> dict:
        await asyncio.sleep(3600)
        return {}


def test_a_listener_marks_its_task_before_joining_and_keeps_the_mark(monkeypatch):
    """A worker that finds no mark after its change committed knows that the watcher's
    first read comes after the change: the mark is made before joining, and the read
    only once joined (``ready``)."""
    fake = OrderedLayer()
    fake.task_id = uuid.uuid4()
    monkeypatch.setattr("longtask.live.listener.get_channel_layer", lambda: fake)
    # Renewed every second, lasts 3 (whole seconds: Redis's expiry is in seconds).
    monkeypatch.setattr(push, "WATCH_TTL", 3)
    cache = caches[settings.CACHE_ALIAS]

    async def follow() -> bool:
        listener = Listener(fake.task_id, asyncio.Event())
        await asyncio.wait_for(listener.ready.wait(), 10)
        await asyncio.sleep(4)  # past the mark's first life: renewed meanwhile
        marked = await cache.aget(push.watched_key(fake.task_id)) is not None
        listener.stop()
        return marked

    assert asyncio.run(follow())
    assert fake.calls[0] == ("group_add", True)

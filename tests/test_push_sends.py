"""A worker's pushes never wait, and changes of one task share a message until it leaves."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from longtask.progress import push
from tests.helpers import wait_for


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
    push.notify(task)  # the claim
    time.sleep(0.01)  # the run of a no-op task
    push.notify(task)  # the finish
    wait_for(lambda: len(layer.sent) == 1, 10, "the task's message")
    push.notify(other)  # a finish's own message would have been sent before this one
    wait_for(lambda: len(layer.sent) == 2, 10, "the other task's message")
    assert layer.sent == [push.group_name(task), push.group_name(other)]

"""What the clients of one task share in one process: reads, frames, the channel layer."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connection

import longtask
from longtask.live import listener as live_listener
from longtask.live import watcher as live
from longtask.live.frames import coalesce, subtasks_frame, to_json
from longtask.models import Status
from quiltsite.asgi import application
from tests.helpers import close_connections_everywhere

#: Generous: the machine is shared and small.
TIMEOUT = 20
HEADERS = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]


async def until(condition: Any, what: str) -> None:
    """Yield to the event loop until ``condition()`` holds (fail after TIMEOUT seconds)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def half_done_quilt() -> longtask.LongTask:
    """A running 2x2 quilt with 3 squares finished (subtask cursor 3)."""
    from longtask.engine import chunks, run

    task = longtask.start("quilt", {"rows": 2, "cols": 2, "work_ms": 0})
    run.run(str(task.pk))  # the split only: the parent stays RUNNING
    chunks.run_chunk(str(task.pk), 0, 2)
    task.refresh_from_db()
    assert (task.status, task.subtask_cursor) == (Status.RUNNING, 3)
    return task


@pytest.fixture(autouse=True)
def _close_the_database_thread_s_connection() -> Iterator[None]:
    yield
    # Left open in channels' one database thread (a read that a cancelled watcher had
    # started), it would keep PostgreSQL from dropping the test database.
    close_connections_everywhere()


def _count_queries() -> None:
    connection.force_debug_cursor = True
    connection.queries_log.clear()


def _queries() -> list[str]:
    connection.force_debug_cursor = False
    return [q["sql"] for q in connection.queries]


def connect_and_count(task_id: uuid.UUID, sockets: int) -> list[str]:
    """Open ``sockets`` websockets on a task from cursor 0; return the queries they cost.

    Every database read of the live code runs in channels' one database thread, where
    the queries are captured: the snapshots, the catch-up and the watcher's first tick.
    """

    async def scenario() -> list[str]:
        await database_sync_to_async(_count_queries)()
        clients = [WebsocketCommunicator(application, f"/ws/tasks/{task_id}/", HEADERS)]
        clients += [
            WebsocketCommunicator(application, f"/ws/tasks/{task_id}/", HEADERS)
            for _ in range(sockets - 1)
        ]
        connected = await asyncio.gather(*(ws.connect(TIMEOUT) for ws in clients))
        assert all(accepted for accepted, _ in connected)
        for ws in clients:
            snapshot = await ws.receive_json_from(TIMEOUT)
            assert snapshot["type"] == "snapshot" and snapshot["document"]["status"] == "RUNNING"
            catch_up = await ws.receive_json_from(TIMEOUT)
            assert catch_up["type"] == "subtasks" and catch_up["cursor"] == 3
            assert len(catch_up["events"]) == 3
        watcher = live.watcher_of(task_id)
        await until(lambda: watcher is not None and len(watcher.subscribers) == sockets, "joins")
        await until(lambda: watcher.reads == 1, "the watcher's first read")
        queries = await database_sync_to_async(_queries)()
        for ws in clients:
            await ws.disconnect()
        return queries

    return asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_the_sockets_of_one_task_share_one_snapshot_and_one_catch_up_read(settings):
    # No tick but the watcher's first during the test: its reads are counted once.
    settings.LONGTASK_LIVE_INTERVAL = 60
    alone = connect_and_count(half_done_quilt().pk, 1)
    crowd = connect_and_count(half_done_quilt().pk, 12)
    assert len(crowd) == len(alone), f"12 sockets: {len(crowd)} queries; one: {len(alone)}"
    # The row (snapshot), one page of subtasks (catch-up), the row again (the watcher).
    assert len([q for q in crowd if "longtask_subtask" in q]) == 1


@pytest.mark.django_db(transaction=True)
def test_sockets_hold_no_channel_of_their_own(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> tuple[int, int]:
        clients = [
            WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/", HEADERS) for _ in "abc"
        ]
        for ws in clients:
            assert (await ws.connect(TIMEOUT))[0]
            await ws.receive_json_from(TIMEOUT)
        watcher = live.watcher_of(task.pk)
        await until(lambda: watcher is not None and len(watcher.subscribers) == 3, "joins")
        # The service pass: workers push through the layer (on SQLite, through datagrams).
        listening = 1 if isinstance(watcher.listener, live_listener.Listener) else 0
        await until(lambda: listening == 0 or watcher.listener.subscribed, "the listener")
        channels = len(get_channel_layer().channels)
        for ws in clients:
            await ws.disconnect()
        return channels, listening

    # A consumer with a channel would wait on it: one queue per socket in the layer.
    channels, listening = asyncio.run(scenario())
    assert channels == listening


def test_subscribers_sent_the_same_get_the_same_frames_encoded_once():
    watcher = object.__new__(live.Watcher)  # deliver() needs no loop
    state = live.State(
        status="RUNNING",
        finished=False,
        subtask_cursor=2,
        progress={"current": 2, "total": 4, "percent": 50, "message": ""},
        eta_seconds=3,
        events=[(1, {"type": "subtask", "index": 0}), (2, {"type": "subtask", "index": 1})],
        events_upto=2,
    )
    twins = [live.Subscriber(task_id=None, cursor=0, status="RUNNING") for _ in range(3)]
    late = live.Subscriber(task_id=None, cursor=1, status="RUNNING")
    shared: dict[Any, Any] = {}
    for subscriber in [*twins, late]:
        watcher.deliver(subscriber, state, shared)
    sent = [[s.queue.get_nowait() for _ in range(2)] for s in [*twins, late]]
    assert all(frames[0] is sent[0][0] and frames[1] is sent[0][1] for frames in sent[1:3])
    assert [e["index"] for e in sent[0][0]["events"]] == [0, 1]
    assert [e["index"] for e in sent[3][0]["events"]] == [1]  # its own frame
    assert sent[3][1] == sent[0][1] and all(s.cursor == 2 for s in [*twins, late])
    assert to_json(sent[0][0]) is to_json(sent[1][0])  # encoded once
    # A lone queued frame is sent as it is; merging never changes it.
    assert coalesce([sent[0][0]])[0] is sent[0][0]
    merged = coalesce([sent[0][0], subtasks_frame([{"type": "subtask", "index": 2}], 3)])
    assert len(merged[0]["events"]) == 3 and len(sent[0][0]["events"]) == 2


def test_a_shared_frame_is_encoded_once_per_origin():
    document = {"status": "SUCCEEDED", "status_url": "/tasks/abc/", "result": [1, 2]}
    frame = live.SharedFrame(live.status_frame("SUCCEEDED", document))
    here = to_json(frame, "http://127.0.0.1")
    assert to_json(frame, "http://127.0.0.1") is here  # once for all its sockets
    assert '"status_url":"http://127.0.0.1/tasks/abc/"' in here
    assert '"status_url":"https://example.com/tasks/abc/"' in to_json(frame, "https://example.com")
    assert '"status_url":"/tasks/abc/"' in to_json(frame)
    assert frame["document"]["status_url"] == "/tasks/abc/"  # the queued frame unchanged
    # A frame without a link has one encoding, whatever the origin.
    plain = live.SharedFrame(subtasks_frame([{"type": "subtask", "index": 0}], 1))
    assert to_json(plain, "http://a") is to_json(plain, "http://b")


class FlakyLayer:
    """A channel layer whose first read fails, as Redis timing out a read did."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.discarded: list[str] = []
        self.messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.failed = False

    async def new_channel(self) -> str:
        return f"specific.{len(self.added)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.added.append(channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.discarded.append(channel)

    async def receive(self, channel: str) -> dict[str, str]:
        if not self.failed:
            self.failed = True
            raise TimeoutError("Timeout reading from 127.0.0.1:6379")
        return await self.messages.get()


def test_a_listener_subscribes_again_after_the_layer_fails(settings, monkeypatch, caplog):
    settings.LONGTASK_LIVE_FALLBACK = 0.05
    layer = FlakyLayer()
    monkeypatch.setattr(live_listener, "get_channel_layer", lambda: layer)

    async def scenario() -> None:
        changed = asyncio.Event()
        listener = live_listener.Listener(uuid.uuid4(), changed)
        try:
            await until(lambda: layer.added == ["specific.0", "specific.1"], "a new subscription")
            await until(lambda: listener.subscribed, "the listener to listen again")
            assert layer.discarded == ["specific.0"]
            changed.clear()
            layer.messages.put_nowait({"type": "longtask.changed"})
            await until(changed.is_set, "the push to be heard")
        finally:
            listener.stop()

    with caplog.at_level(logging.WARNING, logger="longtask"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("stopped; polling until it resumes" in m for m in messages)
    assert any(m.endswith("resumed") for m in messages)

"""Workers push "task changed" through channels_redis; watchers read on a push, not a poll."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

import longtask
from longtask import progress
from longtask.live import watcher as live
from longtask.progress import push
from tests.conftest import services

pytestmark = [services, pytest.mark.django_db(transaction=True)]


@override_settings(LONGTASK_LIVE_INTERVAL=0.05, LONGTASK_LIVE_FALLBACK=30)
def test_a_watcher_reads_when_a_worker_pushes_and_not_in_between(test_kinds_registered):
    assert push.enabled(), "REDIS_URL is set, so the channel layer must cross processes"
    task = longtask.start("test-count", {"n": 5})

    async def scenario() -> tuple[int, int, float, dict]:
        subscriber = live.subscribe(task.pk, cursor=0, status="QUEUED")
        watcher = live.watcher_of(task.pk)
        try:
            deadline = time.monotonic() + 10
            while watcher.reads < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # Listening costs no reads: at a 30 s fallback, an idle second reads nothing.
            await asyncio.sleep(1.0)
            idle_reads = watcher.reads
            while not subscriber.queue.empty():  # what the first read sent
                subscriber.queue.get_nowait()
            began = time.monotonic()
            # A worker reports progress: the write pushes "changed" (from a thread,
            # as in a worker process).
            record = {"current": 3, "total": 5, "message": "three", "started": time.time()}
            await sync_to_async(progress.write_progress, thread_sensitive=False)(task.pk, record)
            frame = None
            while frame is None or frame["type"] != "progress":
                frame = await asyncio.wait_for(subscriber.queue.get(), 10)
            return idle_reads, watcher.reads, time.monotonic() - began, frame
        finally:
            live.unsubscribe(subscriber)

    idle_reads, reads, latency, frame = asyncio.run(scenario())
    assert idle_reads == 1, f"the watcher polled {idle_reads} times while nothing changed"
    assert frame["progress"]["current"] == 3 and frame["progress"]["message"] == "three"
    assert reads == 2
    assert latency < 5, f"the push took {latency:.1f}s to reach the subscriber"


#: Longer than the 5 s for which the channel layer's blocking read waits in Redis.
PAST_THE_BLOCKING_READ = 6.5


@override_settings(LONGTASK_LIVE_INTERVAL=0.05, LONGTASK_LIVE_FALLBACK=30)
def test_one_subscription_per_task_serves_every_socket_past_the_blocking_read():
    from channels.layers import get_channel_layer
    from channels.testing import WebsocketCommunicator

    from quiltsite.asgi import application

    task = longtask.start("report", {"month": "2026-10"})
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]

    async def scenario() -> tuple[int, int, list[dict]]:
        sockets = [
            WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/", headers) for _ in "abc"
        ]
        for ws in sockets:
            assert (await ws.connect(10))[0]
            await ws.receive_json_from(10)  # the snapshot
        watcher = live.watcher_of(task.pk)
        deadline = time.monotonic() + 10
        while not (watcher.listener.subscribed and len(watcher.subscribers) == 3):
            assert time.monotonic() < deadline, "the sockets did not join one watcher"
            await asyncio.sleep(0.01)
        # One channel of the layer is read (the watcher's), not one per socket.
        receiving = get_channel_layer().receive_count
        # Idle for longer than Redis blocks a read: redis-py 8's default socket timeout
        # (5 s) used to end the read with a TimeoutError and close every socket (1011).
        began = time.monotonic()
        while time.monotonic() - began < PAST_THE_BLOCKING_READ:
            assert watcher.listener.subscribed, "the listener stopped listening"
            await asyncio.sleep(0.1)
        reads = watcher.reads
        record = {"current": 1, "total": 2, "message": "half", "started": time.time()}
        await sync_to_async(progress.write_progress, thread_sensitive=False)(task.pk, record)
        frames = [await ws.receive_json_from(10) for ws in sockets]
        for ws in sockets:
            await ws.disconnect()
        return receiving, reads, frames

    receiving, reads, frames = asyncio.run(scenario())
    assert receiving == 1
    assert reads <= 2, f"the watcher polled ({reads} reads): its listener had failed"
    assert [f["progress"]["message"] for f in frames] == ["half"] * 3

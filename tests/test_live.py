"""Live updates: the watcher's bookkeeping, and a real daphne beside real workers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import close_old_connections

import longtask
from longtask.live import watcher as live
from longtask.models import LongTask, Status
from tests.helpers import wait_for
from tests.processes import ROOT, process_env, qcluster, stop

#: Generous: two cores, shared with other test runs.
DEADLINE = 60
DAPHNE = [sys.executable, "-m", "daphne", "-b", "127.0.0.1"]


def state(events: list[int], *, cursor: int, status: str = "RUNNING") -> live.State:
    return live.State(
        status=status,
        finished=status in {"SUCCEEDED", "FAILED", "CANCELLED"},
        subtask_cursor=cursor,
        progress={"current": cursor, "total": 10, "percent": cursor * 10, "message": ""},
        eta_seconds=None,
        events=[(seq, {"type": "subtask", "index": seq - 1}) for seq in events],
        document={"status": status},
    )


def queued(subscriber: live.Subscriber) -> list[dict[str, Any]]:
    frames = []
    while not subscriber.queue.empty():
        frames.append(subscriber.queue.get_nowait())
    return frames


def test_each_subscriber_gets_what_is_new_to_it_and_the_end_last():
    watcher = object.__new__(live.Watcher)  # deliver() needs no loop
    slow = live.Subscriber(task_id=None, cursor=0, status="RUNNING")
    fast = live.Subscriber(task_id=None, cursor=5, status="RUNNING")
    for subscriber in (slow, fast):
        watcher.deliver(subscriber, state([1, 2, 3, 4, 5, 6, 7], cursor=7))
    assert [e["index"] for e in queued(slow)[0]["events"]] == [0, 1, 2, 3, 4, 5, 6]
    frames = queued(fast)
    assert frames[0] == {"type": "subtasks", "cursor": 7, "events": frames[0]["events"]}
    assert [e["index"] for e in frames[0]["events"]] == [5, 6]
    assert frames[1]["type"] == "progress"

    # A tick capped short of the end: no final status until the subscriber caught up.
    watcher.deliver(slow, state([8], cursor=10, status="SUCCEEDED"))
    assert [f["type"] for f in queued(slow)] == ["subtasks", "progress"] and not slow.closed
    watcher.deliver(slow, state([9, 10], cursor=10, status="SUCCEEDED"))
    frames = queued(slow)
    assert [f["type"] for f in frames] == ["subtasks", "status"]
    assert frames[-1] == live.status_frame("SUCCEEDED", {"status": "SUCCEEDED"})
    assert frames[-1]["final"] is True
    assert slow.closed


def test_coalesce_batches_events_keeps_the_last_progress_and_status_order():
    frames = [
        live.subtasks_frame([{"index": 0}], 1),
        {"type": "progress", "progress": {"current": 1}},
        live.subtasks_frame([{"index": 1}, {"index": 2}], 3),
        {"type": "progress", "progress": {"current": 3}},
        live.status_frame("RUNNING", None),
        live.subtasks_frame([{"index": 3}], 4),
    ]
    out = live.coalesce(frames)
    assert [f["type"] for f in out] == ["subtasks", "progress", "status", "subtasks"]
    assert out[0] == live.subtasks_frame([{"index": 0}, {"index": 1}, {"index": 2}], 3)
    assert out[1]["progress"] == {"current": 3}
    assert frames[0]["events"] == [{"index": 0}]  # queued frames are not changed
    # A batch never grows past the limit; each part carries its own cursor.
    out = live.coalesce([live.subtasks_frame([{"index": i}], i + 1) for i in range(5)], limit=2)
    assert [(len(f["events"]), f["cursor"]) for f in out] == [(2, 2), (2, 4), (1, 5)]


@pytest.mark.django_db
def test_a_tick_costs_one_query_when_nothing_finished(django_assert_num_queries):
    from longtask.engine import chunks as fanout
    from longtask.engine import run as runner

    task = longtask.start("quilt", {"rows": 2, "cols": 2, "work_ms": 0})
    runner.run(str(task.pk))  # the split only: the parent stays RUNNING
    fanout.run_chunk(str(task.pk), 0, 2)
    task.refresh_from_db()
    assert (task.status, task.subtask_cursor) == (Status.RUNNING, 3)
    with django_assert_num_queries(1):  # the row; its counters are the progress
        state = live.read_tick(task.pk, 3, {Status.RUNNING})
    assert state.events == [] and state.progress["current"] == 3
    with django_assert_num_queries(2):  # and the subtasks past the lowest cursor
        state = live.read_tick(task.pk, 1, {Status.RUNNING})
    assert [seq for seq, _ in state.events] == [2, 3]


@pytest.mark.django_db(transaction=True)
def test_one_watcher_serves_every_socket_of_a_task_and_stops_with_the_last(settings):
    from channels.testing import WebsocketCommunicator

    from quiltsite.asgi import application

    settings.LONGTASK_LIVE_INTERVAL = 0.02
    task = longtask.start("report", {"month": "2026-10"})
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]

    async def scenario() -> None:
        sockets = [
            WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/", headers) for _ in "abc"
        ]
        for ws in sockets:
            assert (await ws.connect(10))[0]
            await ws.receive_json_from(10)
        watcher = live.watcher_of(task.pk)
        for _ in range(500):  # the subscriptions start just after the snapshot
            if len(watcher.subscribers) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(live._watchers) == 1 and len(watcher.subscribers) == 3
        reads = watcher.reads
        await asyncio.sleep(0.2)
        assert watcher.reads - reads <= 0.2 / 0.02 + 1  # one read a tick, not one per socket
        for ws in sockets:
            await ws.disconnect()
        assert live.watcher_of(task.pk) is None
        await asyncio.sleep(0)
        assert watcher.runner.done()

    asyncio.run(scenario())


# Real processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def daphne(log_path: Path, **env: str) -> Iterator[str]:
    """Serve the site with a real daphne on a free port; yield its base URL."""
    port = free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*DAPHNE, "-p", str(port), "quiltsite.asgi:application"],
            cwd=ROOT,
            env=process_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: process.poll() is not None or serving(base), DEADLINE, "daphne")
            assert process.poll() is None, log_path.read_text()[-3000:]
            yield base
        finally:
            stop(process)


@contextmanager
def workers(tmp_path: Path) -> Iterator[None]:
    """Run the parent cluster and the subtask cluster, as `make run` does."""
    from django.conf import settings

    subtask_env = {"Q_CLUSTER_NAME": settings.LONGTASK_QUEUES["subtasks"]["cluster"]}
    with qcluster(tmp_path / "parents.log"), qcluster(tmp_path / "subtasks.log", **subtask_env):
        yield


class Follower:
    """A websocket client on its own thread that records every frame of one task."""

    def __init__(self, base: str, task_id: Any, *, drop_after_first_batch: bool = False) -> None:
        self.url = base.replace("http://", "ws://") + f"/ws/tasks/{task_id}/"
        self.origin = base
        self.drop = drop_after_first_batch
        self.frames: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _follow(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        cursor = 0
        while not self.final():
            async with connect(f"{self.url}?since={cursor}", origin=self.origin, proxy=None) as ws:
                try:
                    async for text in ws:
                        frame = json.loads(text)
                        self.frames.append(frame)
                        self.ready.set()
                        if frame["type"] == "subtasks":
                            cursor = frame["cursor"]
                            if self.drop:
                                self.drop = False
                                break  # reconnect with the cursor
                except ConnectionClosed:
                    pass
            self.close_codes.append(ws.close_code)

    def final(self) -> dict[str, Any] | None:
        done = [f for f in self.frames if f["type"] == "status" and f["final"]]
        return done[-1] if done else None

    def indexes(self) -> list[int]:
        return [e["index"] for f in self.frames if f["type"] == "subtasks" for e in f["events"]]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_daphne_sends_every_square_of_a_quilt_once_and_the_end(tmp_path):
    task = longtask.start("quilt", {"rows": 10, "cols": 10, "work_ms": 20})
    with daphne(tmp_path / "daphne.log") as base:
        steady = Follower(base, task.pk)
        dropping = Follower(base, task.pk, drop_after_first_batch=True)
        for follower in (steady, dropping):
            assert follower.ready.wait(DEADLINE) and follower.error is None, follower.error
        with workers(tmp_path):
            for follower in (steady, dropping):
                follower.thread.join(DEADLINE)
                assert not follower.thread.is_alive(), "no final status within the deadline"
    close_old_connections()
    task.refresh_from_db()
    log = (tmp_path / "daphne.log").read_text()
    assert task.status == Status.SUCCEEDED, (task.error, log[-3000:])
    assert "Traceback" not in log, log[-3000:]
    for follower in (steady, dropping):
        assert follower.error is None, follower.error
        assert sorted(follower.indexes()) == list(range(100))  # each square exactly once
        assert follower.final()["status"] == "SUCCEEDED"
        assert follower.final()["document"]["result"]["colors"] == task.result["colors"]
        assert follower.frames[0]["type"] == "snapshot"
        assert follower.close_codes[-1] == 1000
    assert len(dropping.close_codes) == 2  # it did reconnect, from its cursor
    live_events = [f for f in steady.frames[1:] if f["type"] == "subtasks"]
    assert live_events, "no subtask arrived while the quilt was running"
    assert LongTask.objects.filter(pk=task.pk).exists()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_workers_push_each_change_to_the_web_process(tmp_path):
    """The web process reads a watched task when a worker says it changed, not by polling:
    here it would poll every ten minutes. Through Redis on the service pass, else through
    this machine's datagrams (longtask/progress/local.py)."""
    task = longtask.start("quilt", {"rows": 5, "cols": 5, "work_ms": 50})
    never = {"LONGTASK_LIVE_INTERVAL": "600", "LONGTASK_LIVE_FALLBACK": "600"}
    with daphne(tmp_path / "daphne.log", **never) as base:
        follower = Follower(base, task.pk)
        assert follower.ready.wait(DEADLINE) and follower.error is None, follower.error
        with workers(tmp_path):
            follower.thread.join(DEADLINE)
            assert not follower.thread.is_alive(), (tmp_path / "daphne.log").read_text()[-3000:]
    assert follower.error is None, follower.error
    assert sorted(follower.indexes()) == list(range(25))
    assert follower.final()["status"] == "SUCCEEDED"
    # Squares arrived while the quilt ran, in several frames (not all with the end).
    assert len([f for f in follower.frames if f["type"] == "subtasks"]) > 1

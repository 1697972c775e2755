"""Pushes between the processes of one machine (the embedded default): one datagram a change."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator

import longtask
from longtask import progress
from longtask.live import watcher as live
from longtask.progress import local, push
from quiltsite.asgi import application

#: Generous: the machine is shared and small.
TIMEOUT = 20
HEADERS = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]

pytestmark = pytest.mark.skipif(
    push.enabled() or not local.enabled(),
    reason="the service pass pushes through Redis (tests/test_live.py covers both)",
)


def from_a_worker_thread(task_id: uuid.UUID) -> None:
    """Say a task changed from another thread, as a worker's commit would."""
    thread = threading.Thread(target=push.notify, args=(task_id,))
    thread.start()
    thread.join()


def test_a_change_reaches_the_listening_web_process_and_only_its_task_s_watchers():
    watched, other = uuid.uuid4(), uuid.uuid4()

    async def scenario() -> None:
        receiver = local.receiver()
        assert receiver is not None
        changed, unrelated = asyncio.Event(), asyncio.Event()
        receiver.add(watched, changed)
        receiver.add(other, unrelated)
        from_a_worker_thread(watched)
        await asyncio.wait_for(changed.wait(), TIMEOUT)
        assert not unrelated.is_set()
        receiver.discard(watched, changed)
        receiver.discard(other, unrelated)
        assert receiver.interest == {}

    asyncio.run(scenario())


def test_the_socket_is_private_to_the_site_s_user():
    async def scenario() -> None:
        receiver = local.receiver()
        assert receiver is not None
        where = Path(receiver.path).parent
        assert (where.stat().st_mode & 0o777) == 0o700
        assert where == local.directory() and where.name.endswith(".live")

    asyncio.run(scenario())


def test_a_socket_left_by_a_killed_process_is_removed_by_the_next_change(tmp_path):
    where = local.directory()
    assert where is not None
    where.mkdir(mode=0o700, exist_ok=True)
    stale = where / "4194303"  # bound, then its process died without removing it
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(stale))
    assert stale.exists()
    local._listing = (None, -1, 0, [])  # list the directory again at once
    push.notify(uuid.uuid4())  # never raises
    assert not stale.exists()


def test_a_directory_others_may_write_to_turns_pushes_off(monkeypatch, tmp_path, caplog):
    shared = tmp_path / "db.sqlite3.live"
    shared.mkdir()
    shared.chmod(0o777)  # anyone on the machine could send, or bind in the site's place
    monkeypatch.setattr(local, "directory", lambda: shared)
    monkeypatch.setattr(local, "_receivers", {})
    caplog.set_level(logging.WARNING, "longtask")

    async def scenario() -> local.Receiver | None:
        return local.receiver()

    assert asyncio.run(scenario()) is None  # the watchers poll
    assert "could not listen" in caplog.text and "mode 0700" in caplog.text
    assert list(shared.iterdir()) == []


def test_no_datagrams_with_postgresql_or_an_in_memory_database_or_when_off():
    assert local._directory(True, "postgresql", "longtask") is None
    assert local._directory(True, "sqlite", ":memory:") is None
    assert local._directory(True, "sqlite", "file:memorydb?mode=memory&cache=shared") is None
    assert local._directory(False, "sqlite", "/srv/site/db.sqlite3") is None
    assert local._directory(True, "sqlite", "/srv/site/db.sqlite3") == Path(
        "/srv/site/db.sqlite3.live"
    )
    assert local._directory(True, "sqlite", "/" + "x" * 120 + "/db.sqlite3") is None  # too long


@pytest.mark.django_db(transaction=True)
def test_a_watcher_reads_when_a_worker_pushes_not_when_it_would_poll(settings):
    # Polling alone would read again in ten minutes.
    settings.LONGTASK_LIVE_INTERVAL = 600
    settings.LONGTASK_LIVE_FALLBACK = 600
    task = longtask.start("report", {"month": "2026-10"})
    record = {"current": 3, "total": 10, "message": "day 3", "updated_at": 0.0, "rate": None}

    async def scenario() -> dict:
        ws = WebsocketCommunicator(application, f"/ws/tasks/{task.pk}/", HEADERS)
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)  # the snapshot
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while (watcher := live.watcher_of(task.pk)) is None or watcher.reads < 1:
            assert asyncio.get_running_loop().time() < deadline, "the watcher never read"
            await asyncio.sleep(0.01)
        # After the watcher's first read, a worker writes progress (which says the task
        # changed) in another thread.
        await asyncio.to_thread(progress.write_progress, task.pk, record)
        frame = await ws.receive_json_from(TIMEOUT)
        await ws.disconnect()
        return frame

    frame = asyncio.run(scenario())
    assert frame["type"] == "progress" and frame["progress"]["current"] == 3

"""The task event stream (Server-Sent Events): in-process through Django's ASGI handler
(``AsyncClient``), and one curl-style client against a real daphne beside real workers."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import close_old_connections
from django.test import AsyncClient
from django.utils import timezone

import longtask
from longtask import progress
from longtask.engine import states
from longtask.live import sse
from longtask.live import watcher as live
from longtask.models import LongTask, Status, SubTask
from quiltsite.asgi import application
from tests import broker
from tests.helpers import claim, drain_queue
from tests.test_live import DEADLINE, daphne, workers

pytestmark = pytest.mark.django_db(transaction=True)

#: Generous: the machine is shared and small.
TIMEOUT = 20

Event = dict[str, Any]


@pytest.fixture(autouse=True)
def _fast_ticks(settings):
    settings.LONGTASK_LIVE_INTERVAL = 0.02
    yield from broker.emptied()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def parse(block: bytes) -> Event:
    """Read one event block (its lines, without the blank line that ends it)."""
    event: Event = {}
    for line in block.decode().split("\n"):
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            event["comment"] = value
        elif name == "data":
            event["data"] = json.loads(value)
        else:
            event[name] = value
    return event


class Stream:
    """Reads the events of a streaming response of ``AsyncClient``."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.chunks = aiter(response.streaming_content)
        self.buffer = b""

    async def next(self) -> Event | None:
        """Return the next event or comment; None when the stream ended."""
        while b"\n\n" not in self.buffer:
            try:
                self.buffer += await asyncio.wait_for(anext(self.chunks), TIMEOUT)
            except StopAsyncIteration:
                assert self.buffer == b"", self.buffer
                return None
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return parse(block)

    async def until(self, last: Callable[[Event], bool]) -> list[Event]:
        """Return the events (not comments) up to and including the first ``last`` accepts."""
        events = []
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            assert asyncio.get_running_loop().time() < deadline, f"timed out after {events}"
            event = await self.next()
            assert event is not None, f"the stream ended after {events}"
            if "comment" not in event:
                events.append(event)
                if last(event):
                    return events

    async def close(self) -> None:
        """Go away as a client does: the server cancels the stream while it waits for more."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            assert asyncio.get_running_loop().time() < deadline, "the stream never waited"
            pending = asyncio.ensure_future(anext(self.chunks))
            await asyncio.sleep(0)  # it runs to its first wait, unless a chunk was ready
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
                return
            if pending.exception() is not None:  # StopAsyncIteration: the stream ended
                return


async def open_stream(client: AsyncClient, path: str, **headers: str) -> Stream:
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.content
    return Stream(response)


def final(event: Event) -> bool:
    return event["event"] == "status" and event["data"]["final"]


def subtasks(event: Event) -> bool:
    return event["event"] == "subtasks"


def indexes_of(events: list[Event]) -> list[int]:
    return [e["index"] for event in events if subtasks(event) for e in event["data"]["events"]]


async def until(condition: Callable[[], Any]) -> None:
    """Yield to the event loop until ``condition`` holds (fail after TIMEOUT seconds)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def keepalives_until(stream: Stream, condition: Callable[[], Any]) -> None:
    """Read keepalives (nothing else) until ``condition`` holds (fail after TIMEOUT seconds)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        assert await stream.next() == {"comment": "keepalive"}


def subscribers(task_id: uuid.UUID) -> int:
    watcher = live.watcher_of(task_id)
    return len(watcher.subscribers) if watcher else 0


# In process ------------------------------------------------------------------------------


def test_a_plain_task_streams_snapshot_status_progress_then_ends_after_the_final_status():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        response = await AsyncClient().get(f"/tasks/{task.pk}/events")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        assert response["Cache-Control"] == "no-cache"
        assert response["X-Accel-Buffering"] == "no"
        stream = Stream(response)
        snapshot = await stream.next()
        assert (snapshot["id"], snapshot["event"]) == ("0", "snapshot")
        assert snapshot["data"]["type"] == "snapshot" and snapshot["data"]["cursor"] == 0
        assert snapshot["data"]["document"]["status"] == "QUEUED"
        assert snapshot["data"]["document"]["status_url"] == f"http://testserver/tasks/{task.pk}/"

        record = {
            "current": 5,
            "total": 20,
            "message": "Handling day 5",
            "updated_at": timezone.now().timestamp(),
            "rate": 1.0,
        }
        await database_sync_to_async(progress.write_progress)(task.pk, record)
        run_ = await database_sync_to_async(claim)(task)
        events = await stream.until(lambda e: e["event"] == "status")
        assert events[-1]["data"]["status"] == "RUNNING" and not events[-1]["data"]["final"]
        assert "id" not in events[-1]  # only frames with a cursor set the resume point
        shown = [e for e in events if e["event"] == "progress"][-1]
        assert shown["data"]["progress"]["percent"] == 25 and "id" not in shown

        await database_sync_to_async(states.succeed)(run_, {"rows": []}, {**record, "current": 20})
        events = await stream.until(final)
        assert events[-1]["data"]["status"] == "SUCCEEDED"
        assert events[-1]["data"]["document"]["result"] == {"rows": []}
        assert await stream.next() is None  # the stream ends after the final status
        assert live.watcher_of(task.pk) is None

    run(scenario)


def test_a_quilt_resumes_from_last_event_id_with_only_later_subtasks():
    task = longtask.start("quilt", {"rows": 3, "cols": 4, "work_ms": 0})

    async def scenario() -> None:
        client = AsyncClient()
        stream = await open_stream(client, f"/tasks/{task.pk}/events")
        await stream.until(lambda e: e["event"] == "snapshot")
        await database_sync_to_async(broker.run_next)()  # the split
        await database_sync_to_async(broker.run_next)()  # the first chunk
        first = await stream.until(subtasks)
        cursor = int(first[-1]["id"])
        assert cursor == first[-1]["data"]["cursor"] and 0 < cursor < 12
        await stream.close()
        await database_sync_to_async(drain_queue)()

        later = SubTask.objects.filter(parent=task, finish_seq__gt=cursor)
        expected = await database_sync_to_async(set)(later.values_list("index", flat=True))
        assert expected and len(expected) < 12
        # An EventSource sends the last id it saw and reuses its URL: the header wins.
        for headers, query in [
            ({"Last-Event-ID": str(cursor)}, "?since=0"),
            ({}, f"?since={cursor}"),
        ]:
            again = await open_stream(client, f"/tasks/{task.pk}/events{query}", **headers)
            rest = await again.until(final)
            assert rest[0]["event"] == "snapshot" and rest[0]["id"] == str(cursor)
            assert set(indexes_of(rest)) == expected and len(indexes_of(rest)) == len(expected)
            assert sorted(indexes_of(first) + indexes_of(rest)) == list(range(12))
            assert rest[-1]["data"]["document"]["status"] == "SUCCEEDED"
            assert await again.next() is None

    run(scenario)
    assert not live._watchers


def test_a_client_that_goes_away_leaves_the_watcher():
    task = longtask.start("report", {"month": "2026-10"})  # queued: the stream stays open

    async def scenario() -> None:
        stream = await open_stream(AsyncClient(), f"/tasks/{task.pk}/events")

        async def read_forever() -> None:
            while await stream.next() is not None:
                pass

        reader = asyncio.create_task(read_forever())
        await until(lambda: subscribers(task.pk) == 1)
        watcher = live.watcher_of(task.pk)
        # What Django's ASGI handler does when the client disconnects: cancel the send.
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert live.watcher_of(task.pk) is None
        await until(watcher.runner.done)

    run(scenario)


def test_the_stream_and_a_websocket_share_one_watcher():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = WebsocketCommunicator(
            application,
            f"/ws/tasks/{task.pk}/",
            headers=[(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")],
        )
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)
        stream = await open_stream(AsyncClient(), f"/tasks/{task.pk}/events")
        # The stream subscribes when asked for what follows the snapshot, as a server does.
        reading = asyncio.create_task(stream.until(lambda e: e["event"] == "status"))
        await until(lambda: subscribers(task.pk) == 2)
        assert list(live._watchers) == [task.pk]
        await database_sync_to_async(claim)(task)
        assert (await reading)[-1]["data"]["status"] == "RUNNING"
        frames = [await ws.receive_json_from(TIMEOUT)]
        while frames[-1]["type"] != "status":
            frames.append(await ws.receive_json_from(TIMEOUT))
        assert frames[-1]["status"] == "RUNNING"
        await ws.disconnect()
        await stream.close()
        assert not live._watchers

    run(scenario)


def test_keepalive_comments_while_nothing_happens(monkeypatch):
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.02)
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        stream = await open_stream(AsyncClient(), f"/tasks/{task.pk}/events")
        assert (await stream.next())["event"] == "snapshot"
        assert await stream.next() == {"comment": "keepalive"}
        assert await stream.next() == {"comment": "keepalive"}
        await stream.close()

    run(scenario)


def test_a_deleted_task_ends_the_stream_with_gone():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        stream = await open_stream(AsyncClient(), f"/tasks/{task.pk}/events")
        await stream.next()
        await database_sync_to_async(LongTask.objects.filter(pk=task.pk).delete)()
        events = await stream.until(lambda e: e["event"] == "gone")
        assert events[-1]["data"] == {"type": "gone"}
        assert await stream.next() is None

    run(scenario)
    assert not live._watchers


@pytest.mark.parametrize("who", ["anonymous", "other", "staff", "owner", "viewer"])
def test_an_owned_task_follows_the_status_page_access_rule(user, other_user, staff, viewer, who):
    task = longtask.start("report", {"month": "2026-10"}, owner=user)
    client = AsyncClient()
    visitor = {"anonymous": None, "other": other_user, "staff": staff, "owner": user}.get(
        who, viewer
    )
    if visitor is not None:
        client.force_login(visitor)

    async def scenario() -> None:
        response = await client.get(f"/tasks/{task.pk}/events")
        if who in ("anonymous", "other", "staff"):  # is_staff alone grants nothing
            assert response.status_code == 404
            assert response["Content-Type"].startswith("text/html")  # the site's 404 page
        else:
            assert response.status_code == 200
            stream = Stream(response)
            assert (await stream.next())["data"]["document"]["id"] == str(task.pk)
            await stream.close()

    run(scenario)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (f"/tasks/{uuid.UUID(int=7)}/events", {}, 404),
        ("/tasks/not-a-uuid/events", {}, 404),
        ("/tasks/{task}/events?since=-1", {}, 400),
        ("/tasks/{task}/events?since=99999999999", {}, 400),
        ("/tasks/{task}/events", {"Last-Event-ID": "abc"}, 400),
        ("/tasks/{task}/events?since=3", {"Last-Event-ID": "\u00b2"}, 400),  # a superscript 2
    ],
)
def test_unknown_ids_and_bad_cursors_are_refused(path, headers, status):
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        response = await AsyncClient().get(path.replace("{task}", str(task.pk)), headers=headers)
        assert response.status_code == status

    run(scenario)
    assert not live._watchers


def test_a_sync_wsgi_server_gets_a_501_that_says_why(client):
    task = longtask.start("report", {"month": "2026-10"})
    response = client.get(f"/tasks/{task.pk}/events")  # the test Client is a WSGI request
    assert response.status_code == 501
    assert not response.streaming
    assert "ASGI" in response.content.decode() and "daphne" in response.content.decode()


# Access re-checked while the stream is open -----------------------------------------------


def lose_nothing(user: Any, client: Any) -> None:
    """The control: nothing changes, so the stream stays open."""


def log_out(user: Any, client: Any) -> None:
    client.logout()


def change_password(user: Any, client: Any) -> None:
    user.set_password("pw-new")  # a new session auth hash: other sessions end
    user.save()


def lose_permission(user: Any, client: Any) -> None:
    user.user_permissions.clear()


@pytest.mark.parametrize("change", [lose_nothing, log_out, change_password, lose_permission])
def test_an_open_stream_ends_with_denied_when_access_ends(
    user, viewer, settings, monkeypatch, change
):
    settings.LONGTASK_LIVE_RECHECK = 0.02
    monkeypatch.setattr(sse, "HEARTBEAT_SECONDS", 0.02)
    checks = []
    real = sse.still_allowed

    def counted(*args: Any) -> bool:
        checks.append(real(*args))
        return checks[-1]

    monkeypatch.setattr(sse, "still_allowed", counted)
    task = longtask.start("report", {"month": "2026-10"}, owner=user)  # queued: stays open
    client = AsyncClient()
    client.force_login(viewer)

    async def scenario() -> None:
        stream = await open_stream(client, f"/tasks/{task.pk}/events")
        assert (await stream.next())["event"] == "snapshot"
        await keepalives_until(stream, lambda: len(checks) >= 2)  # re-checks pass first
        assert all(checks)
        await database_sync_to_async(change)(viewer, client)
        if change is lose_nothing:
            seen = len(checks)
            await keepalives_until(stream, lambda: len(checks) >= seen + 3)
            await stream.close()
        else:
            events = await stream.until(lambda e: True)
            assert (events[-1]["event"], events[-1]["data"]) == ("denied", {"type": "denied"})
            assert await stream.next() is None

    run(scenario)
    assert not live._watchers


# A real daphne, a curl-style client ---------------------------------------------------------


class Curl:
    """``curl -N``: one GET read line by line as the bytes arrive, events parsed."""

    def __init__(self, base: str, path: str, **headers: str) -> None:
        url = urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=DEADLINE)
        self.connection.request("GET", path, headers={"Accept": "text/event-stream", **headers})
        self.response = self.connection.getresponse()

    def next(self) -> Event | None:
        """Return the next event or comment; None when the stream ended."""
        lines = []
        while line := self.response.readline():
            line = line.rstrip(b"\r\n")
            if not line:
                return parse(b"\n".join(lines))
            lines.append(line)
        assert not lines, lines
        return None

    def rest(self) -> list[Event]:
        """Every event up to the end of the stream (comments left out)."""
        events = []
        deadline = time.monotonic() + DEADLINE
        while (event := self.next()) is not None:
            assert time.monotonic() < deadline, f"the stream did not end: {events[-3:]}"
            if "comment" not in event:
                events.append(event)
        self.connection.close()
        return events


@pytest.mark.integration
def test_curl_follows_a_quilt_on_real_daphne_to_its_final_status(tmp_path):
    task = longtask.start("quilt", {"rows": 4, "cols": 4, "work_ms": 20})
    with daphne(tmp_path / "daphne.log") as base:
        curl = Curl(base, f"/tasks/{task.pk}/events")
        assert curl.response.status == 200
        assert curl.response.getheader("Content-Type") == "text/event-stream"
        assert curl.response.getheader("Cache-Control") == "no-cache"
        snapshot = curl.next()
        assert snapshot["event"] == "snapshot" and snapshot["id"] == "0"
        with workers(tmp_path):
            events = curl.rest()  # returns when daphne ends the stream
        assert final(events[-1]) and events[-1]["data"]["status"] == "SUCCEEDED"
        assert sorted(indexes_of(events)) == list(range(16))  # each square exactly once
        assert all(e["id"] == str(e["data"]["cursor"]) for e in events if subtasks(e))

        close_old_connections()
        task.refresh_from_db()
        assert events[-1]["data"]["document"]["result"]["colors"] == task.result["colors"]
        cursor = 5
        later = set(
            SubTask.objects.filter(parent=task, finish_seq__gt=cursor).values_list(
                "index", flat=True
            )
        )
        resumed = Curl(base, f"/tasks/{task.pk}/events", **{"Last-Event-ID": str(cursor)}).rest()
        assert resumed[0]["event"] == "snapshot" and resumed[0]["id"] == str(cursor)
        assert sorted(indexes_of(resumed)) == sorted(later) and len(later) < 16
        assert final(resumed[-1])

        missing = Curl(base, f"/tasks/{uuid.UUID(int=7)}/events")
        assert missing.response.status == 404
    log = (tmp_path / "daphne.log").read_text()
    assert task.status == Status.SUCCEEDED, (task.error, log[-3000:])
    assert "Traceback" not in log, log[-3000:]

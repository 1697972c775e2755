"""The task websocket through the real ASGI stack: origin check, auth, routing, consumer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

import longtask
from longtask import progress
from longtask.engine import states
from longtask.live import consumers
from longtask.live import watcher as live
from longtask.models import LongTask, SubTask
from quiltsite.asgi import application
from tests import broker
from tests.helpers import claim, drain_queue

pytestmark = pytest.mark.django_db(transaction=True)

#: Generous: the machine is shared and small.
TIMEOUT = 20


@pytest.fixture(autouse=True)
def _fast_ticks(settings):
    settings.LONGTASK_LIVE_INTERVAL = 0.02
    yield from broker.emptied()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def socket(path: str, *, origin: str | None = "http://127.0.0.1", cookie: str = "") -> Any:
    headers = [(b"host", b"127.0.0.1")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, path, headers=headers)


def session_cookie(client: Any, user: Any) -> str:
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def close_code(communicator: WebsocketCommunicator) -> int:
    """Return the close code, skipping the frames sent before it."""
    while True:
        message = await communicator.receive_output(TIMEOUT)
        if message["type"] == "websocket.close":
            return message.get("code", 1000)


async def frames_until(
    communicator: WebsocketCommunicator, last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Return the frames received up to and including the first one ``last`` accepts."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(TIMEOUT)
        frames.append(frame)
        if last(frame):
            return frames


def run_jobs(count: int) -> None:
    """Run the first ``count`` queued jobs, like a worker would."""
    for _ in range(count):
        assert broker.run_next(), "the queue ran dry"


def final(frame: dict[str, Any]) -> bool:
    return frame["type"] == "status" and frame["final"]


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for f in frames if f["type"] == "subtasks" for event in f["events"]]


def test_snapshot_progress_and_final_status_of_a_plain_task():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        snapshot = await ws.receive_json_from(TIMEOUT)
        assert snapshot["type"] == "snapshot" and snapshot["cursor"] == 0
        assert snapshot["document"]["status"] == "QUEUED"
        assert snapshot["document"]["status_url"] == f"http://127.0.0.1/tasks/{task.pk}/"

        record = {
            "current": 5,
            "total": 20,
            "message": "Handling <day 5>",
            "updated_at": timezone.now().timestamp(),
            "rate": 1.0,
        }
        await database_sync_to_async(progress.write_progress)(task.pk, record)
        run_ = await database_sync_to_async(claim)(task)
        frames = await frames_until(ws, lambda f: f["type"] == "status")
        assert frames[-1]["status"] == "RUNNING" and not frames[-1]["final"]
        shown = [f for f in frames if f["type"] == "progress"][-1]
        assert shown["progress"] == {
            "current": 5,
            "total": 20,
            "percent": 25,
            "message": "Handling <day 5>",
        }
        assert shown["eta_seconds"] in (14, 15)

        await database_sync_to_async(states.succeed)(run_, {"rows": []}, {**record, "current": 20})
        frames = await frames_until(ws, final)
        assert frames[-1]["status"] == "SUCCEEDED"
        assert frames[-1]["document"]["result"] == {"rows": []}
        assert frames[-1]["document"]["status_url"] == f"http://127.0.0.1/tasks/{task.pk}/"
        assert frames[-1]["document"]["progress"]["percent"] == 100
        assert await close_code(ws) == 1000

    run(scenario)


def test_quilt_subtasks_arrive_once_each_then_the_final_status():
    task = longtask.start("quilt", {"rows": 3, "cols": 4, "work_ms": 0})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        snapshot = await ws.receive_json_from(TIMEOUT)
        assert snapshot["document"]["subtasks"]["total"] == 0
        await database_sync_to_async(drain_queue)()
        frames = await frames_until(ws, final)
        events = events_of(frames)
        assert sorted(e["index"] for e in events) == list(range(12))
        for event in events:
            assert event["status"] == "SUCCEEDED"
            assert event["index"] == event["result"]["row"] * 4 + event["result"]["col"]
        assert frames[-1]["status"] == "SUCCEEDED"
        colors = frames[-1]["document"]["result"]["colors"]
        for event in events:
            assert (
                colors[event["result"]["row"]][event["result"]["col"]] == event["result"]["color"]
            )
        assert [f for f in frames if f["type"] == "progress"][-1]["progress"]["percent"] == 100
        assert frames[-2]["type"] != "subtasks"  # every event came before the end
        assert await close_code(ws) == 1000

    run(scenario)


def test_reconnecting_with_the_last_cursor_misses_nothing():
    task = longtask.start("quilt", {"rows": 3, "cols": 4, "work_ms": 0})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)
        await database_sync_to_async(run_jobs)(2)  # the split and the first chunk
        first = await frames_until(ws, lambda f: f["type"] == "subtasks")
        cursor = first[-1]["cursor"]
        assert 0 < cursor < 12
        await ws.disconnect()

        await database_sync_to_async(drain_queue)()
        again = socket(f"/ws/tasks/{task.pk}/?since={cursor}")
        assert (await again.connect(TIMEOUT))[0]
        snapshot = await again.receive_json_from(TIMEOUT)
        # A snapshot read for another client within one tick is shared: it may show the
        # gather still queued; the frames that follow bring the client up to date.
        assert snapshot["cursor"] == cursor
        assert snapshot["document"]["status"] in ("QUEUED", "SUCCEEDED")
        rest = await frames_until(again, final)
        assert rest[-1]["document"]["status"] == "SUCCEEDED"
        indexes = [e["index"] for e in events_of(first) + events_of(rest)]
        assert sorted(indexes) == list(range(12))
        later = SubTask.objects.filter(parent=task, finish_seq__gt=cursor)
        expected = await database_sync_to_async(set)(later.values_list("index", flat=True))
        assert {e["index"] for e in events_of(rest)} == expected
        assert await close_code(again) == 1000

    run(scenario)
    assert not live._watchers


@pytest.mark.parametrize("who", ["anonymous", "other", "staff", "owner", "viewer"])
def test_owned_task_follows_the_status_page_access_rule(
    client, user, other_user, staff, viewer, who
):
    task = longtask.start("report", {"month": "2026-10"}, owner=user)
    visitors = {"anonymous": None, "other": other_user, "staff": staff, "owner": user}
    visitor = {**visitors, "viewer": viewer}[who]
    cookie = session_cookie(client, visitor) if visitor else ""

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/", cookie=cookie)
        assert (await ws.connect(TIMEOUT))[0]
        if who in ("anonymous", "other", "staff"):  # is_staff alone grants nothing
            assert await close_code(ws) == 4404
        else:
            snapshot = await ws.receive_json_from(TIMEOUT)
            assert snapshot["document"]["id"] == str(task.pk)
            await ws.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ws/tasks/not-a-uuid/", 4404),
        ("/ws/tasks/123/", 4404),
        (f"/ws/tasks/{uuid.UUID(int=7)}/", 4404),
        ("/ws/tasks/{task}/?since=-1", 4400),
        ("/ws/tasks/{task}/?since=abc", 4400),
        ("/ws/tasks/{task}/?since=99999999999", 4400),
    ],
)
def test_bad_ids_and_cursors_are_closed_with_4xxx(path, code):
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(path.replace("{task}", str(task.pk)))
        assert (await ws.connect(TIMEOUT))[0]
        assert await close_code(ws) == code

    run(scenario)


@pytest.mark.parametrize("origin", ["http://evil.example", None])
def test_foreign_or_missing_origin_is_refused(origin):
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/", origin=origin)
        connected, _ = await ws.connect(TIMEOUT)
        assert not connected

    run(scenario)


def test_client_messages_ping_unknown_and_malformed():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)
        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
        await ws.send_json_to({"type": "subscribe", "to": "everything"})
        assert (await ws.receive_json_from(TIMEOUT))["type"] == "error"
        await ws.send_to(text_data=json.dumps(["not", "an", "object"]))
        assert await close_code(ws) == 4400

    run(scenario)


def test_a_socket_s_messages_take_no_hop_to_the_database_thread(monkeypatch):
    """channels' consumers close stale connections before each message, a hop to the one
    database thread each, where the watchers' reads queue behind them; this one does not.
    """
    hops: list[str] = []

    async def counted() -> None:
        hops.append("close_old_connections")

    for module in ("channels.consumer", "channels.generic.websocket"):
        monkeypatch.setattr(f"{module}.aclose_old_connections", counted)
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)
        for _ in range(3):
            await ws.send_json_to({"type": "ping"})
            assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
        await ws.disconnect()

    run(scenario)
    assert hops == []


def test_the_final_status_links_to_the_host_each_socket_used():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        sockets = []
        for host in (b"127.0.0.1", b"localhost"):
            ws = WebsocketCommunicator(
                application,
                f"/ws/tasks/{task.pk}/",
                headers=[(b"host", host), (b"origin", b"http://" + host)],
            )
            assert (await ws.connect(TIMEOUT))[0]
            await ws.receive_json_from(TIMEOUT)
            sockets.append(ws)
        run_ = await database_sync_to_async(claim)(task)
        await database_sync_to_async(states.succeed)(run_, {"rows": []}, None)
        for ws, host in zip(sockets, ("127.0.0.1", "localhost"), strict=True):
            frames = await frames_until(ws, final)
            assert frames[-1]["document"]["status_url"] == f"http://{host}/tasks/{task.pk}/"

    run(scenario)


def test_a_deleted_task_closes_its_sockets_with_4404():
    task = longtask.start("report", {"month": "2026-10"})

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/")
        assert (await ws.connect(TIMEOUT))[0]
        await ws.receive_json_from(TIMEOUT)
        await database_sync_to_async(LongTask.objects.filter(pk=task.pk).delete)()
        assert await close_code(ws) == 4404

    run(scenario)
    assert not live._watchers


# Access re-checked while the socket is open -----------------------------------------------


def lose_nothing(user: Any, client: Any) -> None:
    """The control: nothing changes, so the socket stays open."""


def log_out(user: Any, client: Any) -> None:
    client.logout()


def change_password(user: Any, client: Any) -> None:
    user.set_password("pw-new")  # a new session auth hash: other sessions end
    user.save()


def lose_permission(user: Any, client: Any) -> None:
    user.user_permissions.clear()


@pytest.mark.parametrize("change", [lose_nothing, log_out, change_password, lose_permission])
def test_an_open_socket_closes_4403_when_access_ends(
    client, user, viewer, settings, monkeypatch, change
):

    settings.LONGTASK_LIVE_RECHECK = 0.02
    checks = []
    real = consumers.still_allowed

    def counted(*args: Any) -> bool:
        checks.append(real(*args))
        return checks[-1]

    # raising=False: on a consumer without re-checks the test fails on its own terms (no checks).
    monkeypatch.setattr(consumers, "still_allowed", counted, raising=False)
    task = longtask.start("report", {"month": "2026-10"}, owner=user)  # queued: stays open
    cookie = session_cookie(client, viewer)

    async def scenario() -> None:
        ws = socket(f"/ws/tasks/{task.pk}/", cookie=cookie)
        assert (await ws.connect(TIMEOUT))[0]
        assert (await ws.receive_json_from(TIMEOUT))["type"] == "snapshot"
        await until(lambda: len(checks) >= 2)  # re-checks run and pass before the change
        assert all(checks)
        await database_sync_to_async(change)(viewer, client)
        if change is lose_nothing:
            seen = len(checks)
            await until(lambda: len(checks) >= seen + 3)
            await ws.send_json_to({"type": "ping"})
            assert await ws.receive_json_from(TIMEOUT) == {"type": "pong"}
            await ws.disconnect()
        else:
            assert await close_code(ws) == 4403

    run(scenario)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until ``condition`` holds (fail after TIMEOUT seconds)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_session_check_never_changes_the_session(client, user):
    from django.contrib.sessions.models import Session

    client.force_login(user)
    key = client.cookies["sessionid"].value
    before = Session.objects.get(pk=key).session_data
    assert consumers.session_user(key) == user
    user.set_password("pw-new")
    user.save()
    assert consumers.session_user(key) is None
    assert Session.objects.get(pk=key).session_data == before  # not flushed: HTTP's job
    assert consumers.session_user(None) is None and consumers.session_user("nope") is None

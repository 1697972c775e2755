"""The site's ASGI HTTP path (quiltsite/http.py): a sync middleware chain, long-lived lanes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core import signals

from quiltsite.http import SyncChainASGIHandler, ThreadLanes


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await answered.wait()  # then the client goes away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await app(scope(path), receive, send)
    return sent


def test_the_middleware_chain_runs_sync():
    # An async chain would send every MiddlewareMixin hook to a thread and back.
    assert not iscoroutinefunction(SyncChainASGIHandler()._middleware_chain)


def test_lanes_keep_their_threads_across_requests():
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await sync_to_async(threading.get_ident)())

    lanes = ThreadLanes(app, lanes=2)

    async def requests() -> None:
        for _ in range(4):
            await lanes(scope("/"), None, None)

    asyncio.run(requests())
    assert len(set(seen)) == 1  # one request at a time: always the first lane's thread
    assert threading.get_ident() not in seen
    assert lanes.carrying == [0, 0]


@pytest.mark.django_db(transaction=True)
def test_the_site_answers_through_its_asgi_application():
    from quiltsite.asgi import application

    sent = asyncio.run(call(application, "/no-such-page/"))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 404
    headers = {name.lower() for name, _value in sent[0]["headers"]}
    assert b"content-security-policy" in headers  # the whole chain ran


@pytest.mark.django_db(transaction=True)
def test_a_request_takes_one_trip_to_its_lane():
    """request_started, the chain and view, and request_finished: one call on the lane."""
    lanes = ThreadLanes(SyncChainASGIHandler(), lanes=1)
    executor = lanes.executors[0]
    lane_thread = executor.submit(threading.get_ident).result()
    trips: list[object] = []
    submit = executor.submit

    def counted(*args: Any, **kwargs: Any) -> Any:
        trips.append(args[0])
        return submit(*args, **kwargs)

    executor.submit = counted  # type: ignore[method-assign]
    heard: list[tuple[str, int]] = []

    def started(**kwargs: Any) -> None:
        heard.append(("started", threading.get_ident()))

    def finished(**kwargs: Any) -> None:
        heard.append(("finished", threading.get_ident()))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        sent = asyncio.run(call(lanes, "/no-such-page/"))
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert sent[0]["status"] == 404 and sent[-1]["type"] == "http.response.body"
    assert len(trips) == 1  # Django's own handler makes three
    assert heard == [("started", lane_thread), ("finished", lane_thread)]

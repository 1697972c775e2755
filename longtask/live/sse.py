"""The event-stream twin of the task websocket: ``curl -N`` follows a task from a terminal.

``GET /tasks/<uuid>/events`` answers ``text/event-stream`` under the status page's
access rule (404 for an unknown task and for one the user may not see, as the page)
and sends the websocket's frames (longtask/live/consumers.py), one event each::

    id: 12
    event: subtasks
    data: {"type":"subtasks","cursor":12,"events":[...]}

``event`` is the frame's type; ``id`` is its cursor, on the frames that carry one
(snapshot, subtasks). A client resumes with the last id it saw as ``Last-Event-ID``
(an ``EventSource`` sends it when it reconnects; it wins over the URL) or as
``?since=``: the subtasks finished after that cursor arrive, none twice, none missed.
A ``: keepalive`` comment after HEARTBEAT_SECONDS of silence keeps proxies from
closing an idle stream.

The stream ends after the final status frame, after ``event: gone`` (the task was
deleted) and after ``event: denied`` (a signed-in user's session ended or they lost
the permission to see the task: re-checked every LONGTASK_LIVE_RECHECK seconds, as
the websocket does). An ``EventSource`` reconnects after any end, so a browser
client closes it on those frames. A client that goes away is unsubscribed at once
(the ASGI handler cancels the stream).

It needs an ASGI server (daphne, as ``make run`` serves): a WSGI worker would be held
for as long as the task runs, so there the answer is 501 with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from longtask.conf import settings
from longtask.live import shared
from longtask.live import watcher as live
from longtask.live.cursor import parse_cursor
from longtask.live.follow import Follow, ends
from longtask.live.frames import to_json
from longtask.live.session import still_allowed

logger = logging.getLogger("longtask")

#: Seconds of silence before a ``: keepalive`` comment. Proxies close idle responses
#: after a while (nginx: 60 s by default); a comment is ignored by every client.
HEARTBEAT_SECONDS = 15.0

KEEPALIVE = b": keepalive\n\n"

#: Sent (then the stream ends) when the access re-check fails.
DENIED: live.Frame = {"type": "denied"}

NEEDS_ASGI = (
    "This URL streams a task's events (Server-Sent Events) and needs an ASGI server "
    "such as daphne (`make run`): a WSGI worker would be held for as long as the task runs.\n"
)


@require_GET
async def events(request: HttpRequest, task_id: UUID) -> HttpResponseBase:
    """Stream one task's snapshot and changes as Server-Sent Events."""
    if not isinstance(request, ASGIRequest):
        return HttpResponse(NEEDS_ASGI, status=501, content_type="text/plain; charset=utf-8")
    since = parse_cursor(request.headers.get("Last-Event-ID") or request.GET.get("since"))
    if since is None:
        return HttpResponse(
            "Last-Event-ID and since must be a non-negative integer cursor.\n",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    user = await request.auser()
    snapshot = await shared.snapshot(user, task_id)
    if snapshot is None:
        raise Http404("No such task.")
    snapshot_frame = {"type": "snapshot", "cursor": since, "document": snapshot.document}
    following = Follow(task_id, since, snapshot)
    guard = None
    if user.is_authenticated:
        guard = Guard(request.session.session_key, user.pk, task_id)
    response = StreamingHttpResponse(
        stream(request, snapshot_frame, following, guard), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


class Guard:
    """The access re-check of a signed-in user's stream, every LONGTASK_LIVE_RECHECK seconds."""

    def __init__(self, session_key: str | None, user_pk: Any, task_id: UUID) -> None:
        self.session_key = session_key
        self.user_pk = user_pk
        self.task_id = task_id

    async def allowed(self) -> bool:
        return await database_sync_to_async(still_allowed)(
            self.session_key, self.user_pk, self.task_id
        )


async def stream(
    request: HttpRequest, snapshot: live.Frame, following: Follow, guard: Guard | None
) -> AsyncIterator[bytes]:
    """Yield the snapshot's event, then each frame's, keepalives between, until the end."""
    loop = asyncio.get_running_loop()
    recheck = float(settings.LIVE_RECHECK)
    check_at = loop.time() + recheck if guard is not None else math.inf
    beat_at = loop.time() + HEARTBEAT_SECONDS
    # The pending read survives a timeout: waking for a keepalive or a re-check never
    # cancels it, so a slow read is not started over.
    pending: asyncio.Task[list[live.Frame]] | None = None
    try:
        yield encode(request, snapshot)
        while True:
            if pending is None:
                pending = asyncio.ensure_future(following.next_frames())
            await asyncio.wait({pending}, timeout=max(0.0, min(beat_at, check_at) - loop.time()))
            if pending.done():
                frames, pending = pending.result(), None
                for frame in frames:
                    yield encode(request, frame)
                    if ends(frame):
                        return
                beat_at = loop.time() + HEARTBEAT_SECONDS
            if guard is not None and loop.time() >= check_at:
                if not await guard.allowed():
                    logger.info("LongTask id=%s event stream ended: access ended", guard.task_id)
                    yield encode(request, DENIED)
                    return
                check_at = loop.time() + recheck
            if loop.time() >= beat_at:
                yield KEEPALIVE
                beat_at = loop.time() + HEARTBEAT_SECONDS
    except Exception:
        # Nobody awaits this stream but the server: say why the client stopped hearing.
        logger.exception("event stream of LongTask id=%s stopped", following.task_id)
    finally:
        if pending is not None:
            pending.cancel()
        following.stop()


def encode(request: HttpRequest, frame: live.Frame) -> bytes:
    """Return ``frame`` as one Server-Sent Event (JSON on one ``data`` line)."""
    head = f"id: {frame['cursor']}\n" if "cursor" in frame else ""
    # ASCII, no newline: one line. The document's link made absolute, as the JSON
    # endpoint and the websocket make it.
    data = to_json(frame, f"{request.scheme}://{request.get_host()}")
    return f"{head}event: {frame['type']}\ndata: {data}\n\n".encode()

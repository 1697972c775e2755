"""The websocket twin of the status page: a snapshot, then every change, then the end.

``ws://HOST/ws/tasks/<uuid>/?since=N`` follows one task under the status page's
access rule. Frames sent by the server (JSON text):

- ``{"type": "snapshot", "cursor": N, "document": {...}}``: first, the JSON status
  document (as ``/tasks/<uuid>.json``); ``cursor`` is where subtask events resume.
- ``{"type": "subtasks", "cursor": C, "events": [{"type": "subtask", "index": i,
  "status": "SUCCEEDED"|"FAILED", "result": ..., "error": ...}, ...]}``: subtasks
  finished after the previous cursor, in finishing order (the finished ones before
  the connection come first, in pages). Reconnecting with ``?since=C`` misses none.
- ``{"type": "progress", "progress": {current, total, percent, message},
  "eta_seconds": x}``: the shared progress payload, when it changes.
- ``{"type": "status", "status": S, "final": bool, "document": {...}}``: the status
  changed. The final one (SUCCEEDED, FAILED, CANCELLED) always comes last, after every
  subtask event; the server then closes with 1000.
- ``{"type": "pong"}`` answers ``{"type": "ping"}``; ``{"type": "error", "error": ...}``
  answers a message of an unknown type.

Close codes: 4404 for an unknown or malformed id and for a task the user may not see
(the same code, so ids cannot be probed; the task being deleted too), 4400 for a
malformed ``since`` or a client message that is not a JSON object with a ``type``
(or is over 4 KiB), 4403 when a signed-in user's session ended (logout, password
change) or they lost the permission to see the task: checked every LONGTASK_LIVE_RECHECK
seconds, since a socket may stay open for hours after the one check at connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from longtask.conf import settings
from longtask.live import shared
from longtask.live import watcher as live
from longtask.live.cursor import parse_cursor
from longtask.live.follow import Follow, ends
from longtask.live.frames import to_json
from longtask.live.session import session_user as session_user  # its old home
from longtask.live.session import still_allowed

if TYPE_CHECKING:
    from asgiref.typing import WebSocketDisconnectEvent

    from longtask.guards.access import AnyUser

logger = logging.getLogger("longtask")

NOT_FOUND = 4404
BAD_REQUEST = 4400
#: The session ended or the permission was lost: the client should not reconnect.
SIGNED_OUT = 4403
#: Longest client message read; clients only send pings, so anything longer is malformed.
MAX_MESSAGE_LENGTH = 4096


def parse_since(query_string: bytes) -> int | None:
    """Return the ``since`` cursor of a query string (0 if absent), or None if malformed."""
    try:
        values = parse_qs(query_string.decode("ascii"), strict_parsing=False).get("since")
    except UnicodeDecodeError:
        return None
    return parse_cursor(values[-1] if values else None)


class TaskConsumer(AsyncWebsocketConsumer):
    """Sends one task's snapshot and changes to one websocket client."""

    # No channel of its own: the task's watcher listens to the channel layer for all the
    # sockets of this process (longtask/live/listener.py). channels gives a consumer no
    # channel when its alias names no layer (the stubs say it must be a string).
    channel_layer_alias = None  # type: ignore[assignment]
    pump: asyncio.Task[None] | None = None
    guard: asyncio.Task[None] | None = None
    following: Follow | None = None

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle one ASGI message, without channels' database hop before each.

        channels closes stale database connections before every message (and again when
        a socket closes), each a hop to the one thread that runs database work: when a
        quilt's 1,000 sockets closed together, 2,000 hops queued before the other tasks'
        reads there. No handler here touches the database but through
        ``database_sync_to_async``, which closes stale connections around each call.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        # As channels' own, less its hop (see dispatch); a consumer here joins no group.
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def connect(self) -> None:
        # Accept first: a refusal before accepting reaches the client as a bare 403,
        # without the close code that tells it not to retry.
        await self.accept()
        try:
            task_id = uuid.UUID(self.scope["url_route"]["kwargs"]["task_id"])
        except ValueError:
            await self.close(NOT_FOUND)
            return
        since = parse_since(self.scope.get("query_string", b""))
        if since is None:
            await self.close(BAD_REQUEST)
            return
        user = cast("AnyUser | None", self.scope.get("user")) or AnonymousUser()
        snapshot = await shared.snapshot(user, task_id)
        if snapshot is None:
            await self.close(NOT_FOUND)
            return
        self.task_id = task_id
        await self.send_frame({"type": "snapshot", "cursor": since, "document": snapshot.document})
        loop = asyncio.get_running_loop()
        self.pump = loop.create_task(self.follow(since, snapshot))
        if user.is_authenticated:
            session = self.scope.get("session")
            session_key = session.session_key if session is not None else None
            self.guard = loop.create_task(self.recheck(session_key, user.pk))

    async def recheck(self, session_key: str | None, user_pk: Any) -> None:
        """Close with 4403 once the session ends or the permission to see the task is lost."""
        try:
            while True:
                await asyncio.sleep(float(settings.LIVE_RECHECK))
                allowed = await database_sync_to_async(still_allowed)(
                    session_key, user_pk, self.task_id
                )
                if not allowed:
                    logger.info("LongTask id=%s websocket closed: access ended", self.task_id)
                    await self.close(SIGNED_OUT)
                    return
        except Exception:
            logger.exception("access re-check of LongTask id=%s failed", self.task_id)
            with contextlib.suppress(Exception):
                await self.close(1011)

    async def follow(self, cursor: int, snapshot: live.State) -> None:
        """Send the subtasks finished so far, then what the task's watcher finds."""
        self.following = Follow(self.task_id, cursor, snapshot)
        try:
            while True:
                for frame in await self.following.next_frames():
                    if frame is live.GONE:
                        await self.close(NOT_FOUND)
                        return
                    await self.send_frame(frame)
                    if ends(frame):
                        await self.close(1000)
                        return
        except Exception:
            # Nobody awaits this task: say why the client stopped hearing, then close.
            logger.exception("live updates of LongTask id=%s stopped", self.task_id)
            with contextlib.suppress(Exception):  # the socket may be what failed
                await self.close(1011)
        finally:
            self.following.stop()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = None
        if text_data is not None and len(text_data) <= MAX_MESSAGE_LENGTH:
            # RecursionError: deeply nested arrays stop the decoder without a ValueError.
            with contextlib.suppress(ValueError, RecursionError):
                message = json.loads(text_data)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.close(BAD_REQUEST)
            return
        if message["type"] == "ping":
            await self.send_frame({"type": "pong"})
        else:
            await self.send_frame({"type": "error", "error": "unknown message type"})

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.guard is not None:
            self.guard.cancel()
        if self.following is not None:
            self.following.stop()

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket and stop following the task."""
        for task in (self.pump, self.guard):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await super().close(code, reason)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=to_json(frame, self.origin()))

    def origin(self) -> str:
        """Return where the client reached us ("http://host"), for absolute links; or ""."""
        try:
            return self._origin
        except AttributeError:
            host = dict(self.scope.get("headers", [])).get(b"host", b"").decode("latin1")
            scheme = "https" if self.scope.get("scheme") == "wss" else "http"
            self._origin: str = f"{scheme}://{host}" if host else ""
            return self._origin

"""How the site serves HTTP under ASGI: each request's sync work in one thread hop, on
one of a few threads that live as long as the process.

Django's ASGI handler runs its middleware chain async. Every ``MiddlewareMixin``
(Django's own) then sends each of its hooks to a thread and back
(``sync_to_async(self.process_request)``...), a dozen hops for the site's chain, and each
request gets a thread made for it and joined after it, which opens a database
connection of its own, so CONN_MAX_AGE keeps nothing. Measured with bench/web.py
(docs/benchmarks.md, 2026-12-05). Here the chain runs sync, as under WSGI, in one hop
per request; async views (the Server-Sent Events) still run, Django adapting them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix

#: Threads per process. CPU-bound work gains nothing from more (one thread runs at a
#: time under the GIL); a few let a slow request (a lock wait, a big page) leave the
#: other lanes free. A request takes the lane carrying the fewest.
LANES = 4


class _Processed(Exception):
    """The response is sent: ends the request's task group (as Django's handler does)."""


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler with a request's sync work in one thread hop.

    Django's own makes three per request: the ``request_started`` receivers, the
    middleware chain and view, and ``response.close()`` (the ``request_finished``
    receivers), each a trip to a thread and back, about 0.3 ms of CPU apiece here. Here
    the three run in one call: the signal, then the chain and view (sync, as under
    WSGI), then, for a response whose body is already in memory, its ``close()``, before
    its bytes are sent. A streaming response (a download, the Server-Sent Events) is
    closed after it is sent, as Django does. The rest is Django's ``handle``: the body
    read first, a disconnect while the view runs ends the wait for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    def respond(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        """The request's sync part: started, answered and (unless streaming) finished."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        assert response is not None
        if not response.streaming:
            response.close()
        return response

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self.listen_for_disconnect(receive))
                        respond = sync_to_async(self.respond, thread_sensitive=True)
                        response = await respond(scope, body_file)
                        await self.send_response(response, send)
                        raise _Processed
                except* (_Processed, RequestAborted):
                    pass
            except BaseExceptionGroup as group_error:
                if len(group_error.exceptions) == 1:
                    raise group_error.exceptions[0] from None
                raise
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            elif response.streaming:
                await sync_to_async(response.close)()


class ThreadLanes:
    """ASGI middleware: run each HTTP request's thread-sensitive code on a lane's thread.

    A lane may carry several requests at once, their sync calls taking turns on its
    thread, as every request did before Django gave each its own (asgiref < 3.3): no
    transaction spans two sync calls, since a request's middleware and view run in one.
    """

    def __init__(self, app: Any, lanes: int = LANES) -> None:
        self.app = app
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-lane-{i}")
            for i in range(lanes)
        ]
        self.carrying = [0] * lanes  # requests on each lane (one event loop: no lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        lane = min(range(len(self.carrying)), key=self.carrying.__getitem__)
        self.carrying[lane] += 1
        try:
            async with ThreadSensitiveContext(executor=self.executors[lane]):
                await self.app(scope, receive, send)
        finally:
            self.carrying[lane] -= 1

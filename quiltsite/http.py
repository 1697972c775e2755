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

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

#: Threads per process. CPU-bound work gains nothing from more (one thread runs at a
#: time under the GIL); a few let a slow request (a lock wait, a big page) leave the
#: other lanes free. A request takes the lane carrying the fewest.
LANES = 4


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain and view run sync, in one call."""

    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


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

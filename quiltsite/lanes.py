"""A few long-lived threads for the sync part of HTTP requests under ASGI.

Django's ASGI handler runs each request's sync code (middleware, views, the ORM) on a
thread made for that request and joined after it, and every such thread opens a
database connection of its own (connections belong to a thread), so CONN_MAX_AGE keeps
nothing. ThreadLanes gives every request one of a few threads that live as long as the
process and keep their connections; a lane may carry several requests at once, their
sync calls taking turns on its thread, as all requests did before Django gave each its
own (asgiref < 3.3). No transaction spans two sync calls: a view runs in one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext

#: Threads per process. CPU-bound work gains nothing from more (one thread runs at a
#: time under the GIL); a few let a slow request (a lock wait, a big page) leave the
#: other lanes free. A request takes the lane carrying the fewest.
LANES = 4


class ThreadLanes:
    """ASGI middleware: run each HTTP request's thread-sensitive code on a lane's thread."""

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

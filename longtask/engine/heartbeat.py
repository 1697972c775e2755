"""A background heartbeat for a running task or chunk of subtasks."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from django.db import connection

from longtask.conf import settings

logger = logging.getLogger("longtask")


class Heartbeat:
    """Calls ``beat()`` every HEARTBEAT_INTERVAL seconds in a thread while the block runs.

    ``beat`` returns False when the work should stop (e.g. the task was cancelled);
    ``stopped`` is then set, and the task's code sees it at its next ``progress()``.
    """

    def __init__(self, beat: Callable[[], bool], interval: float | None = None) -> None:
        self.beat = beat
        self.interval = settings.HEARTBEAT_INTERVAL if interval is None else interval
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="longtask-heartbeat", daemon=True)

    def _run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    if not self.beat():
                        self.stopped.set()
                except Exception:  # a missed beat is not fatal; the next one may succeed
                    logger.exception("heartbeat failed")
                    # The connection may be broken (a database restart): the next beat
                    # opens a new one rather than failing on this one forever.
                    connection.close()
        finally:
            connection.close()  # this thread's own database connection

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()


def node_name() -> str:
    """This worker's name in the ``worker`` columns: LONGTASK_NODE, else host:pid."""
    return settings.NODE or f"{socket.gethostname()}:{os.getpid()}"

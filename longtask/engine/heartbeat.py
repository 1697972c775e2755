"""A background heartbeat for a running task or chunk of subtasks."""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from django.db import close_old_connections, connection

from longtask.conf import settings

logger = logging.getLogger("longtask")


class Heartbeat:
    """Calls ``beat()`` every HEARTBEAT_INTERVAL seconds while the block runs.

    ``beat`` returns False when the work should stop (e.g. the task was cancelled);
    ``stopped`` is then set, and the task's code sees it at its next ``progress()``.
    The beats of every block in a process run on one long-lived thread (``_Beater``):
    a thread started and joined per run cost about 3 ms, more than a no-op task's work.
    """

    def __init__(self, beat: Callable[[], bool], interval: float | None = None) -> None:
        self.beat = beat
        self.interval = settings.HEARTBEAT_INTERVAL if interval is None else interval
        self.stopped = threading.Event()
        self.active = False

    def __enter__(self) -> Heartbeat:
        self.active = True
        _beater().add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _beater().remove(self)

    def _beat(self) -> None:
        try:
            if not self.beat():
                self.stopped.set()
        except Exception:  # a missed beat is not fatal; the next one may succeed
            logger.exception("heartbeat failed")
            # The connection may be broken (a database restart): the next beat
            # opens a new one rather than failing on this one forever.
            connection.close()


class _Beater:
    """The process's heartbeat thread: beats each active block when it is due."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Heartbeat]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._beating: Heartbeat | None = None
        #: When the thread, asleep, wakes by itself (-inf while it is awake).
        self._wake_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name="longtask-heartbeat", daemon=True)
        self._thread.start()

    def add(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            entry = (time.monotonic() + heartbeat.interval, next(self._order), heartbeat)
            heapq.heappush(self._due, entry)
            # Woken only when this beat is due before the thread wakes anyway: a wake-up
            # per run (two switches of the GIL) cost quick tasks a few percent.
            if entry[0] < self._wake_at:
                self._changed.notify()

    def remove(self, heartbeat: Heartbeat) -> None:
        """Stop beating ``heartbeat``; wait for a beat of it in progress to end."""
        with self._changed:
            heartbeat.active = False
            self._due = [entry for entry in self._due if entry[2] is not heartbeat]
            heapq.heapify(self._due)
            while self._beating is heartbeat:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    # Idle, it wakes every HEARTBEAT_INTERVAL: a block added meanwhile with
                    # that interval is due after it, so its ``add`` need not wake it.
                    now = time.monotonic()
                    timeout = self._due[0][0] - now if self._due else settings.HEARTBEAT_INTERVAL
                    self._wake_at = now + timeout
                    self._changed.wait(timeout)
                    self._wake_at = float("-inf")
                _, _, heartbeat = heapq.heappop(self._due)
                self._beating = heartbeat
            try:
                heartbeat._beat()
                _tidy_connections()
            finally:
                with self._changed:
                    self._beating = None
                    if heartbeat.active:
                        entry = (
                            time.monotonic() + heartbeat.interval,
                            next(self._order),
                            heartbeat,
                        )
                        heapq.heappush(self._due, entry)
                    self._changed.notify_all()


def _tidy_connections() -> None:
    """Like a request's end: a connection past CONN_MAX_AGE (0 in the tests, whose database
    must be droppable) is closed; a persistent one is kept.

    Never raises: Django checks the connection first (it reconnects to ask), so with the
    database away this raised, and the thread ended with it: no run of the process beat
    again, and the sweeper took each for lost after STALE_AFTER.
    """
    try:
        close_old_connections()
    except Exception:
        with contextlib.suppress(Exception):
            connection.close()  # the next beat opens a new one


_lock = threading.Lock()
_instance: dict[int, _Beater] = {}


def _beater() -> _Beater:
    """This process's beater (a forked worker process starts its own)."""
    pid = os.getpid()
    with _lock:
        if pid not in _instance:
            _instance.clear()
            _instance[pid] = _Beater()
        return _instance[pid]


def node_name() -> str:
    """This worker's name in the ``worker`` columns: LONGTASK_NODE, else host:pid."""
    return settings.NODE or _host_pid(os.getpid())


@functools.cache
def _host_pid(pid: int) -> str:  # keyed by pid: a forked worker gets its own
    return f"{socket.gethostname()}:{pid}"

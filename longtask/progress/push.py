"""Workers tell the web processes that a task changed, through the channel layer.

With a channel layer that crosses processes (channels_redis, when REDIS_URL is set),
every change a worker records (a batch of finished subtasks, a progress write, a
status change) sends one small "changed" message to the task's group; the web
process's watcher of that task (longtask/live.py) then reads the task at once
instead of at its next poll. The message carries no data: what the page shows is
always read from the database and the cache, so a lost message only delays an update
until the watcher's fallback read. Without a channel layer this does nothing.

Only watched tasks are pushed. A web process's listener marks its task watched in the
cache (``mark_watched``, renewed while it listens) before it joins the group, and its
watcher reads the task only after joining. A worker looks for the marks after the
change has committed, just before the message would leave (one read for the messages
leaving together): a mark it does not find was made later, so that watcher's first read
comes after the change. Most tasks are never watched, and a message to a group of no
one still cost the worker two Redis round trips through channels_redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from functools import cache
from uuid import UUID

from channels.layers import BaseChannelLayer, get_channel_layer
from django.core.cache import BaseCache, caches

from longtask.conf import settings
from longtask.progress import local

logger = logging.getLogger("longtask")

#: The message type; a consumer of the group would handle it as ``longtask_changed``.
CHANGED = {"type": "longtask.changed"}


def group_name(task_id: UUID | str) -> str:
    """The channel-layer group of one task (letters, digits and dots only)."""
    return f"longtask.task.{UUID(str(task_id)).hex}"


@cache
def _layer() -> BaseChannelLayer | None:
    layer = get_channel_layer()
    # The in-memory layer stays inside one process: the web process polls instead.
    if layer is None or type(layer).__name__ == "InMemoryChannelLayer":
        return None
    return layer


def enabled() -> bool:
    """Say whether changes are pushed through a channel layer (one that crosses processes)."""
    return _layer() is not None


def pushed() -> bool:
    """Say whether changes are pushed at all: by the channel layer, or on this machine."""
    return enabled() or local.enabled()


#: How long one message may take to be sent before the sender gives up on it.
SEND_TIMEOUT = 5.0
#: Messages waiting or being sent at most, per process: past this, a change's message
#: is dropped (a message is a hint; the watchers' fallback read still sees the change).
MAX_WAITING = 1000
#: Seconds a change's message waits before it leaves, so that the changes of those
#: seconds share it: a quick task's claim and finish (2-3 ms apart for a no-op) are one
#: message, not two. A send costs the worker about 1.3 ms of CPU through channels_redis
#: (two round trips and a script), as much as the task's own database work. It was 20
#: ms: a fifth of a watched event's time to its sockets (issue 15's 100 ms, p95).
SEND_DELAY = 0.005

#: Seconds a watcher's mark lasts; its listener renews it every third of that. A mark
#: outlives its watcher by at most this long: its task is pushed to no one meanwhile.
WATCH_TTL = 60
#: How long the messages that became due wait for each other, to share one read of marks.
GATHER_DELAY = 0.002

_loops: dict[int, asyncio.AbstractEventLoop] = {}
_loops_lock = threading.Lock()
#: Tasks whose message waits to be sent, those whose delay is over, and the sends under
#: way (the loop's thread only).
_waiting: set[str] = set()
_due: list[str] = []
_sends: set[asyncio.Task[None]] = set()


def watched_key(task_id: UUID | str) -> str:
    """The cache key that says someone watches ``task_id``."""
    return f"longtask:watched:{UUID(str(task_id)).hex}"


@cache
def _marks_shared() -> bool:
    """Whether a mark made by a web process is seen by the workers (the progress cache
    is shared, as progress needs): not with a cache that lives in one process."""
    backend = type(caches[settings.CACHE_ALIAS]).__name__
    return backend not in {"LocMemCache", "DummyCache"}


async def mark_watched(task_id: UUID | str) -> None:
    """Say, for WATCH_TTL seconds, that someone watches ``task_id`` (before joining its group)."""
    await caches[settings.CACHE_ALIAS].aset(watched_key(task_id), 1, WATCH_TTL)


@cache
def _marks_cache(pid: int) -> BaseCache:
    """The sender loop's own cache object (``caches[...]`` in a coroutine's context is a
    new object, with a new connection, each time)."""
    return caches.create_connection(settings.CACHE_ALIAS)


def _watched(task_ids: list[str]) -> list[str]:
    """Those of ``task_ids`` that someone watches, by one read of the cache."""
    if not _marks_shared():
        return task_ids
    try:
        marks = _marks_cache(os.getpid()).get_many([watched_key(i) for i in task_ids])
    except Exception:  # the cache away: send them all, as before marks
        logger.warning("could not read the watched marks; pushing anyway", exc_info=True)
        return task_ids
    return [task_id for task_id in task_ids if watched_key(task_id) in marks]


def _sender_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for sending, run by a daemon thread.

    One loop for the life of the process, so the channel layer's connection pool (kept
    per loop) is reused: ``async_to_sync`` made a new loop, hence a new Redis
    connection, for every message, which cost a worker more than its database writes.
    Keyed by process id: a forked worker starts its own.
    """
    pid = os.getpid()
    with _loops_lock:
        loop = _loops.get(pid)
        if loop is None:
            loop = asyncio.new_event_loop()
            name = f"longtask-push-{pid}"
            threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
            _loops.clear()  # a parent's loop, copied by fork, has no thread here
            _waiting.clear()
            _due.clear()
            _sends.clear()
            _loops[pid] = loop
        return loop


def notify(task_id: UUID | str) -> None:
    """Tell the watchers of ``task_id`` that it changed; never raises, never waits.

    The message is sent by this process's sender loop, ``SEND_DELAY`` after the change.
    Changes of one task that come before its message leaves share it: a watcher reads
    the task when the message arrives, so it sees every change committed before the
    send began (a claim and the finish of a quick task cost one message, not two). A
    change after that sends anew.
    """
    layer = _layer()
    if layer is None:  # no channel layer: this machine's web processes, if any listen
        local.notify(task_id)
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
        _sender_loop().call_soon_threadsafe(_schedule, layer, str(task_id))


def _schedule(layer: BaseChannelLayer, task_id: str) -> None:
    if task_id in _waiting:
        return  # its message has not left yet: it covers this change too
    if len(_sends) + len(_waiting) >= MAX_WAITING:
        logger.warning("%s pushes under way; LongTask id=%s not pushed", MAX_WAITING, task_id)
        return
    _waiting.add(task_id)
    asyncio.get_running_loop().call_later(SEND_DELAY, _start, layer, task_id)


def _start(layer: BaseChannelLayer, task_id: str) -> None:
    _due.append(task_id)
    if len(_due) == 1:
        asyncio.get_running_loop().call_later(GATHER_DELAY, _flush, layer)


def _flush(layer: BaseChannelLayer) -> None:
    """Send the messages that are due, to the tasks someone watches."""
    due = list(_due)
    _due.clear()
    _waiting.difference_update(due)  # from here on, a new change needs a new message
    loop = asyncio.get_running_loop()
    for task_id in _watched(due):
        send = loop.create_task(_send(layer, task_id))
        _sends.add(send)  # the loop keeps only a weak reference to its tasks
        send.add_done_callback(_sends.discard)


async def _send(layer: BaseChannelLayer, task_id: str) -> None:
    try:
        await asyncio.wait_for(layer.group_send(group_name(task_id), dict(CHANGED)), SEND_TIMEOUT)
    except Exception:  # Redis away: the watchers' fallback reads still see the change
        logger.warning("could not push a change of LongTask id=%s", task_id, exc_info=True)

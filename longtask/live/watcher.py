"""Live updates for every client of a task: one watcher per watched task per web process.

One ``Watcher`` per watched task reads the task's row, its progress record and the
subtasks finished since the lowest cursor of its subscribers (one or two queries
per tick, whatever the number of subscribers), and pushes frames onto each
subscriber's queue. Each subscriber has its own cursor, so a slow client gets
bigger frames later, never fewer events. Subscribers that had been sent the same
get the same frames, built and encoded once.

When a tick happens: when a worker says the task changed, at most once per
LONGTASK_LIVE_PUSH_INTERVAL, so a burst of changes is coalesced into one read; and every
LONGTASK_LIVE_FALLBACK seconds in case a message was lost. The watcher's listener
(``longtask.live.listener``) hears the workers: through the channel layer when one
crosses processes (channels_redis; longtask/progress/push.py), else, on SQLite, through
this machine's datagrams (longtask/progress/local.py). Without either (or while the
listener is failing), every LONGTASK_LIVE_INTERVAL seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async

from longtask.conf import settings
from longtask.live.frames import (
    GONE,
    MAX_SUBTASKS_PER_TICK,
    Frame,
    SharedFrame,
    coalesce,
    progress_frame,
    status_frame,
    subtasks_frame,
)
from longtask.live.listener import Listener, LocalListener
from longtask.live.reads import State, read_snapshot, read_subtasks, read_tick
from longtask.progress import local, push

logger = logging.getLogger("longtask")

#: At most this long (seconds) a new watcher's first read waits for its subscription.
SUBSCRIBE_WAIT = 1.0


def live_interval() -> float:
    """Return the seconds between two reads of a watched task."""
    return float(settings.LIVE_INTERVAL)


@dataclass(eq=False)
class Subscriber:
    """One consumer's view of a watched task: what it has been sent so far."""

    task_id: UUID
    cursor: int
    status: str
    progress: tuple[Any, Any] | None = None
    queue: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    #: The final status (or GONE) has been queued; nothing follows it.
    closed: bool = False


@dataclass
class Delivery:
    """What one read adds for the subscribers that had been sent the same: frames, and after."""

    frames: list[Frame]
    cursor: int
    status: str
    progress: tuple[Any, Any] | None
    closed: bool

    def apply(self, subscriber: Subscriber) -> None:
        subscriber.cursor, subscriber.status = self.cursor, self.status
        subscriber.progress, subscriber.closed = self.progress, self.closed
        for frame in self.frames:
            subscriber.queue.put_nowait(frame)


def delivery(subscriber: Subscriber, state: State | None) -> Delivery:
    """Return what ``state`` adds to what ``subscriber`` has been sent."""
    if state is None:
        return Delivery([GONE], subscriber.cursor, subscriber.status, subscriber.progress, True)
    frames: list[Frame] = []
    events = [event for seq, event in state.events if seq > subscriber.cursor]
    cursor = max(subscriber.cursor, state.events_upto, *(s for s, _ in state.events))
    if events:
        frames.append(SharedFrame(subtasks_frame(events, cursor)))
    shown = subscriber.progress
    if (state.progress, state.eta_seconds) != shown:
        shown = (state.progress, state.eta_seconds)
        frames.append(SharedFrame(progress_frame(state.progress, state.eta_seconds)))
    status, closed = subscriber.status, False
    if state.finished and cursor >= state.subtask_cursor:
        frames.append(SharedFrame(status_frame(state.status, state.document)))
        closed = True
    elif state.status != subscriber.status and not state.finished:
        status = state.status
        frames.append(SharedFrame(status_frame(state.status, state.document)))
    return Delivery(frames, cursor, status, shown, closed)


class Watcher:
    """Follows one task for all its subscribers, one read per tick."""

    def __init__(self, task_id: UUID) -> None:
        self.task_id = task_id
        #: In joining order (a dict: leaving is O(1) with a thousand subscribers).
        self.subscribers: dict[Subscriber, None] = {}
        self.loop = asyncio.get_running_loop()
        self.reads = 0
        self.changed = asyncio.Event()
        #: Listens to the workers' pushes, if they push (a channel layer crosses processes).
        self.listener: Listener | LocalListener | None = None
        if push.enabled():
            self.listener = Listener(task_id, self.changed)
        elif local.enabled():
            self.listener = LocalListener(task_id, self.changed)
        self.runner = self.loop.create_task(self.run(), name=f"longtask-live-{task_id}")

    async def run(self) -> None:
        try:
            if self.listener is not None:
                # A read before the subscription would miss a push between the two.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.listener.ready.wait(), SUBSCRIBE_WAIT)
            while self.subscribers:
                began = time.monotonic()
                self.changed.clear()
                try:
                    await self.tick()
                except Exception:
                    # A database hiccup must not end the watch: the next tick reads again.
                    logger.exception("live watcher of LongTask id=%s failed a tick", self.task_id)
                if not self.subscribers:
                    break
                await self.wait_for_change(began)
        finally:
            if self.listener is not None:
                self.listener.stop()
            if _watchers.get(self.task_id) is self:
                del _watchers[self.task_id]

    async def wait_for_change(self, began: float) -> None:
        """Sleep until the next tick is due: the poll interval, or a push (coalesced)."""
        interval = live_interval()
        if self.listener is None or not self.listener.subscribed:
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))
            return
        fallback = float(settings.LIVE_FALLBACK) - (time.monotonic() - began)
        try:
            await asyncio.wait_for(self.changed.wait(), max(0.0, fallback))
        except TimeoutError:
            return
        # Changes arriving during the rest of the interval are read by the same tick.
        gap = float(settings.LIVE_PUSH_INTERVAL)
        await asyncio.sleep(max(0.0, gap - (time.monotonic() - began)))

    async def tick(self) -> None:
        # Subscribers joining during the read are served from the next tick, whose
        # low cursor takes theirs into account.
        subscribers = list(self.subscribers)
        low = min(s.cursor for s in subscribers)
        known = {s.status for s in subscribers}
        state = await database_sync_to_async(read_tick)(self.task_id, low, known)
        self.reads += 1
        shared: dict[tuple[int, str], list[tuple[Any, Delivery]]] = {}
        for subscriber in subscribers:
            if subscriber in self.subscribers:
                self.deliver(subscriber, state, shared)
                if subscriber.closed:
                    del self.subscribers[subscriber]

    def deliver(
        self,
        subscriber: Subscriber,
        state: State | None,
        shared: dict[tuple[int, str], list[tuple[Any, Delivery]]] | None = None,
    ) -> None:
        """Queue for ``subscriber`` what ``state`` adds to what it has been sent.

        ``shared`` holds this tick's deliveries so far by what their subscribers had been
        sent (cursor, status, then progress): the same frames serve them all.
        """
        seen = (subscriber.cursor, subscriber.status)
        same = shared.setdefault(seen, []) if shared is not None else []
        for shown, found in same:
            if shown == subscriber.progress:
                found.apply(subscriber)
                return
        made = delivery(subscriber, state)
        same.append((subscriber.progress, made))
        made.apply(subscriber)


_watchers: dict[UUID, Watcher] = {}


def watcher_of(task_id: UUID) -> Watcher | None:
    """Return the running watcher of a task, if any."""
    return _watchers.get(task_id)


def subscribe(
    task_id: UUID, *, cursor: int, status: str, shown: tuple[Any, Any] | None = None
) -> Subscriber:
    """Follow ``task_id`` from ``cursor``; frames arrive on the returned subscriber's queue."""
    subscriber = Subscriber(task_id=task_id, cursor=cursor, status=status, progress=shown)
    watcher = _watchers.get(task_id)
    loop = asyncio.get_running_loop()
    if watcher is None or watcher.loop is not loop or watcher.runner.done():
        watcher = _watchers[task_id] = Watcher(task_id)
    watcher.subscribers[subscriber] = None
    return subscriber


def unsubscribe(subscriber: Subscriber) -> None:
    """Stop following; the watcher stops with its last subscriber."""
    watcher = _watchers.get(subscriber.task_id)
    if watcher is None or subscriber not in watcher.subscribers:
        return
    del watcher.subscribers[subscriber]
    if not watcher.subscribers:
        del _watchers[subscriber.task_id]
        watcher.runner.cancel()


__all__ = [
    "GONE",
    "MAX_SUBTASKS_PER_TICK",
    "Frame",
    "State",
    "Subscriber",
    "Watcher",
    "coalesce",
    "progress_frame",
    "read_snapshot",
    "read_subtasks",
    "read_tick",
    "status_frame",
    "subscribe",
    "subtasks_frame",
    "unsubscribe",
    "watcher_of",
]

"""Live updates for websocket clients: one watcher per watched task per web process.

One ``Watcher`` per watched task reads the task's row, its progress record and the
subtasks finished since the lowest cursor of its subscribers (one or two queries
per tick, whatever the number of subscribers), and pushes frames onto each
subscriber's queue. Each subscriber has its own cursor, so a slow client gets
bigger frames later, never fewer events.

When a tick happens: without a channel layer that crosses processes (the embedded
default), every LONGTASK_LIVE_INTERVAL seconds. With one (channels_redis), the
watcher joins the task's group and ticks when a worker says the task changed
(longtask/push.py), at most once per LONGTASK_LIVE_PUSH_INTERVAL, so a burst of
changes is coalesced into one read; it also reads every LONGTASK_LIVE_FALLBACK
seconds in case a message was lost.
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
from channels.layers import get_channel_layer

from longtask import progress
from longtask.conf import settings
from longtask.documents import StatusDocument, status_document, subtask_events
from longtask.guards.access import can_view
from longtask.live.frames import (
    GONE,
    MAX_SUBTASKS_PER_TICK,
    Frame,
    coalesce,
    status_frame,
    subtasks_frame,
)
from longtask.models import LongTask
from longtask.progress import ProgressPayload, push

logger = logging.getLogger("longtask")


def live_interval() -> float:
    """Return the seconds between two reads of a watched task."""
    return float(settings.LIVE_INTERVAL)


@dataclass
class State:
    """What one read of a task found (the snapshot, or one tick of a watcher)."""

    status: str
    finished: bool
    subtask_cursor: int
    progress: ProgressPayload
    eta_seconds: int | None
    #: (finish_seq, subtask event), in finishing order.
    events: list[tuple[int, Frame]] = field(default_factory=list)
    #: The cursor these events bring a reader to: the last one's place, or the task's
    #: cursor when they are all there is (a retry frees places, so a gap is no event).
    events_upto: int = 0
    document: StatusDocument | None = None


def _read_events(task_id: Any, after: int, upto: int, limit: int) -> list[tuple[int, Frame]]:
    return [
        (seq, {"type": "subtask", **event})
        for seq, event in subtask_events(task_id, after, upto, limit)
    ]


def _state(task: LongTask, *, with_document: bool) -> State:
    record = task.progress_record()
    eta = None if task.is_finished else progress.eta_seconds(record, time.time())
    document = None
    if with_document:
        document = status_document(task, record, status_url=task.get_absolute_url())
    return State(
        status=task.status,
        finished=task.is_finished,
        subtask_cursor=task.subtask_cursor,
        progress=progress.payload(record),
        eta_seconds=eta,
        document=document,
    )


def read_snapshot(user: Any, task_id: UUID) -> State | None:
    """Return the task's state with its status document, or None if ``user`` may not see it."""
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None or not can_view(user, task):
        return None
    return _state(task, with_document=True)


def read_subtasks(task_id: UUID, after: int, upto: int) -> list[tuple[int, Frame]]:
    """Return one page of the subtasks finished in the cursor range (after, upto]."""
    return _read_events(task_id, after, upto, MAX_SUBTASKS_PER_TICK)


def read_tick(task_id: UUID, low: int, known: set[str]) -> State | None:
    """Read the row, its progress and the subtasks finished after ``low``; None if gone.

    The status document (one more query for a fan-out) is built only when some
    subscriber has not seen the current status (``known`` holds what they have seen).
    """
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None:
        return None
    state = _state(task, with_document=task.is_finished or known != {task.status})
    if task.subtask_cursor > low:
        state.events = _read_events(task_id, low, task.subtask_cursor, MAX_SUBTASKS_PER_TICK)
    full = len(state.events) == MAX_SUBTASKS_PER_TICK
    state.events_upto = state.events[-1][0] if full else task.subtask_cursor
    return state


def progress_frame(state: State) -> Frame:
    return {"type": "progress", "progress": state.progress, "eta_seconds": state.eta_seconds}


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


class Watcher:
    """Follows one task for all its subscribers, one read per tick."""

    def __init__(self, task_id: UUID) -> None:
        self.task_id = task_id
        self.subscribers: list[Subscriber] = []
        self.loop = asyncio.get_running_loop()
        self.reads = 0
        self.changed = asyncio.Event()
        #: The group listener's task, while changes are pushed to this watcher.
        self.listener: asyncio.Task[None] | None = None
        if push.enabled():
            self.listener = self.loop.create_task(self.listen(), name=f"longtask-push-{task_id}")
        self.runner = self.loop.create_task(self.run(), name=f"longtask-live-{task_id}")

    async def run(self) -> None:
        try:
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
                self.listener.cancel()
            if _watchers.get(self.task_id) is self:
                del _watchers[self.task_id]

    async def wait_for_change(self, began: float) -> None:
        """Sleep until the next tick is due: the poll interval, or a push (coalesced)."""
        interval = live_interval()
        if self.listener is None or self.listener.done():
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

    async def listen(self) -> None:
        """Set ``changed`` whenever a worker pushes a change of this task."""
        layer = get_channel_layer()
        assert layer is not None  # listen() runs only when push.enabled()
        group = push.group_name(self.task_id)
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        try:
            while True:
                await layer.receive(channel)
                self.changed.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis away: fall back to polling (run() sees that this task is done).
            logger.warning("live push of LongTask id=%s stopped; polling", self.task_id)
            self.changed.set()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(layer.group_discard(group, channel))

    async def tick(self) -> None:
        # Subscribers joining during the read are served from the next tick, whose
        # low cursor takes theirs into account.
        subscribers = list(self.subscribers)
        low = min(s.cursor for s in subscribers)
        known = {s.status for s in subscribers}
        state = await database_sync_to_async(read_tick)(self.task_id, low, known)
        self.reads += 1
        for subscriber in subscribers:
            if subscriber in self.subscribers:
                self.deliver(subscriber, state)
        self.subscribers = [s for s in self.subscribers if not s.closed]

    def deliver(self, subscriber: Subscriber, state: State | None) -> None:
        """Queue for ``subscriber`` what ``state`` adds to what it has been sent."""
        if state is None:
            subscriber.queue.put_nowait(GONE)
            subscriber.closed = True
            return
        events = [event for seq, event in state.events if seq > subscriber.cursor]
        subscriber.cursor = max(subscriber.cursor, state.events_upto, *(s for s, _ in state.events))
        if events:
            subscriber.queue.put_nowait(subtasks_frame(events, subscriber.cursor))
        shown = (state.progress, state.eta_seconds)
        if shown != subscriber.progress:
            subscriber.progress = shown
            subscriber.queue.put_nowait(progress_frame(state))
        caught_up = subscriber.cursor >= state.subtask_cursor
        if state.finished and caught_up:
            subscriber.queue.put_nowait(status_frame(state.status, state.document))
            subscriber.closed = True
        elif state.status != subscriber.status and not state.finished:
            subscriber.status = state.status
            subscriber.queue.put_nowait(status_frame(state.status, state.document))


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
    watcher.subscribers.append(subscriber)
    return subscriber


def unsubscribe(subscriber: Subscriber) -> None:
    """Stop following; the watcher stops with its last subscriber."""
    watcher = _watchers.get(subscriber.task_id)
    if watcher is None or subscriber not in watcher.subscribers:
        return
    watcher.subscribers.remove(subscriber)
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

"""The reads that clients joining a task share, in one process: its snapshot, its catch-up.

A thousand clients opening one task at once (a deploy reconnects them all) would each
read the task's snapshot, then the subtasks finished before it. Here each read is made
once for every client that asks while it runs and for one tick after it (``hold``): a
read that recent is as fresh as what the task's watcher sends, and the watcher sends
each client whatever came after its snapshot. The access rule is applied to each
client, on the shared row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from channels.db import database_sync_to_async

from longtask.conf import settings
from longtask.guards.access import can_view
from longtask.live.frames import MAX_SUBTASKS_PER_TICK, SharedFrame, subtasks_frame
from longtask.live.reads import State, read_subtasks, read_task
from longtask.progress import push

if TYPE_CHECKING:
    from longtask.models import LongTask


def hold() -> float:
    """Return how long (seconds) a finished read still serves: one tick of a watcher."""
    return float(settings.LIVE_PUSH_INTERVAL if push.pushed() else settings.LIVE_INTERVAL)


@dataclass
class _Read:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[Any]
    #: time.monotonic() after which a finished read serves no one.
    until: float = float("inf")


_reads: dict[Hashable, _Read] = {}


async def _shared(key: Hashable, read: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Return the result of ``read()``, made once for everyone asking within its hold."""
    now = time.monotonic()
    for stale in [k for k, r in _reads.items() if r.until < now]:
        del _reads[stale]
    loop = asyncio.get_running_loop()
    entry = _reads.get(key)
    if entry is None or entry.loop is not loop:
        entry = _reads[key] = _Read(loop, loop.create_task(read()))

        def done(task: asyncio.Task[Any], entry: _Read = entry) -> None:
            if task.cancelled() or task.exception() is not None:
                if _reads.get(key) is entry:  # the next one to ask reads again
                    del _reads[key]
            else:
                entry.until = time.monotonic() + hold()

        entry.task.add_done_callback(done)
    # Shielded: a client that goes away does not cancel the read the others wait for.
    return await asyncio.shield(entry.task)


async def snapshot(user: Any, task_id: UUID) -> State | None:
    """Return the task's state with its status document, or None if ``user`` may not see it."""
    found: tuple[LongTask, State] | None = await _shared(
        ("snapshot", task_id), lambda: database_sync_to_async(read_task)(task_id)
    )
    if found is None:
        return None
    task, state = found
    if not await database_sync_to_async(can_view)(user, task):
        return None
    return state


@dataclass(frozen=True)
class Page:
    """The first page of the subtasks finished in a cursor range, as one frame."""

    #: None when no subtask finished there (a retry freed those places).
    frame: SharedFrame | None
    #: Where the next page starts: the range's end, unless this page was full.
    cursor: int


def _page(task_id: UUID, after: int, upto: int) -> Page:
    events = read_subtasks(task_id, after, upto)
    # A short page ends the range: its rest has no event (a retry freed those places).
    cursor = upto if len(events) < MAX_SUBTASKS_PER_TICK else events[-1][0]
    frame = SharedFrame(subtasks_frame([e for _, e in events], cursor)) if events else None
    return Page(frame, cursor)


async def subtasks(task_id: UUID, after: int, upto: int) -> Page:
    """Return the first page of the subtasks finished in the cursor range (after, upto]."""
    key = ("subtasks", task_id, after, upto)
    page: Page = await _shared(key, lambda: database_sync_to_async(_page)(task_id, after, upto))
    return page

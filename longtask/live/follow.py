"""One client's follow of one task, whatever carries the frames (websocket, event stream).

A transport reads the snapshot (``shared.snapshot``, which applies the access rule),
sends it, then asks ``Follow.next_frames`` for the rest until a frame ``ends`` the
follow: first the subtasks finished before the snapshot, in pages, from the client's
cursor (pages shared by the clients that catch up from the same place); then what the
task's shared watcher finds, coalesced; last the final status (or ``GONE`` when the
task was deleted).
"""

from __future__ import annotations

from uuid import UUID

from longtask.live import shared
from longtask.live import watcher as live


def ends(frame: live.Frame) -> bool:
    """Return whether nothing follows ``frame``: the final status, or the task is gone."""
    return frame is live.GONE or (frame["type"] == "status" and bool(frame["final"]))


class Follow:
    """The frames owed to one client after its snapshot, from its cursor to the end."""

    def __init__(self, task_id: UUID, cursor: int, snapshot: live.State) -> None:
        self.task_id = task_id
        self.cursor = cursor
        self.snapshot = snapshot
        self.subscriber: live.Subscriber | None = None
        self.stopped = False

    async def next_frames(self) -> list[live.Frame]:
        """Return the next frames, waiting for the watcher when there are none yet.

        Safe to cancel at any await (a transport waits on it with a timeout): nothing
        is taken from the queue or moves the cursor before the awaited read returns.
        Not to be called again after a frame that ``ends`` the follow.
        """
        end = self.snapshot.subtask_cursor
        if self.cursor < end:
            page = await shared.subtasks(self.task_id, self.cursor, end)
            self.cursor = page.cursor
            if page.frame is not None:
                return [page.frame]
        if self.snapshot.finished:
            return [live.status_frame(self.snapshot.status, self.snapshot.document)]
        if self.subscriber is None:
            if self.stopped:
                raise RuntimeError("this follow was stopped")
            shown = (self.snapshot.progress, self.snapshot.eta_seconds)
            self.subscriber = live.subscribe(
                self.task_id, cursor=self.cursor, status=self.snapshot.status, shown=shown
            )
        queue = self.subscriber.queue
        frames = [await queue.get()]
        while not queue.empty():
            frames.append(queue.get_nowait())
        return live.coalesce(frames)

    def stop(self) -> None:
        """Stop following: leave the watcher (which stops with its last subscriber)."""
        self.stopped = True
        if self.subscriber is not None:
            live.unsubscribe(self.subscriber)
            self.subscriber = None

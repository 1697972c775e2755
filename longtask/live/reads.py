"""What the live transports read of a task: its snapshot, one tick, a page of subtasks.

Plain synchronous reads (each a query or two), called through ``database_sync_to_async``
by the watcher and by the shared reads of ``longtask.live.shared``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from longtask import progress
from longtask.documents import StatusDocument, status_document, subtask_events
from longtask.guards.access import can_view
from longtask.live.frames import MAX_SUBTASKS_PER_TICK, Frame
from longtask.models import LongTask, rows
from longtask.progress import ProgressPayload


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


def read_task(task_id: UUID) -> tuple[LongTask, State] | None:
    """Return the task and its state with its status document, or None if there is none.

    What anyone may be shown of it: the caller applies the access rule to the row.
    """
    task = rows.fetch(task_id, readable=True)
    if task is None:
        return None
    return task, _state(task, with_document=True)


def read_snapshot(user: Any, task_id: UUID) -> State | None:
    """Return the task's state with its status document, or None if ``user`` may not see it."""
    found = read_task(task_id)
    if found is None or not can_view(user, found[0]):
        return None
    return found[1]


def read_subtasks(task_id: UUID, after: int, upto: int) -> list[tuple[int, Frame]]:
    """Return one page of the subtasks finished in the cursor range (after, upto]."""
    return _read_events(task_id, after, upto, MAX_SUBTASKS_PER_TICK)


def read_tick(task_id: UUID, low: int, known: set[str]) -> State | None:
    """Read the row, its progress and the subtasks finished after ``low``; None if gone.

    The status document (one more query for a fan-out) is built only when some
    subscriber has not seen the current status (``known`` holds what they have seen).
    """
    task = rows.fetch(task_id, readable=True)
    if task is None:
        return None
    state = _state(task, with_document=task.is_finished or known != {task.status})
    if task.subtask_cursor > low:
        state.events = _read_events(task_id, low, task.subtask_cursor, MAX_SUBTASKS_PER_TICK)
    full = len(state.events) == MAX_SUBTASKS_PER_TICK
    state.events_upto = state.events[-1][0] if full else task.subtask_cursor
    return state

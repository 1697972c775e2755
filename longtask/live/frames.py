"""The frames every live transport sends: subtask events, progress, status, gone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longtask.models import FINISHED_STATUSES

if TYPE_CHECKING:
    from longtask.documents import StatusDocument

#: Most finished subtasks read by one tick or sent in one frame.
MAX_SUBTASKS_PER_TICK = 2000

Frame = dict[str, Any]


def subtasks_frame(events: list[Frame], cursor: int) -> Frame:
    return {"type": "subtasks", "cursor": cursor, "events": events}


def status_frame(status: str, document: StatusDocument | None) -> Frame:
    return {
        "type": "status",
        "status": status,
        "final": status in FINISHED_STATUSES,
        "document": document,
    }


#: Put on a subscriber's queue when its task no longer exists.
GONE: Frame = {"type": "gone"}


def coalesce(frames: list[Frame], limit: int = MAX_SUBTASKS_PER_TICK) -> list[Frame]:
    """Merge queued frames: subtask events batched, only the last progress, order kept.

    Status frames are barriers: what was queued before one is sent before it.
    """
    out: list[Frame] = []
    batches: list[Frame] = []
    latest_progress: Frame | None = None

    def flush() -> None:
        nonlocal batches, latest_progress
        out.extend(batches)
        if latest_progress is not None:
            out.append(latest_progress)
        batches, latest_progress = [], None

    for frame in frames:
        kind = frame["type"]
        if kind == "subtasks":
            last = batches[-1] if batches else None
            if last is not None and len(last["events"]) + len(frame["events"]) <= limit:
                last["events"].extend(frame["events"])
                last["cursor"] = frame["cursor"]
            else:  # a copy, so merging never changes a frame another queue holds
                batches.append(subtasks_frame(list(frame["events"]), frame["cursor"]))
        elif kind == "progress":
            latest_progress = frame
        else:
            flush()
            out.append(frame)
    flush()
    return out

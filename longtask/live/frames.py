"""The frames every live transport sends: subtask events, progress, status, gone."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from longtask.models import FINISHED_STATUSES

if TYPE_CHECKING:
    from longtask.documents import StatusDocument
    from longtask.progress import ProgressPayload

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


def progress_frame(progress: ProgressPayload, eta_seconds: int | None) -> Frame:
    return {"type": "progress", "progress": progress, "eta_seconds": eta_seconds}


#: Put on a subscriber's queue when its task no longer exists.
GONE: Frame = {"type": "gone"}


class SharedFrame(dict[str, Any]):
    """A frame queued for many clients as it is: its JSON is encoded once, for all of them
    (once per origin, when it holds a document whose link is made absolute).

    Never changed once queued (``coalesce`` merges into copies).
    """

    __slots__ = ("_encoded",)
    _encoded: dict[str, str]


def _relative_link(frame: Frame) -> bool:
    document = frame.get("document")
    return document is not None and str(document.get("status_url", "")).startswith("/")


def _encode(frame: Frame, origin: str) -> str:
    if origin and _relative_link(frame):
        # As the JSON endpoint does: a link a terminal or another site can follow.
        document = frame["document"]
        frame = {**frame, "document": {**document, "status_url": origin + document["status_url"]}}
    return json.dumps(frame, separators=(",", ":"))


def to_json(frame: Frame, origin: str = "") -> str:
    """Return ``frame`` as compact JSON text: ASCII, on one line.

    ``origin`` ("https://example.com"): a document's relative ``status_url`` is made
    absolute under it. A shared frame is encoded once for all the clients of one origin.
    """
    if not isinstance(frame, SharedFrame):
        return _encode(frame, origin)
    key = origin if _relative_link(frame) else ""
    try:
        encoded = frame._encoded
    except AttributeError:  # the first of its clients
        encoded = frame._encoded = {}
    text = encoded.get(key)
    if text is None:
        text = encoded[key] = _encode(frame, key)
    return text


def coalesce(frames: list[Frame], limit: int = MAX_SUBTASKS_PER_TICK) -> list[Frame]:
    """Merge queued frames: subtask events batched, only the last progress, order kept.

    Status frames are barriers: what was queued before one is sent before it.
    """
    out: list[Frame] = []
    batches: list[Frame] = []
    # Whether the last batch is a copy made here, not a queued frame others may hold too.
    copied = False
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
                if not copied:  # merging never changes a frame another queue holds
                    last = batches[-1] = subtasks_frame(list(last["events"]), last["cursor"])
                    copied = True
                last["events"].extend(frame["events"])
                last["cursor"] = frame["cursor"]
            else:  # alone so far: sent as it is (a shared frame keeps its encoding)
                batches.append(frame)
                copied = False
        elif kind == "progress":
            latest_progress = frame
        else:
            flush()
            out.append(frame)
    flush()
    return out

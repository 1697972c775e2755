"""The subtask cursor a client resumes from: one reading of ``since`` for every surface.

A cursor is a task's ``subtask_cursor`` (the finishing place of its last finished
subtask) as a client last saw it: the subtasks JSON takes it as ``?since=``, the
websocket as ``?since=`` and the event stream as ``Last-Event-ID`` (or ``?since=``).
"""

from __future__ import annotations

#: Longest cursor read: ten digits hold any finishing place a task reaches.
MAX_DIGITS = 10


def parse_cursor(raw: str | None) -> int | None:
    """Return the cursor ``raw`` names (0 when absent), or None if it is no cursor.

    Only ASCII digits count: ``isdigit`` alone accepts other scripts' digits and
    superscripts, which ``int`` then reads or refuses.
    """
    if raw is None:
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_DIGITS:
        return None
    return int(raw)

"""How durations and JSON are written for people: one place for the admin, the CLI and pages.

(``static/longtask/status.js`` writes durations the same way in the browser.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longtask.models import LongTask


def duration_text(seconds: float | None, decimals: int = 0) -> str:
    """Write seconds as "1 h 2 min", "3 min 4 s" or "5 s" ("5.2 s" with ``decimals=1``)."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.{decimals}f} s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def eta_text(seconds: int | None) -> str:
    return "" if seconds is None else f"ETA {duration_text(seconds)}"


def jobs_ahead_text(jobs_ahead: int | None) -> str:
    """Write "4,300 jobs ahead" ("1 job ahead"); "" when the broker could not tell."""
    if jobs_ahead is None:
        return ""
    return f"{jobs_ahead:,} job{'' if jobs_ahead == 1 else 's'} ahead"


def waiting_text(jobs_ahead: int | None) -> str:
    """Say where a task that waits for a worker stands: "Waiting: 4,300 jobs ahead."."""
    ahead = jobs_ahead_text(jobs_ahead)
    return f"Waiting: {ahead}." if ahead else "Waiting for a worker."


def run_seconds(task: LongTask) -> float | None:
    """Seconds from a finished task's start to its end; None while unknown."""
    if task.started_at and task.finished_at:
        return (task.finished_at - task.started_at).total_seconds()
    return None


def json_text(value: object, limit: int | None = None) -> str:
    """Indented JSON, cut after ``limit`` characters with a note of the full length."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}\n… ({len(text)} characters, cut)"
    return text

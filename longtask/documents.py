"""The JSON status document, shared by the JSON endpoint and (later) the websocket."""

from __future__ import annotations

import time
from typing import Any

from longtask import progress
from longtask.models import LongTask, Status


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def status_document(
    task: LongTask, record: dict[str, Any] | None, *, status_url: str
) -> dict[str, Any]:
    """Return the public JSON description of ``task`` given its progress ``record``."""
    document: dict[str, Any] = {
        "id": str(task.pk),
        "kind": task.kind,
        "name": task.name,
        "status": task.status,
        "progress": progress.payload(record),
        "eta_seconds": None if task.is_finished else progress.eta_seconds(record, time.time()),
        "attempts": task.attempts,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "error": task.error or None,
        "status_url": status_url,
    }
    if task.status == Status.SUCCEEDED:
        document["result"] = task.result
    return document

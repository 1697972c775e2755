"""Live progress: workers write it to the shared cache, pages and endpoints read it.

The stored record is ``{current, total, message, updated_at, rate}``; ``rate`` is a
smoothed count per second from which the ETA is computed. The record is stored as
JSON text, but how the cache stores that text is the cache backend's choice: Django's
file and Redis caches pickle it, and unpickle whatever they find under the key. Use a
cache that stores JSON (``longtask.jsoncache``, as the demo site does) so that write
access to the cache is not code execution in the web and worker processes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from typing import TypedDict, cast
from uuid import UUID

from django.core.cache import caches

from longtask.conf import settings
from longtask.progress import push

#: Longest progress message kept; longer ones are cut.
MESSAGE_MAX_LENGTH = 500
#: Two rate samples closer than this (seconds) are merged, so a burst of calls is not noise.
MIN_SAMPLE_INTERVAL = 0.2


logger = logging.getLogger("longtask")


class ProgressRecord(TypedDict):
    """What a task last reported: live in the cache, kept on the row (``last_progress``)."""

    current: float
    total: float | None
    message: str
    #: When it was reported (seconds since the epoch).
    updated_at: float
    #: The smoothed count per second behind the ETA; None until it can be told.
    rate: float | None


class ProgressPayload(TypedDict):
    """The public progress shape shared by the page, the JSON and the live frames."""

    current: float
    total: float | None
    percent: int | None
    message: str


def progress_key(task_id: UUID | str) -> str:
    return f"{settings.KEY_PREFIX}:progress:{task_id}"


def read_progress(task_id: UUID | str) -> ProgressRecord | None:
    """Return the live progress record of a task, or None."""
    raw = caches[settings.CACHE_ALIAS].get(progress_key(task_id))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except (TypeError, ValueError):
        return None
    # The shape a reporter wrote (any object that is not one is a miss).
    return cast("ProgressRecord", record) if isinstance(record, dict) else None


def read_many_progress(task_ids: Iterable[UUID | str]) -> dict[str, ProgressRecord]:
    """Return the live progress records of several tasks by id (as text), in one cache read.

    Tasks without a record (or with an unreadable one) are left out.
    """
    keys = {progress_key(task_id): str(task_id) for task_id in task_ids}
    if not keys:
        return {}
    found = caches[settings.CACHE_ALIAS].get_many(list(keys))
    records: dict[str, ProgressRecord] = {}
    for key, raw in found.items():
        try:
            record = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(record, dict):
            records[keys[key]] = cast("ProgressRecord", record)
    return records


def write_progress(task_id: UUID | str, record: ProgressRecord) -> None:
    """Publish live progress; a cache that does not answer (Redis restarting) loses it.

    Progress is advisory: the work goes on, the next write (or the row's final
    value) replaces what was lost.
    """
    try:
        caches[settings.CACHE_ALIAS].set(
            progress_key(task_id), json.dumps(record), timeout=settings.PROGRESS_TTL
        )
    except Exception:
        logger.warning("could not write the progress of LongTask id=%s", task_id, exc_info=True)
        return
    push.notify(task_id)


def delete_progress(task_id: UUID | str) -> None:
    caches[settings.CACHE_ALIAS].delete(progress_key(task_id))


def payload(record: ProgressRecord | None) -> ProgressPayload:
    """Return the public progress shape shared by the page, the JSON and the websocket."""
    if not record:
        return {"current": 0, "total": None, "percent": None, "message": ""}
    current = record.get("current") or 0
    total = record.get("total")
    percent = None
    if total:
        percent = max(0, min(100, math.floor(100 * current / total)))
    return {
        "current": current,
        "total": total,
        "percent": percent,
        "message": record.get("message") or "",
    }


def eta_seconds(record: ProgressRecord | None, now: float | None = None) -> int | None:
    """Return the seconds left by the smoothed rate, or None when unknown."""
    if not record:
        return None
    current, total, rate = record.get("current") or 0, record.get("total"), record.get("rate")
    if total is None:
        return None
    if current >= total:
        return 0
    if not rate or rate <= 0:
        return None
    now = time.time() if now is None else now
    since_update = max(0.0, now - record.get("updated_at", now))
    return max(0, round((total - current) / rate - since_update))

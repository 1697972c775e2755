"""Workers tell the web processes that a task changed, through the channel layer.

With a channel layer that crosses processes (channels_redis, when REDIS_URL is set),
every change a worker records (a batch of finished subtasks, a progress write, a
status change) sends one small "changed" message to the task's group; the web
process's watcher of that task (longtask/live.py) then reads the task at once
instead of at its next poll. The message carries no data: what the page shows is
always read from the database and the cache, so a lost message only delays an update
until the watcher's fallback read. Without a channel layer this does nothing.
"""

from __future__ import annotations

import logging
from functools import cache
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer

logger = logging.getLogger("longtask")

#: The message type; a consumer of the group would handle it as ``longtask_changed``.
CHANGED = {"type": "longtask.changed"}


def group_name(task_id: UUID | str) -> str:
    """The channel-layer group of one task (letters, digits and dots only)."""
    return f"longtask.task.{UUID(str(task_id)).hex}"


@cache
def _layer() -> BaseChannelLayer | None:
    layer = get_channel_layer()
    # The in-memory layer stays inside one process: the web process polls instead.
    if layer is None or type(layer).__name__ == "InMemoryChannelLayer":
        return None
    return layer


def enabled() -> bool:
    """Say whether changes are pushed (a channel layer crosses processes)."""
    return _layer() is not None


def notify(task_id: UUID | str) -> None:
    """Tell the watchers of ``task_id`` that it changed; never raises."""
    layer = _layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(task_id), dict(CHANGED))
    except Exception:  # Redis away: the watchers' fallback reads still see the change
        logger.warning("could not push a change of LongTask id=%s", task_id, exc_info=True)

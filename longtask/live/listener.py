"""The web side of the workers' pushes: one channel-layer subscription per watched task
(or, on SQLite, this process's datagram socket: ``LocalListener``).

A watcher (``longtask.live.watcher``) listens to its task's group through one channel of
the layer, whatever the number of clients it serves: the consumers themselves hold no
channel (a consumer's own receive loop would be one more blocking read per socket, and
one more member of the group that every push is written to). If the layer fails (Redis
away, a read timing out), the watcher polls while the listener subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from channels.layers import BaseChannelLayer, get_channel_layer

from longtask.conf import settings
from longtask.progress import local, push

logger = logging.getLogger("longtask")


class Listener:
    """Sets ``changed`` whenever a worker pushes a change of one task."""

    def __init__(self, task_id: UUID, changed: asyncio.Event) -> None:
        self.task_id = task_id
        self.changed = changed
        #: True while pushes arrive; the watcher polls otherwise.
        self.subscribed = False
        #: Set once the first subscription is made (or failed): a read after it misses no push.
        self.ready = asyncio.Event()
        self.failing = False
        self.task = asyncio.get_running_loop().create_task(
            self.run(), name=f"longtask-push-{task_id}"
        )

    async def run(self) -> None:
        """Listen to the task's group; after a failure, subscribe again every LIVE_FALLBACK."""
        while True:
            try:
                await self.listen()
            except Exception:
                if not self.failing:  # once per outage, not once per retry
                    logger.warning(
                        "live push of LongTask id=%s stopped; polling until it resumes",
                        self.task_id,
                        exc_info=True,
                    )
                self.failing = True
            self.ready.set()
            self.changed.set()  # pushes may have been lost: read now
            await asyncio.sleep(float(settings.LIVE_FALLBACK))

    async def listen(self) -> None:
        layer = get_channel_layer()
        assert layer is not None  # a listener runs only when push.enabled()
        group = push.group_name(self.task_id)
        channel = await layer.new_channel()
        # Marked before joining: workers push only to tasks with a mark (push.py).
        await push.mark_watched(self.task_id)
        await layer.group_add(group, channel)
        try:
            self.subscribed = True
            if self.failing:
                logger.warning("live push of LongTask id=%s resumed", self.task_id)
                self.failing = False
                self.changed.set()  # what changed while unsubscribed
            self.ready.set()
            # If either fails, the other stops and ``run`` subscribes again.
            async with asyncio.TaskGroup() as both:
                both.create_task(self.receive(layer, channel))
                both.create_task(self.renew())
        finally:
            self.subscribed = False
            with contextlib.suppress(Exception):
                await asyncio.shield(layer.group_discard(group, channel))

    async def receive(self, layer: BaseChannelLayer, channel: str) -> None:
        while True:
            await layer.receive(channel)
            self.changed.set()

    async def renew(self) -> None:
        """Keep the task's watched mark while listening; raise if the cache fails."""
        while True:
            await asyncio.sleep(push.WATCH_TTL / 3)
            await push.mark_watched(self.task_id)

    def stop(self) -> None:
        self.task.cancel()


class LocalListener:
    """Sets ``changed`` whenever a worker of this machine sends a change of one task.

    Through this process's datagram socket (longtask/progress/local.py), shared by the
    watchers of every task; polls (``subscribed`` False) when it could not be bound.
    """

    def __init__(self, task_id: UUID, changed: asyncio.Event) -> None:
        self.task_id = task_id
        self.changed = changed
        self.receiver = local.receiver()
        if self.receiver is not None:
            self.receiver.add(task_id, changed)
        # Bound before the watcher's first read: a change after that read is sent here.
        self.ready = asyncio.Event()
        self.ready.set()

    @property
    def subscribed(self) -> bool:
        return self.receiver is not None and self.receiver.open

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.discard(self.task_id, self.changed)

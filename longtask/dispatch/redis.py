"""django-q2's Redis broker with delayed delivery.

Set ``Q_CLUSTER["broker_class"] = "longtask.dispatch.redis.RedisBroker"`` with
``Q_CLUSTER["redis"]``. ``longtask.dispatch.enqueue_many(..., eta=...)`` puts a delayed job
in a sorted set beside the cluster's list, scored by its due time; before each
blocking pop this broker moves the due jobs onto the list with one atomic script, so
a delay is kept to within ``BLOCK`` seconds and several clusters may drain one set.
"""

from __future__ import annotations

import datetime
import logging
import time

import redis
from django_q.brokers.redis_broker import Redis
from django_q.signing import SignedPackage

from longtask.dispatch.base import Depth, Dispatcher, commit_batch, register

logger = logging.getLogger("longtask")

# Move up to ARGV[2] jobs due by ARGV[1] from the sorted set KEYS[2] to the list KEYS[1].
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then
    redis.call('ZREM', KEYS[2], unpack(due))
    redis.call('RPUSH', KEYS[1], unpack(due))
end
return #due
"""


class RedisBroker(Redis):
    #: Seconds a dequeue blocks waiting for a job: also how late a delayed job may start.
    BLOCK = 0.25
    #: Delayed jobs moved per dequeue at most.
    MOVE_BATCH = 500
    #: Seconds between two tries while Redis does not answer.
    RECONNECT_PAUSE = 0.5
    _down = False

    def move_due(self) -> int:
        """Move the delayed jobs that are due onto the list; return how many moved."""
        return int(
            self.connection.eval(
                MOVE_DUE, 2, self.list_key, delayed_key(self.list_key), time.time(), self.MOVE_BATCH
            )
        )

    def dequeue(self) -> list[tuple[None, bytes]] | None:
        try:
            self.move_due()
            task = self.connection.blpop(self.list_key, self.BLOCK)
        except redis.ConnectionError:
            # Redis is restarting. Raising would make django-q2's pusher sleep 10 s and
            # die (to be restarted); waiting here resumes as soon as Redis answers.
            if not self._down:
                logger.warning("Redis does not answer; waiting for it (%s)", self.list_key)
            self._down = True
            time.sleep(self.RECONNECT_PAUSE)
            return None
        if self._down:
            logger.warning("Redis answers again (%s)", self.list_key)
            self._down = False
        if task:
            return [(None, task[1])]
        return None

    def queue_size(self) -> int:
        """Jobs waiting in the list, delayed ones included."""
        return int(self.connection.llen(self.list_key)) + int(
            self.connection.zcard(delayed_key(self.list_key))
        )

    def delete_queue(self) -> int:
        return int(self.connection.delete(self.list_key, delayed_key(self.list_key)))


def delayed_key(list_key: str) -> str:
    """The sorted set holding a Redis list's delayed jobs."""
    return f"{list_key}:delayed"


@register(Redis)
class RedisDispatcher(Dispatcher):
    """Pushes after the caller's transaction commits; delayed jobs wait in the sorted set
    (drained by ``RedisBroker``, which a check requires with Redis)."""

    def enqueue(
        self,
        packs: list[str],
        eta: datetime.datetime | None,
        since: datetime.datetime | None = None,
    ) -> None:
        # ``since`` is in the packages ("started"), which ``oldest_ready`` reads.
        # A job with an eta goes to the delayed set even if the eta passes before the
        # commit: the broker moves due jobs onto the list at its next dequeue.
        # A transaction's jobs of one list and eta are one push at its commit, not a
        # round trip each (500 for a transaction that starts 500 tasks).
        batch = commit_batch(("push", self.broker.list_key, eta), lambda b: self._push(b, eta))
        if batch is None:  # no transaction: pushed now, as on_commit would
            self._push(packs, eta)
        else:
            batch.extend(packs)

    def _push(self, packs: list[str], eta: datetime.datetime | None) -> None:
        if not packs:
            return
        connection, key = self.broker.connection, self.broker.list_key
        if eta:
            connection.zadd(delayed_key(key), dict.fromkeys(packs, eta.timestamp()))
        else:
            connection.rpush(key, *packs)

    def oldest_ready(self) -> datetime.datetime | None:
        connection, key = self.broker.connection, self.broker.list_key
        candidates = []
        head = connection.lindex(key, 0)
        if head is not None:
            candidates.append(SignedPackage.loads(head)["started"])
        due = connection.zrangebyscore(
            delayed_key(key), "-inf", time.time(), start=0, num=1, withscores=True
        )
        if due:
            candidates.append(datetime.datetime.fromtimestamp(due[0][1], tz=datetime.UTC))
        return min(candidates) if candidates else None

    def ahead(self, due: datetime.datetime | None) -> int:
        # A job's place in the list costs an LPOS over every signed payload before it;
        # the list's length is one LLEN: this job and those behind it count too.
        return int(self.broker.connection.llen(self.broker.list_key))

    def depth(self) -> Depth:
        connection, key = self.broker.connection, self.broker.list_key
        return Depth(
            ready=int(connection.llen(key)), delayed=int(connection.zcard(delayed_key(key)))
        )

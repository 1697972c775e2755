"""PostgreSQL sessions that stall holding locks: a sweep neither waits for them nor lets them be.

A worker cut off (or frozen) inside a transaction keeps its session, and its row locks,
for as long as its client stays silent. The sweep (``engine/recovery.py``) bounds its
own lock waits and ends such sessions; on SQLite there are none (one writer, and a
process that dies releases its lock).
"""

from __future__ import annotations

import logging

from django.db import connection

from longtask.conf import settings

logger = logging.getLogger("longtask")

#: Longest a sweep waits for a row lock (PostgreSQL) before it gives that step up.
SWEEP_LOCK_TIMEOUT_MS = 5000

# Sessions of this database user that hold a transaction open while waiting for their
# client (a partitioned or frozen worker), for longer than STALE_AFTER, and block others.
_STALLED_BLOCKERS = """
SELECT blocker.pid FROM pg_stat_activity AS blocker
WHERE blocker.datname = current_database() AND blocker.usename = current_user
  AND blocker.pid <> pg_backend_pid() AND blocker.xact_start IS NOT NULL
  AND blocker.wait_event_type = 'Client'
  AND blocker.state_change < now() - make_interval(secs => %s)
  AND EXISTS (
    SELECT 1 FROM pg_stat_activity AS waiter
    WHERE blocker.pid = ANY(pg_blocking_pids(waiter.pid))
  )
"""


def bound_lock_waits() -> None:
    """A sweep never waits long for a lock: a stalled holder must not stop every sweep."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, false)", [f"{SWEEP_LOCK_TIMEOUT_MS}ms"]
            )


def terminate_stalled_lock_holders() -> int:
    """End the sessions of workers cut off (or frozen) inside a transaction that blocks others.

    PostgreSQL keeps such a session, and its row locks (a fan-out's parent row, say),
    for as long as its client stays silent; every other node's recorders and sweepers
    would queue behind it. Its run is stale by then and is handed over by the steps
    that follow; the terminated transaction rolls back, so nothing of it counts.
    """
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_STALLED_BLOCKERS, [settings.STALE_AFTER])
        pids = [row[0] for row in cursor.fetchall()]
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            logger.warning(
                "longtask sweep ended PostgreSQL session pid=%s (stalled holding locks)", pid
            )
    return len(pids)

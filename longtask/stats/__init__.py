"""The numbers of the operations dashboard, ``/metrics`` and ``manage.py longtask top``.

``snapshot()`` reads them as aggregates, never row by row, in a fixed number of queries
whatever the size of the history (``tests/test_ops.py`` counts them with 10 and with
100,000 finished tasks in the table):

- **queues**: depth (ready, delayed) and the oldest waiting job's age from each
  cluster's broker through the dispatch seam (on the ORM broker, counts over its table
  of waiting jobs; on Redis, LLEN/ZCARD); the limits, and the concurrency leases in use
  from the ``slots:<queue>`` rows; running jobs from the grouped count below.
- **active tasks**: one grouped count of the QUEUED, RUNNING and RETRYING rows by kind,
  status, queue and worker (which also gives the running jobs per queue, and the
  workers by node), and one of the running subtasks by worker and parent kind. Both
  read active rows only (an index on status; the partial indexes of active rows on
  PostgreSQL), so finished rows cost nothing.
- **slowest running** and **stuck** tasks: RUNNING without a heartbeat for
  ``LONGTASK_STALE_AFTER``, QUEUED or RETRYING ``STALE_AFTER`` past their due time (the
  sweeper's bounds): the same partial index, a bounded list each.
- **per minute** (started, succeeded, failed over the last hour and day) and the
  **totals** behind the Prometheus counters: from ``TaskMinute``, a rollup the state
  machine adds to in the transaction of each counted transition.

Why a rollup rather than bounded windows (GROUP BYs over ``started_at``/``finished_at``
in the last 24 h, on indexes of their own): ``bench/stats.py`` with 100,000 finished
tasks, all in the last day (a window's worst case), 3 kinds, on a 2-core machine shared
with other test runs (load average about 5; the range of two runs' medians):

=================================  ===============  ==============================
                                   SQLite (WAL)     PostgreSQL 15 (+ Redis broker)
=================================  ===============  ==============================
(a) the day's series, rollup       15-58 ms         15-31 ms
(b) the same series, windows       3.9-4.0 s        164-406 ms
(b') one COUNT over the day        6 ms             26-53 ms
(c) the whole ``snapshot()``       69-189 ms        56-206 ms
(d) the upsert, per transition     0.3-0.4 ms       1 ms (0.13 ms in the server)
=================================  ===============  ==============================

A window's cost grows with the day's traffic (at 1,000 tasks a minute it reads 1.4
million rows per refresh; SQLite truncates each timestamp in a Python function), while
the rollup reads at most 1,440 rows per kind, whatever the traffic and the history. A
window also cannot give monotonic counters (rows leave it, ``purge`` deletes them) nor
count retries, which leave no row of their own. The rollup's price is on the write side,
(d): one statement per counted transition, in a transaction that commits anyway
(``longtask/engine/states/tallies.py``), on two rows per kind that concurrent transitions
of that kind take in the same order.
"""

from longtask.stats.counts import SERIES, TOTAL_FIELDS
from longtask.stats.snapshot import snapshot

__all__ = ["SERIES", "TOTAL_FIELDS", "snapshot"]

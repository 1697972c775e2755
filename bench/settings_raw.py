"""Settings of the raw baseline (bench/raw.py): django-q2 alone, configured for throughput.

Its cluster and its client run with DJANGO_SETTINGS_MODULE=bench.settings_raw: the
project's settings (database, data directory, REDIS_URL, all from the environment as
quiltsite/settings.py reads them) with a Q_CLUSTER of its own. The broker follows the
run: on the embedded default django-q2's ORM broker on SQLite WAL; with REDIS_URL
(``--services``) django-q2's own Redis broker (no broker_class: not longtask's), the
results in PostgreSQL. "bulk" and "poll" do not apply to the Redis broker (one blocking
pop per job).

For throughput: save_limit 0 keeps every success row (so they can be counted) without
the pruning query; no per-task log lines; no worker recycling; the pusher takes several
jobs per poll and keeps both workers fed; persistent database connections (django-q2
calls close_old_connections() around every job and every broker poll, which with the
default CONN_MAX_AGE=0 reopens the SQLite connection each time: about 1.4x slower).

Per-run values, from the environment (bench/raw.py sets them from its options):
BENCH_RAW_WORKERS (2), BENCH_RAW_BULK (16), BENCH_RAW_QUEUE_LIMIT (16), BENCH_RAW_POLL (0.05).
"""

import os

from quiltsite.settings import *  # noqa: F403
from quiltsite.settings import DATABASES, Q_CLUSTER, REDIS_URL

DATABASES["default"]["CONN_MAX_AGE"] = None

Q_CLUSTER = {
    "name": "bench-raw",
    **({"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}),
    "workers": int(os.environ.get("BENCH_RAW_WORKERS", 2)),
    "bulk": int(os.environ.get("BENCH_RAW_BULK", 16)),
    "queue_limit": int(os.environ.get("BENCH_RAW_QUEUE_LIMIT", 16)),
    "poll": float(os.environ.get("BENCH_RAW_POLL", 0.05)),
    "save_limit": 0,
    "timeout": 60,
    "retry": 1800,
    "max_attempts": 0,
    "ack_failures": True,
    "recycle": 10_000_000,
    "catch_up": False,
    "log_level": "WARNING",
    "label": "bench-raw",
    # Unused by this cluster; kept so that longtask's system checks of its queues pass.
    "ALT_CLUSTERS": Q_CLUSTER.get("ALT_CLUSTERS", {}),
}

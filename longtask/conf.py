"""Longtask's settings: typed defaults, read from ``LONGTASK_*`` Django settings.

A value is read at its first access and kept until a ``LONGTASK_*`` setting changes
(``override_settings`` and pytest-django's ``settings`` send ``setting_changed``): the
engine reads a few settings per subtask, and each read through Django's settings cost
about 4 us.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

#: The values read so far, by name.
_read: dict[str, Any] = {}


class Settings:
    """Each attribute is the default of the Django setting ``LONGTASK_<NAME>``."""

    #: Cache alias holding live progress (must be shared by web and worker processes).
    CACHE_ALIAS: str = "default"
    #: Cache alias of the abuse limits' per-IP records; None: CACHE_ALIAS. Give it a cache
    #: that does not cull (Django's file cache drops a random third of its entries when
    #: full, and with them an IP's count of active tasks).
    LIMITS_CACHE_ALIAS: str | None = None
    #: Prefix of every cache key longtask writes.
    KEY_PREFIX: str = "longtask"
    #: Minimum seconds between two progress writes of one task; the last value is always written.
    PROGRESS_INTERVAL: float = 0.25
    #: How long live progress stays in the cache (seconds); the final value is also kept on the row.
    PROGRESS_TTL: int = 7 * 24 * 3600
    #: Time constant (seconds) of the smoothed rate behind the ETA.
    ETA_SMOOTHING: float = 10.0
    #: Queue used when neither the kind nor the caller names one.
    DEFAULT_QUEUE: str = "default"
    #: Queue of subtasks when the fan-out kind names none (apart from their parents').
    SUBTASK_QUEUE: str = "subtasks"
    #: Named queues: name -> {"cluster": django-q2 cluster name (None: Q_CLUSTER's own),
    #: "rate": "N/s" | "N/m" | "N/h", "burst": int, "max_concurrency": int}.
    QUEUES: dict[str, dict[str, Any]] = {
        "default": {"cluster": None},
        "subtasks": {"cluster": "longtask-subtasks"},
    }
    #: A worker waits this long at most (seconds) for a rate or concurrency limit;
    #: longer, it puts the job back to run when the limit allows.
    LIMIT_WAIT: float = 2.0
    #: On PostgreSQL (psycopg 3), a run's hot statements (its claim, its finish, a task's
    #: insert) are prepared once per connection and then only bound and executed. Set
    #: False behind a pooler that cannot keep prepared statements (PgBouncer in
    #: transaction mode before 1.21, or without ``max_prepared_statements``).
    PREPARE_STATEMENTS: bool = True
    #: Where the rate limiter keeps its windows: a ``limits`` storage URI such as
    #: "redis://host:6379/0", or None for the database (table longtask_queuestate).
    RATE_LIMIT_STORAGE: str | None = None
    #: This worker's name in the ``worker`` columns; None means "host:pid".
    NODE: str | None = None
    #: Worker processes expected to run subtasks in parallel (caps the chunk size).
    SUBTASK_PARALLELISM: int = 2
    #: Subtask rows created and queued per transaction while splitting; None: 5,000 on
    #: PostgreSQL, 1,000 on SQLite. A batch takes the parent's row lock, which every
    #: chunk's record takes too: at 1,000, PostgreSQL's split of 100,000 waited for it
    #: most of its 6.7 s (2.2 s at 5,000) and held a parent worker meanwhile. SQLite gains
    #: nothing, and a batch holds its one write lock: 8-15 ms at 1,000, 40-100 at 5,000.
    SPLIT_BATCH: int | None = None
    #: Run time a chunk of subtasks aims at when its size is picked automatically.
    CHUNK_TARGET_SECONDS: float = 1.0
    #: Upper bound of an automatic chunk size.
    MAX_CHUNK_SIZE: int = 500
    #: Chunk jobs of one fan-out queued at once; more are queued as chunks finish, so a
    #: later fan-out's jobs wait behind a few of an earlier one's, not all of them.
    #: None: twice SUBTASK_PARALLELISM; 0: no window (every subtask queued at its split).
    FANOUT_WINDOW_JOBS: int | None = None
    #: A chunk records its finished subtasks at least this often (seconds).
    RECORD_INTERVAL: float = 0.2
    #: Default retry policy of a kind (fields of longtask.RetryPolicy).
    RETRY: dict[str, Any] = {
        "max_attempts": 5,
        "min_backoff": 1.0,
        "max_backoff": 300.0,
        "max_doublings": 5,
    }
    #: Seconds between two heartbeats of a running task or chunk.
    HEARTBEAT_INTERVAL: float = 5.0
    #: A running task or subtask without a heartbeat for this long is re-queued (seconds).
    STALE_AFTER: float = 60.0
    #: Seconds between two sweeps for stale work by ``manage.py longtask_worker``.
    SWEEP_INTERVAL: float = 10.0
    #: ``longtask_worker`` restarts its cluster when jobs wait while every worker has
    #: been idle on the queue this long (seconds): 100 times the pusher's poll, twice
    #: the heartbeat interval.
    WEDGE_AFTER: float = 10.0
    #: Seconds between two reads of a watched task by the websocket's poller (embedded
    #: default, or a channel layer that stopped answering).
    LIVE_INTERVAL: float = 0.3
    #: With a channel layer (pushes from workers), a watched task is still read this
    #: often (seconds), in case a push was lost.
    LIVE_FALLBACK: float = 5.0
    #: An open websocket re-reads its session and re-applies the access rule this often
    #: (seconds): a logout, a password change or a lost permission closes it with 4403.
    LIVE_RECHECK: float = 5.0
    #: With a channel layer, the least time between two reads of one watched task: the
    #: pushes that arrive meanwhile are served by one read (seconds).
    LIVE_PUSH_INTERVAL: float = 0.05
    #: On SQLite, workers send each change to the web processes of their machine (a
    #: datagram through a socket beside the database), which then read at once instead
    #: of polling every LIVE_INTERVAL (longtask/progress/local.py).
    LIVE_LOCAL_PUSH: bool = True
    #: Seconds between two refreshes of the status page without JavaScript.
    REFRESH_SECONDS: int = 2
    # Abuse limits (see SECURITY.md). They apply to web and CLI starts, not to
    # ``longtask.start()`` called from Python; None turns a limit off.
    #: Starts per user (or per client IP for anonymous visitors) in one minute.
    STARTS_PER_MINUTE: int | None = 20
    #: Queued, running or retrying tasks one user (or client IP) may have at once.
    MAX_ACTIVE_TASKS: int | None = 5
    #: Starting a fan-out kind is refused while this many subtasks wait (all users).
    MAX_QUEUED_SUBTASKS: int | None = 100_000
    #: Staff users are not subject to the three limits above.
    LIMITS_EXEMPT_STAFF: bool = True
    #: Largest JSON of a task's cleaned parameters (bytes), for web and CLI starts.
    MAX_PARAMETERS_BYTES: int = 64 * 1024
    #: Largest JSON of a result (a task's, a subtask's, a gather's); larger ones fail.
    MAX_RESULT_BYTES: int = 1024 * 1024
    #: A scraper sending ``Authorization: Bearer <this>`` may read /metrics; None: only
    #: staff sessions that may view every task.
    METRICS_TOKEN: str | None = None

    def __getattribute__(self, name: str) -> object:
        try:
            return _read[name]
        except KeyError:
            pass
        if name.isupper():
            value = getattr(django_settings, f"LONGTASK_{name}", super().__getattribute__(name))
            _read[name] = value
            return value
        return super().__getattribute__(name)


def _forget(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("LONGTASK_"):
        _read.clear()


setting_changed.connect(_forget, dispatch_uid="longtask-settings")


settings = Settings()

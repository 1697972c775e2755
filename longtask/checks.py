"""System checks: configuration mistakes that would only show in production."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import redis
from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import connection

from longtask.conf import settings as longtask_settings
from longtask.dispatch import queues
from longtask.kinds import FanOutKind, registry


@checks.register()
def check_time_limits(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Warn when a kind's time limit exceeds django-q2's cluster timeout."""
    timeout = getattr(settings, "Q_CLUSTER", {}).get("timeout")
    if timeout is None:
        return []
    return [
        checks.Warning(
            f"kind {kind.name!r} has time_limit={kind.time_limit}s, above the "
            f"django-q2 cluster timeout of {timeout}s, which stops it first",
            hint="Raise Q_CLUSTER['timeout'] (and 'retry', above twice the timeout).",
            id="longtask.W001",
        )
        for kind in registry
        if kind.time_limit and kind.time_limit > timeout
    ]


@checks.register()
def check_queues(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Every queue must parse, and be served by a cluster that Q_CLUSTER defines."""
    q_cluster = getattr(settings, "Q_CLUSTER", {})
    clusters = set(q_cluster.get("ALT_CLUSTERS", {}))
    errors: list[checks.CheckMessage] = []
    for name in longtask_settings.QUEUES:
        try:
            queue = queues.get(name)
        except (ValueError, TypeError) as exc:
            errors.append(checks.Error(f"queue {name!r}: {exc}", id="longtask.E001"))
            continue
        if (
            queue.cluster
            and queue.cluster != q_cluster.get("name")
            and queue.cluster not in clusters
        ):
            errors.append(
                checks.Error(
                    f"queue {name!r} is served by cluster {queue.cluster!r}, which is not in "
                    "Q_CLUSTER['ALT_CLUSTERS']",
                    hint="Add it there (with its worker count), or change the queue's cluster.",
                    id="longtask.E002",
                )
            )
    used = {longtask_settings.DEFAULT_QUEUE, longtask_settings.SUBTASK_QUEUE}
    for kind in registry:
        used.add(kind.queue or longtask_settings.DEFAULT_QUEUE)
        if isinstance(kind, FanOutKind):
            used.add(kind.subtask_queue_name())
    errors.extend(
        checks.Error(
            f"queue {name!r} (used by a kind or a LONGTASK_ setting) is not in LONGTASK_QUEUES",
            id="longtask.E003",
        )
        for name in sorted(used - set(longtask_settings.QUEUES))
    )
    return errors


#: The oldest SQLite whose UPDATE returns rows (a claim is one UPDATE ... RETURNING) and
#: takes a FROM clause (a chunk's outcomes are one UPDATE ... FROM VALUES).
SQLITE_MIN = (3, 35)


@checks.register()
def check_database(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """longtask's statements are PostgreSQL's and SQLite 3.35+'s."""
    vendor = connection.vendor
    if vendor == "postgresql":
        return []
    if vendor == "sqlite":
        found = sqlite3.sqlite_version_info  # the module Django's SQLite backend uses
        if tuple(found[:2]) >= SQLITE_MIN:
            return []
        what = "SQLite " + ".".join(map(str, found))
    else:
        what = connection.display_name
    return [
        checks.Error(
            f"longtask needs PostgreSQL or SQLite {'.'.join(map(str, SQLITE_MIN))}+, "
            f"and the default database is {what}",
            hint="Use a Python whose sqlite3 module has a newer SQLite, or PostgreSQL.",
            id="longtask.E004",
        )
    ]


#: Seconds the Redis probe waits: an unreachable server is not this check's business.
REDIS_PROBE_TIMEOUT = 2.0


def _redis_urls() -> list[str]:
    """Return the Redis URLs the cache, django-q2 and the rate limiter are configured with."""
    candidates: list[object] = []
    for options in getattr(settings, "CACHES", {}).values():
        if "redis" in str(options.get("BACKEND", "")).lower():
            location = options.get("LOCATION", "")
            candidates.extend(location if isinstance(location, list | tuple) else [location])
    candidates.append(getattr(settings, "Q_CLUSTER", {}).get("redis"))
    candidates.append(longtask_settings.RATE_LIMIT_STORAGE)
    schemes = ("redis://", "rediss://", "unix://")
    urls = [url for url in candidates if isinstance(url, str) and url.startswith(schemes)]
    return list(dict.fromkeys(urls))


@checks.register()
def check_redis_credentials(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """A Redis that refuses the configured password stops every command at once, in one line.

    Without this, workers and web processes start and then fail on every job and
    request with a traceback, in a loop. A server that does not answer is left alone:
    that may pass (the workers reconnect by themselves).
    """
    errors: list[checks.CheckMessage] = []
    for url in _redis_urls():
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_PROBE_TIMEOUT,
            socket_timeout=REDIS_PROBE_TIMEOUT,
        )
        try:
            client.ping()
        except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            where = _redacted(client)
            reason = " ".join(str(exc).split())  # one line, whatever the server said
            errors.append(
                checks.Error(
                    f"Redis at {where} refused the credentials of its URL: {reason}",
                    hint="Put the server's password in the URL: redis://:PASSWORD@host:6379/0",
                    id="longtask.E010",
                )
            )
        except redis.exceptions.RedisError:
            pass
        finally:
            client.close()
    return errors


def _redacted(client: redis.Redis) -> str:
    """Return host:port/db of a client, never its password."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"

"""System checks: configuration mistakes that would only show in production."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register()
def check_time_limits(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when a kind's time limit exceeds django-q2's cluster timeout."""
    from longtask.kinds import registry

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
def check_queues(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every queue must parse, and be served by a cluster that Q_CLUSTER defines."""
    from longtask import queues
    from longtask.conf import settings as longtask_settings
    from longtask.kinds import FanOutKind, registry

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

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

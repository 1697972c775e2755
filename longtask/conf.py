"""Longtask's settings: typed defaults, read from ``LONGTASK_*`` Django settings at access time."""

from __future__ import annotations

from typing import Any


class Settings:
    """Each attribute is the default of the Django setting ``LONGTASK_<NAME>``."""

    #: Cache alias holding live progress (must be shared by web and worker processes).
    CACHE_ALIAS: str = "default"
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
    #: Seconds between two refreshes of the status page without JavaScript.
    REFRESH_SECONDS: int = 2

    def __getattribute__(self, name: str) -> Any:
        if name.isupper():
            from django.conf import settings as django_settings

            return getattr(django_settings, f"LONGTASK_{name}", super().__getattribute__(name))
        return super().__getattribute__(name)


settings = Settings()

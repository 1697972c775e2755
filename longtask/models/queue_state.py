"""QueueState: the shared state of a rate-limited or concurrency-limited queue.

One row per queue, locked while it changes (SELECT ... FOR UPDATE on PostgreSQL; an
IMMEDIATE transaction on SQLite), so every worker on every machine sees one state.
Used by ``longtask.dispatch.queues`` for the concurrency leases and, without Redis, for the
rate limiter's moving window.
"""

from __future__ import annotations

from django.db import models


class QueueState(models.Model):
    #: The rate limiter's key, or ``slots:<queue>`` for the concurrency leases.
    key = models.CharField(max_length=200, primary_key=True)
    #: Rate limit: times (UNIX seconds) of the hits still inside the moving window.
    hits: models.JSONField[list[float], list[float]] = models.JSONField(default=list, blank=True)
    #: Concurrency: lease token -> expiry time (UNIX seconds) of each running job.
    leases: models.JSONField[dict[str, float], dict[str, float]] = models.JSONField(
        default=dict, blank=True
    )

    class Meta:
        verbose_name = "queue state"

    def __str__(self) -> str:
        return self.key

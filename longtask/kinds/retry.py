"""Retry policies with App Engine's semantics."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from longtask.conf import settings


class Random(Protocol):
    """Where the jitter comes from: the ``random`` module, or a seeded ``random.Random``."""

    def random(self) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a failed attempt runs again.

    The delay before retry k (k = 1, 2, ...) is ``min_backoff * 2**(k-1)`` for the
    first ``max_doublings`` doublings, then grows linearly by the last doubled
    interval, and never exceeds ``max_backoff``. A task fails for good only when
    every limit that is set is exceeded (attempts and age); with none set it retries
    forever.
    """

    max_attempts: int | None = 5
    min_backoff: float = 1.0
    max_backoff: float = 300.0
    max_doublings: int = 5
    #: Seconds since the task was created after which it may fail for good.
    age_limit: float | None = None
    #: Fraction of the delay added or taken at random, so retries do not stampede.
    jitter: float = 0.1

    @classmethod
    def default(cls) -> RetryPolicy:
        """Return the policy from the LONGTASK_RETRY setting (a dict of these fields)."""
        return cls(**settings.RETRY)

    def backoff(self, retry: int) -> float:
        """Return the delay before retry number ``retry`` (1-based), without jitter."""
        k = max(0, retry - 1)
        if k <= self.max_doublings:
            delay: float = self.min_backoff * 2**k
        else:
            step = self.min_backoff * 2**self.max_doublings
            delay = step * (k - self.max_doublings + 1)
        return min(delay, self.max_backoff)

    def delay(self, retry: int, rng: Random = random) -> float:
        """Return the delay before retry ``retry``, with jitter."""
        base = self.backoff(retry)
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))

    def gives_up(self, attempts: int, age: float) -> bool:
        """Say whether ``attempts`` failures at ``age`` seconds old mean failing for good."""
        limits = []
        if self.max_attempts is not None:
            limits.append(attempts >= self.max_attempts)
        if self.age_limit is not None:
            limits.append(age >= self.age_limit)
        return bool(limits) and all(limits)

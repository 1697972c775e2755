"""The reporter a running task writes its progress through, and its rate estimate."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from uuid import UUID

from longtask.conf import settings
from longtask.progress.store import (
    MESSAGE_MAX_LENGTH,
    MIN_SAMPLE_INTERVAL,
    ProgressRecord,
    write_progress,
)


class RateEstimator:
    """Exponentially smoothed count-per-second, weighted by elapsed time."""

    def __init__(self, tau: float, start: float, current: float = 0) -> None:
        self.tau = tau
        self.rate: float | None = None
        self._t = start
        self._current = current

    def sample(self, t: float, current: float) -> None:
        dt = t - self._t
        if current < self._current:  # progress went back: start over
            self.rate, self._t, self._current = None, t, current
            return
        if dt < MIN_SAMPLE_INTERVAL:
            return
        instant = (current - self._current) / dt
        if self.rate is None:
            self.rate = instant
        else:
            alpha = 1 - math.exp(-dt / self.tau)
            self.rate += alpha * (instant - self.rate)
        self._t, self._current = t, current


class ProgressReporter:
    """Throttles one task's progress writes without ever losing the last value.

    A call within ``interval`` of the last write is held back and written by a
    one-shot timer at the end of the interval (so a message set just before a long
    step still shows), or by ``flush()``, which the runner calls when the task ends.
    """

    def __init__(
        self,
        task_id: UUID | str,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.task_id = task_id
        self.interval = settings.PROGRESS_INTERVAL if interval is None else interval
        self._clock = clock
        self._wallclock = wallclock
        self._estimator = RateEstimator(settings.ETA_SMOOTHING, start=clock())
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last_write: float | None = None
        self._dirty = False
        self.record: ProgressRecord = {
            "current": 0,
            "total": None,
            "message": "",
            "updated_at": wallclock(),
            "rate": None,
        }

    def update(self, current: float, total: float | None = None, message: str = "") -> None:
        now = self._clock()
        with self._lock:
            self._estimator.sample(now, current)
            self.record = {
                "current": current,
                "total": total,
                "message": str(message)[:MESSAGE_MAX_LENGTH],
                "updated_at": self._wallclock(),
                "rate": self._estimator.rate,
            }
            self._dirty = True
            wait = 0.0 if self._last_write is None else self.interval - (now - self._last_write)
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> ProgressRecord:
        """Write the last value if it has not been written; return it."""
        with self._lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            self._timer = None
            if self._dirty or self._last_write is None:
                write_progress(self.task_id, self.record)
                self._last_write = self._clock()
                self._dirty = False
            return self.record

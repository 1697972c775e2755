"""Progress: what a running task reports (step, total, message, ETA), kept in the cache."""

from longtask.progress.reporter import ProgressReporter, RateEstimator
from longtask.progress.store import (
    MESSAGE_MAX_LENGTH,
    MIN_SAMPLE_INTERVAL,
    ProgressPayload,
    ProgressRecord,
    delete_progress,
    eta_seconds,
    payload,
    progress_key,
    read_many_progress,
    read_progress,
    write_progress,
)

__all__ = [
    "MESSAGE_MAX_LENGTH",
    "MIN_SAMPLE_INTERVAL",
    "ProgressPayload",
    "ProgressRecord",
    "ProgressReporter",
    "RateEstimator",
    "delete_progress",
    "eta_seconds",
    "payload",
    "progress_key",
    "read_many_progress",
    "read_progress",
    "write_progress",
]

"""The durable records: tasks, their subtasks, and the shared state of each queue."""

from longtask.models.queue_state import QueueState
from longtask.models.subtask import SubTask
from longtask.models.task import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    ERROR_MAX_LENGTH,
    FINISHED_STATUSES,
    HistoryEntry,
    LongTask,
    LongTaskQuerySet,
    RunEntry,
    Status,
    one_line,
)

__all__ = [
    "ACTIVE_STATUSES",
    "CLAIMABLE_STATUSES",
    "ERROR_MAX_LENGTH",
    "FINISHED_STATUSES",
    "HistoryEntry",
    "LongTask",
    "LongTaskQuerySet",
    "QueueState",
    "RunEntry",
    "Status",
    "SubTask",
    "one_line",
]

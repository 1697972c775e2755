"""The durable records: tasks, their subtasks, and the shared state of each queue."""

from longtask.models.queue_state import QueueState
from longtask.models.subtask import SubTask
from longtask.models.task import (
    ACTIVE_STATUSES,
    CLAIMABLE_STATUSES,
    ERROR_MAX_LENGTH,
    FINISHED_STATUSES,
    LongTask,
    LongTaskQuerySet,
    Status,
    one_line,
)

__all__ = [
    "ACTIVE_STATUSES",
    "CLAIMABLE_STATUSES",
    "ERROR_MAX_LENGTH",
    "FINISHED_STATUSES",
    "LongTask",
    "LongTaskQuerySet",
    "QueueState",
    "Status",
    "SubTask",
    "one_line",
]

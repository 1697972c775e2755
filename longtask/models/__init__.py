"""The durable records: tasks, their subtasks, the shared state of each queue, the counts."""

from longtask.models.queue_state import QueueState
from longtask.models.rollup import RUN_BUCKETS, TOTALS, TaskMinute
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
    "RUN_BUCKETS",
    "TOTALS",
    "HistoryEntry",
    "LongTask",
    "LongTaskQuerySet",
    "QueueState",
    "RunEntry",
    "Status",
    "SubTask",
    "TaskMinute",
    "one_line",
]

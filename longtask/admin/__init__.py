"""The operators' view of long tasks: list, detail with subtasks, retry, cancel and delete."""

from longtask.admin.task import LongTaskAdmin

__all__ = ["LongTaskAdmin"]

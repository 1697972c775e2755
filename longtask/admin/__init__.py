"""The operators' view of long tasks: list, detail with subtasks, retry, cancel and delete."""

from longtask.admin import site  # noqa: F401  (the dashboard's link on the index)
from longtask.admin.task import LongTaskAdmin

__all__ = ["LongTaskAdmin"]

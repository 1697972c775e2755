"""The task this context is running, for code that cannot be handed it (``set_progress``)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longtask.models import LongTask

_current: contextvars.ContextVar[LongTask | None] = contextvars.ContextVar(
    "longtask_task", default=None
)


def current_task() -> LongTask | None:
    """Return the task whose run is executing in this context, or None."""
    return _current.get()


@contextmanager
def running(task: LongTask) -> Iterator[None]:
    """Make ``task`` the current task while the block runs."""
    token = _current.set(task)
    try:
        yield
    finally:
        _current.reset(token)

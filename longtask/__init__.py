"""longtask: durable long-running work for Django.

The public API is importable from here once Django is set up::

    import longtask

    task = longtask.start("report", {"month": "2026-10"}, owner=request.user)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what __getattr__ below hands out, for the type checker
    from longtask.api import cancel, cancelled, retry, set_progress, start, using_owner
    from longtask.engine.chunks import current_subtask
    from longtask.exceptions import (
        Cancelled,
        FatalError,
        InvalidParameters,
        RetryLater,
        UnknownKind,
    )
    from longtask.kinds import Download, FanOutKind, IterativeKind, Kind, RetryPolicy, register

__all__ = [
    "Cancelled",
    "Download",
    "FanOutKind",
    "FatalError",
    "InvalidParameters",
    "IterativeKind",
    "Kind",
    "RetryLater",
    "RetryPolicy",
    "UnknownKind",
    "cancel",
    "cancelled",
    "current_subtask",
    "register",
    "retry",
    "set_progress",
    "start",
    "using_owner",
]

_LAZY = {
    "start": "longtask.api",
    "retry": "longtask.api",
    "FanOutKind": "longtask.kinds",
    "IterativeKind": "longtask.kinds",
    "current_subtask": "longtask.engine.chunks",
    "cancel": "longtask.api",
    "cancelled": "longtask.api",
    "set_progress": "longtask.api",
    "using_owner": "longtask.api",
    "RetryPolicy": "longtask.kinds",
    "FatalError": "longtask.exceptions",
    "RetryLater": "longtask.exceptions",
    "Cancelled": "longtask.exceptions",
    "Kind": "longtask.kinds",
    "Download": "longtask.kinds",
    "register": "longtask.kinds",
    "InvalidParameters": "longtask.exceptions",
    "UnknownKind": "longtask.exceptions",
}


def __getattr__(name: str) -> object:
    # Lazy, so that listing "longtask" in INSTALLED_APPS does not import models early.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'longtask' has no attribute {name!r}")

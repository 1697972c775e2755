"""Kinds: the named pieces of work a LongTask can run, and their registry."""

from longtask.kinds.base import TASK_KIND_PREFIX, Download, Kind
from longtask.kinds.fanout import FanOutKind
from longtask.kinds.iterative import IterativeKind
from longtask.kinds.registry import KindRegistry, register, registry
from longtask.kinds.retry import RetryPolicy

__all__ = [
    "TASK_KIND_PREFIX",
    "Download",
    "FanOutKind",
    "IterativeKind",
    "Kind",
    "KindRegistry",
    "RetryPolicy",
    "register",
    "registry",
]

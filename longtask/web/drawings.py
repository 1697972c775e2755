"""A kind's drawing of a succeeded task's result, kept per process once drawn.

A succeeded task's page is the page most visited and revisited (the bookmark, the
2 s refresh of an open tab until it stops), and its result never changes: a retry
finishes the task again at a later ``finished_at``, which is part of the key. Drawing a
month's report table through templates costs more than the rest of the page, so the
drawing is kept, in a least-recently-used map bounded by its size in characters.

A kind whose ``display_result`` depends on more than the task (the time, the user, a
file that may go) sets ``Kind.result_html_cached = False`` and is drawn every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from django.utils.safestring import SafeString

from longtask.models import LongTask

#: Characters kept per process, and the largest drawing kept.
BUDGET = 16 * 1024 * 1024
LARGEST = 1024 * 1024

_Key = tuple[UUID, datetime | None, str]


class Drawings:
    """A bounded least-recently-used map of drawings, safe across a process's threads."""

    def __init__(self, budget: int = BUDGET, largest: int = LARGEST) -> None:
        self.budget, self.largest = budget, largest
        self._kept: OrderedDict[_Key, SafeString | str] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: _Key) -> SafeString | str | None:
        with self._lock:
            drawing = self._kept.get(key)
            if drawing is not None:
                self._kept.move_to_end(key)
            return drawing

    def put(self, key: _Key, drawing: SafeString | str) -> None:
        if len(drawing) > self.largest:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._kept[key] = drawing
            self._size += len(drawing)
            while self._size > self.budget:
                _, dropped = self._kept.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._size = 0


results = Drawings()


def result_html(
    draw: Callable[[LongTask], SafeString | str], task: LongTask, cached: bool
) -> SafeString | str:
    """``draw(task)``, or what it returned for this task and finish before."""
    if not cached:
        return draw(task)
    key = (task.pk, task.finished_at, task.kind)
    drawing = results.get(key)
    if drawing is None:
        drawing = draw(task)
        results.put(key, drawing)
    return drawing

"""Shared test helpers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.db import connection

T = TypeVar("T")


def wait_for[T](condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def drain_queue(limit: int = 100_000) -> int:
    """Run every queued job (ORM or Redis broker, delayed ones at once) in this process."""
    from tests import broker

    return broker.drain_queue(limit)


def claim(task: Any) -> Any:
    """Claim ``task`` as a worker would; return the run (None if not claimable), task refreshed."""
    from longtask.engine import states

    claimed = states.claim(task.pk)
    task.refresh_from_db()
    return claimed[0] if claimed else None


def quilt_squares(html: str) -> tuple[int, int]:
    """Return (coloured, blank) squares of the quilt SVG in ``html``."""
    import re

    squares = re.findall(r'<rect x="\d+" y="\d+"[^>]*?(?: fill="(#[0-9a-f]{6})")?/>', html)
    coloured = sum(1 for fill in squares if fill)
    return coloured, len(squares) - coloured


def close_connections_everywhere() -> None:
    """Close this process's database connections: the main thread's and the one of
    channels' database thread (where async code's reads run). A connection left open
    there by a cancelled read would outlive a PostgreSQL restart and fail the next one,
    or keep PostgreSQL from dropping the test database."""
    connection.close()
    asyncio.run(database_sync_to_async(_close_connection)())


def _close_connection() -> None:
    connection.close()  # the calling thread's own connection


def index_walks(plan: list[str], scan: str) -> list[tuple[str, str]]:
    """(index, line) of each scan in a PostgreSQL plan that ``scan`` matches (its first
    group the index name) and under which no ``Index Cond`` searches the index: a walk of
    the whole index, a full scan by another name."""
    walks = []
    for number, line in enumerate(plan):
        match = re.search(scan, line)
        if not match:
            continue
        indent = len(line) - len(line.lstrip())
        details = []
        for following in plan[number + 1 :]:
            if len(following) - len(following.lstrip()) <= indent:
                break
            details.append(following)
        if not any("Index Cond" in detail for detail in details):
            walks.append((match[1], line))
    return walks

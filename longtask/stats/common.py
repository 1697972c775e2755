"""What the parts of the snapshot share."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

LIST_LIMIT = 20
#: The day's series has one point per this many minutes.


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _age(now: datetime.datetime, then: datetime.datetime | None) -> float | None:
    return None if then is None else max(0.0, round((now - then).total_seconds(), 3))


# The grouped counts -------------------------------------------------------------------


def _dicts(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``values()`` as plain dicts (the checker types them as TypedDicts)."""
    return [dict(row) for row in rows]

"""JSON round-trips for what kinds return: parameters, results, subtask results."""

from __future__ import annotations

import json
from typing import Any

from longtask.guards import sizes
from longtask.serialize import dumps, to_json

__all__ = ["result_to_json", "to_json"]


def result_to_json(value: Any) -> Any:
    """Return a result as plain JSON data; raise ResultTooLarge if it is over the limit."""
    text = dumps(value)
    sizes.check_result_size(len(text))  # ASCII-escaped: characters are bytes
    return json.loads(text)

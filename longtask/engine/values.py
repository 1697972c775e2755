"""JSON round-trips for what kinds return: parameters, results, subtask results."""

from __future__ import annotations

import json

from longtask.guards import sizes
from longtask.serialize import JSON, dumps, to_json

__all__ = ["result_to_json", "to_json"]


def result_to_json(value: object) -> JSON:
    """Return a result as plain JSON data; raise ResultTooLarge if it is over the limit."""
    text = dumps(value)
    sizes.check_result_size(len(text))  # ASCII-escaped: characters are bytes
    return json.loads(text)

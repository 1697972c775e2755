"""JSON round-trips for what kinds return: parameters, results, subtask results."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from longtask.guards import sizes


def to_json(value: Any) -> Any:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def result_to_json(value: Any) -> Any:
    """Return a result as plain JSON data; raise ResultTooLarge if it is over the limit."""
    text = json.dumps(value, cls=DjangoJSONEncoder)
    sizes.check_result_size(len(text))  # ASCII-escaped: characters are bytes
    return json.loads(text)

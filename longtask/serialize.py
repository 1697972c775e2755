"""The one JSON encoding of what kinds take and return (dates, decimals, UUIDs as Django does)."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder


def dumps(value: Any) -> str:
    """``value`` as JSON text (ASCII-escaped, so its length in characters is its size in bytes)."""
    return json.dumps(value, cls=DjangoJSONEncoder)


def to_json(value: Any) -> Any:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    return json.loads(dumps(value))

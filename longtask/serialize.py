"""The one JSON encoding of what kinds take and return (dates, decimals, UUIDs as Django does)."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

#: A JSON value: a task's parameters, its result, a subtask's, an iterative cursor. Its
#: shape is each kind's own business, so to the type checker it is ``Any`` on purpose: a
#: recursive union would make every kind narrow its parameters before reading them.
type JSON = Any
#: A JSON object: the parameters of a task or of a subtask.
type JSONObject = dict[str, JSON]


def dumps(value: object) -> str:
    """``value`` as JSON text (ASCII-escaped, so its length in characters is its size in bytes)."""
    return json.dumps(value, cls=DjangoJSONEncoder)


def to_json(value: object) -> JSON:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    return json.loads(dumps(value))

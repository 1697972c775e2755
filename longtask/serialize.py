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


#: Values that are their own JSON data, by exact type (a subclass, an IntEnum say, is not).
_PLAIN = frozenset({type(None), bool, str})
#: An int is its own JSON data if Python writes it as text (at most 4,300 digits by default).
_INT_LIMIT = 10**18


def to_json(value: object) -> JSON:
    """Return ``value`` as plain JSON data, or raise TypeError if it is not JSON-able."""
    kind = type(value)
    if kind in _PLAIN or (kind is int and -_INT_LIMIT < value < _INT_LIMIT):  # type: ignore[operator]
        return value  # what the round trip returns (a no-op subtask's None, a count)
    return json.loads(dumps(value))

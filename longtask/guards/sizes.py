"""Size limits: parameters and results are stored as JSON in the row, so they are capped."""

from __future__ import annotations

from longtask.conf import settings
from longtask.exceptions import ParametersTooLarge, ResultTooLarge
from longtask.serialize import JSONObject, dumps


def format_bytes(size: int) -> str:
    """Write a byte count the way the limits are documented (64 KiB, 1 MiB)."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


def json_size(value: object) -> int:
    """Return the length of ``value``'s JSON as stored (ASCII-escaped, so bytes = characters)."""
    if value is None:
        return 4  # null: a no-op subtask's result, without writing it out
    if type(value) is bool or (type(value) is int and -(10**18) < value < 10**18):
        return len(str(value).lower())  # true, false, 12
    return len(dumps(value))


def check_parameters_size(parameters: JSONObject) -> None:
    """Raise ParametersTooLarge if the parameters' JSON is over the limit."""
    size, limit = json_size(parameters), settings.MAX_PARAMETERS_BYTES
    if size > limit:
        size_text = f"parameters are {size} bytes, over the {format_bytes(limit)} limit"
        raise ParametersTooLarge(size_text)


def check_result_size(size: int) -> None:
    """Raise ResultTooLarge if a result of ``size`` bytes of JSON is over the limit."""
    limit = settings.MAX_RESULT_BYTES
    if size > limit:
        raise ResultTooLarge(f"result is {size} bytes, over the {format_bytes(limit)} limit")

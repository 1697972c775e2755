from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """Format seconds as "1 h 2 min", "3 min 4 s" or "5 s"."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


@register.filter
def pretty_json(value: object) -> str:
    """Indented JSON (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)

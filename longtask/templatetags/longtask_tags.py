from __future__ import annotations

from django import template

from longtask import display

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """Format seconds as "1 h 2 min", "3 min 4 s" or "5 s"."""
    return display.duration_text(seconds)


@register.filter
def waiting(jobs_ahead: int | None) -> str:
    """Say where a task that waits for a worker stands: "Waiting: 4,300 jobs ahead."."""
    return display.waiting_text(jobs_ahead)


@register.filter
def pretty_json(value: object) -> str:
    """Indented JSON (escaped by the template like any other text)."""
    return display.json_text(value)

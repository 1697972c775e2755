"""Sparklines drawn on the server: a small SVG per series, no script and no style attribute.

The page's Content-Security-Policy allows no inline styles, so the drawing carries only
geometry and classes; ``static/longtask/ops.css`` colours it.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import format_html
from django.utils.safestring import SafeString

WIDTH = 240
HEIGHT = 40
#: Room kept free above and below the line, so that its stroke is never cut.
PAD = 2.0


def points(values: Sequence[float], width: int = WIDTH, height: int = HEIGHT) -> str:
    """The polyline's points: x across the width, y up from the bottom to the largest value."""
    if not values:
        return ""
    top = max(values)
    step = width / (len(values) - 1) if len(values) > 1 else 0.0
    usable = height - 2 * PAD
    coordinates = []
    for index, value in enumerate(values):
        y = height - PAD - (usable * value / top if top > 0 else 0.0)
        coordinates.append(f"{index * step:.1f},{y:.1f}")
    if len(coordinates) == 1:  # one value: a flat line across
        coordinates.append(f"{width:.1f},{coordinates[0].split(',')[1]}")
    return " ".join(coordinates)


def sparkline(
    values: Sequence[float],
    *,
    label: str,
    css_class: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> SafeString:
    """An ``<svg>`` of ``values`` as a line, titled ``label`` for screen readers (escaped)."""
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="{classes}" viewBox="0 0 {w} {h}" '
        'width="{w}" height="{h}" role="img" aria-label="{label}"><title>{label}</title>'
        '<line class="axis" x1="0" y1="{base}" x2="{w}" y2="{base}"/>'
        '<polyline class="line" fill="none" points="{points}"/></svg>',
        classes=" ".join(["sparkline", *css_class.split()]),
        w=width,
        h=height,
        label=label,
        base=f"{height - PAD:.1f}",
        points=points(list(values), width, height),
    )

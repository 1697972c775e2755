"""The quilt: a grid of squares, each coloured by one subtask."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from django import forms
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

import longtask
from longtask import current_subtask
from longtask.kinds import FanOutKind
from longtask.models import LongTask, Status, SubTask

MAX_SIDE = 200
COLOR = re.compile(r"^#[0-9a-f]{6}$")


class TransientSquareError(Exception):
    """A simulated passing failure (retried)."""


class QuiltForm(forms.Form):
    rows = forms.IntegerField(min_value=1, max_value=MAX_SIDE, initial=8)
    cols = forms.IntegerField(min_value=1, max_value=MAX_SIDE, initial=8)
    work_ms = forms.IntegerField(
        label="Work per square (ms)", min_value=0, max_value=5000, initial=0, required=False
    )
    fail_rate = forms.FloatField(
        label="Failure rate",
        min_value=0,
        max_value=1,
        initial=0,
        required=False,
        help_text="Probability that an attempt at a square fails (the last attempt never does).",
    )

    def clean_work_ms(self) -> int:
        return self.cleaned_data["work_ms"] or 0

    def clean_fail_rate(self) -> float:
        return self.cleaned_data["fail_rate"] or 0.0


#: Side of a square in the quilt's units (a square's cell is 1): the rest is the gap.
SQUARE = 0.94
#: Hatching of a square whose subtask failed for good (class "failed", set by quilt.js).
FAILED_PATTERN = (
    '<defs><pattern id="quilt-failed" width=".2" height=".2" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(45)"><rect width=".2" height=".2" fill="#fff"/>'
    '<rect width=".1" height=".2" fill="#fdd"/></pattern></defs>'
)


def render_quilt(rows: int, cols: int, colors: Iterable[tuple[int, str | None]]) -> SafeString:
    """Render the grid as SVG; ``colors`` gives (index, colour) for the squares done so far.

    Colours are ``fill`` attributes, not ``style`` ones: the Content-Security-Policy allows
    no inline style. The squares are the SVG's first children, in index order (quilt.js
    paints ``children[index]``).
    """
    squares = [""] * (rows * cols)
    for index, color in colors:
        if 0 <= index < len(squares) and color and COLOR.match(color):
            squares[index] = color
    # Built as one string: a 200x200 quilt is 40,000 squares, too many for a template loop.
    size = f'width="{SQUARE}" height="{SQUARE}"'
    cells = "".join(
        f'<rect x="{index % cols}" y="{index // cols}" {size}'
        + (f' fill="{color}"/>' if color else "/>")
        for index, color in enumerate(squares)
    )
    gap = round(1 - SQUARE, 2)
    grid = format_html(
        '<svg class="quilt" data-rows="{}" data-cols="{}" viewBox="{} {} {} {}" role="img"'
        ' aria-label="A quilt of {} by {} squares">',
        rows,
        cols,
        -gap,
        -gap,
        cols + gap,
        rows + gap,
        rows,
        cols,
    )
    return mark_safe(f"{grid}{cells}{FAILED_PATTERN}</svg>")  # noqa: S308 (ints; colours match COLOR)


@longtask.register
class Quilt(FanOutKind):
    name = "quilt"
    title = "New quilt"
    description = "A grid of squares; each square is one subtask that picks a random colour."
    form_class = QuiltForm
    order = 10
    failure_policy = FanOutKind.TOLERATE
    # The status page: the quilt's look, its live area, and the script that colours it live.
    stylesheet = "quiltsite/quilt.css"
    live_template = "quiltsite/quilt_live.html"
    live_script = "quiltsite/quilt.js"

    def split(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for row in range(params["rows"]):
            for col in range(params["cols"]):
                yield {
                    "row": row,
                    "col": col,
                    "work_ms": params["work_ms"],
                    "fail_rate": params["fail_rate"],
                }

    def run_subtask(self, params: dict[str, Any]) -> dict[str, Any]:
        if params["work_ms"]:
            time.sleep(params["work_ms"] / 1000)
        context = current_subtask()
        last_attempt = context is None or (
            context.max_attempts is not None and context.attempt >= context.max_attempts
        )
        if not last_attempt and random.random() < params["fail_rate"]:
            raise TransientSquareError(f"square {params['row']},{params['col']} slipped")
        color = f"#{random.randrange(0x1000000):06x}"
        return {"row": params["row"], "col": params["col"], "color": color}

    def gather(self, task: LongTask, results: Iterable[Any]) -> dict[str, Any]:
        rows, cols = task.parameters["rows"], task.parameters["cols"]
        colors: list[list[str | None]] = [[None] * cols for _ in range(rows)]
        for result in results:
            if result is not None:
                colors[result["row"]][result["col"]] = result["color"]
        return {"rows": rows, "cols": cols, "colors": colors}

    def display_progress(self, task: LongTask) -> SafeString:
        done = (
            SubTask.objects.filter(parent=task, status=Status.SUCCEEDED)
            .values_list("index", "result")
            .iterator(chunk_size=5000)
        )
        colors = ((index, (result or {}).get("color")) for index, result in done)
        return render_quilt(task.parameters["rows"], task.parameters["cols"], colors)

    def display_result(self, task: LongTask) -> SafeString:
        cols = task.result["cols"]
        colors = (
            (r * cols + c, color)
            for r, line in enumerate(task.result["colors"])
            for c, color in enumerate(line)
        )
        return render_quilt(task.result["rows"], cols, colors)

"""``bench-noop``: a fan-out of N subtasks that do nothing, for bench/scale.py.

The quilt stays at most 200x200 (its result is a grid); this kind has no grid, so it
measures the engine alone at a million subtasks. Its gather returns the count it saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django import forms

import longtask
from longtask.kinds import FanOutKind


class NoopForm(forms.Form):
    n = forms.IntegerField(min_value=1, max_value=10_000_000)


@longtask.register
class Noop(FanOutKind):
    name = "bench-noop"
    title = "Bench: no-op fan-out"
    form_class = NoopForm

    def split(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for _ in range(params["n"]):
            yield {}

    def run_subtask(self, params: dict[str, Any]) -> None:
        return None

    def gather(self, task: Any, results: Iterable[Any]) -> dict[str, int]:
        return {"subtasks": sum(1 for _ in results)}

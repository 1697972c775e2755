"""Kinds used only by tests."""

from __future__ import annotations

from typing import Any

from django import forms

from longtask.kinds import Kind


class CountForm(forms.Form):
    n = forms.IntegerField(min_value=0, max_value=1000)
    message = forms.CharField(required=False)


class Count(Kind):
    name = "test-count"
    title = "Count"
    form_class = CountForm

    def run(self, task: Any, params: dict[str, Any]) -> dict[str, Any]:
        for i in range(params["n"]):
            task.progress(i + 1, params["n"], params["message"] or f"step {i + 1}")
        return {"counted": params["n"], "message": params["message"]}


class Boom(Kind):
    name = "test-boom"

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        task.progress(1, 3, "about to fail")
        raise RuntimeError("it broke\non two lines")


class NotJson(Kind):
    name = "test-not-json"

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        return {"value": object()}

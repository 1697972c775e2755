"""Kinds used only by tests."""

from __future__ import annotations

import time
from typing import Any

from django import forms

from longtask import current_subtask
from longtask.exceptions import FatalError, RetryLater
from longtask.kinds import FanOutKind, Kind, RetryPolicy


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
    retry = RetryPolicy(max_attempts=1)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        task.progress(1, 3, "about to fail")
        raise RuntimeError("it broke\non two lines")


class NotJson(Kind):
    name = "test-not-json"
    retry = RetryPolicy(max_attempts=1)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        return {"value": object()}


class SquaresForm(forms.Form):
    n = forms.IntegerField(min_value=0, max_value=100_000)
    fail_index = forms.IntegerField(required=False)  # this subtask always fails
    flaky = forms.IntegerField(required=False)  # every subtask fails this many attempts first


GATHERED: list[str] = []


class Squares(FanOutKind):
    name = "test-squares"
    form_class = SquaresForm
    subtask_retry = RetryPolicy(max_attempts=3, min_backoff=0.01)

    def split(self, params: dict[str, Any]):
        for i in range(params["n"]):
            yield {"i": i, "fail": params["fail_index"] == i, "flaky": params["flaky"] or 0}

    def run_subtask(self, params: dict[str, Any]) -> Any:
        if params["fail"]:
            raise ValueError(f"no square for {params['i']}")
        if current_subtask().attempt <= params["flaky"]:
            raise ConnectionError("flaky")
        return params["i"] ** 2

    def gather(self, task: Any, results: Any) -> Any:
        GATHERED.append(str(task.pk))
        return list(results)


class TolerantSquares(Squares):
    name = "test-squares-tolerant"
    failure_policy = FanOutKind.TOLERATE


class OneShotSquares(Squares):
    name = "test-squares-oneshot"
    subtask_retry = RetryPolicy(max_attempts=1)


#: Indexes that SwitchableSquares fails, changed by tests between runs (in-process only).
FAILING: set[int] = set()


class SwitchableSquares(Squares):
    name = "test-squares-switchable"
    subtask_retry = RetryPolicy(max_attempts=1)

    def run_subtask(self, params: dict[str, Any]) -> Any:
        if params["i"] in FAILING:
            raise ValueError(f"square {params['i']} is switched off")
        return params["i"] ** 2


class FlakyForm(forms.Form):
    fail_times = forms.IntegerField(min_value=0, required=False)
    mode = forms.CharField(required=False)  # "", "fatal", "declared-fatal", "later"


class Flaky(Kind):
    """Fails its first ``fail_times`` attempts in the way ``mode`` says."""

    name = "test-flaky"
    form_class = FlakyForm
    retry = RetryPolicy(max_attempts=5, min_backoff=0.01, max_backoff=0.05)
    fatal_exceptions = (KeyError,)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        if task.attempts <= (params["fail_times"] or 0):
            if params["mode"] == "fatal":
                raise FatalError("bad input, do not retry")
            if params["mode"] == "declared-fatal":
                raise KeyError("missing")
            if params["mode"] == "later":
                raise RetryLater(30)
            raise ConnectionError(f"attempt {task.attempts} failed")
        return {"attempts": task.attempts}


class Loop(Kind):
    """Reports progress until cancelled (or 10,000 steps)."""

    name = "test-loop"

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        for i in range(10_000):
            task.progress(i, 10_000, "looping")
            time.sleep(0.01)
        return "never cancelled"


class Sleepy(Kind):
    """Outlives its time limit on the first attempt."""

    name = "test-sleepy"
    time_limit = 1
    retry = RetryPolicy(max_attempts=2, min_backoff=0.01)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        if task.attempts == 1:
            time.sleep(30)
        return "woke up in time"


class TimeLimited(Kind):
    """Outlives its time limit every time (django-q2 then replaces the worker process)."""

    name = "test-time-limited"
    time_limit = 1
    retry = RetryPolicy(max_attempts=1)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        time.sleep(30)


class FramedForm(forms.Form):
    n = forms.IntegerField(min_value=0, max_value=100)
    work_ms = forms.IntegerField(min_value=0, max_value=5000, required=False)


class Framed(FanOutKind):
    """A fan-out that brings its own live renderer: a second client of status.js's frames.

    Its template and script are test files (tests/templates/tests/, tests/static/tests/),
    found where the ``tests`` app is installed (LONGTASK_TEST_APP=1) or added by a test.
    """

    name = "test-framed"
    form_class = FramedForm
    stylesheet = "tests/framed.css"
    live_template = "tests/framed_live.html"
    live_script = "tests/framed.js"

    def split(self, params: dict[str, Any]):
        for i in range(params["n"]):
            yield {"i": i, "work_ms": params["work_ms"] or 0}

    def run_subtask(self, params: dict[str, Any]) -> Any:
        time.sleep(params["work_ms"] / 1000)
        return {"i": params["i"]}

    def gather(self, task: Any, results: Any) -> Any:
        return {"framed": len(list(results))}

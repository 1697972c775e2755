"""Fuzzing that reaches the workers: real django-q2 clusters run generated and hostile tasks.

test_fuzz.py feeds the forms, endpoints, CLI and websocket frames; here the tasks run.

- Valid parameters, drawn from each demo kind's own declaration (its form's fields, or a
  django.tasks function's signature), run on real clusters: every task succeeds and its
  result round-trips as strict JSON; the workers log no unhandled exception.
- Rows written straight to the table with hostile parameters (around ``start()`` and
  its form) fail at once with a one-line error naming the problem; the clusters go on
  running valid tasks, and the sweeper, run over hostile rows it must recover, stays clean.

The engine fixes these found have fast in-process regression tests first. One pair of
clusters (tasks, subtasks) then serves the rest of the module; sizes are kept small.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django import forms
from django.conf import settings
from django.core.validators import RegexValidator
from django.db import close_old_connections, transaction
from django.db.models import JSONField, TextField, Value
from django.tasks import Task
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import longtask
from longtask.backends import kind_name
from longtask.engine import enqueue, run
from longtask.engine.recovery import sweep
from longtask.kinds import registry
from longtask.models import ACTIVE_STATUSES, LongTask, Status, SubTask
from quiltsite import tasks as demo_tasks
from quiltsite.quilt import COLOR
from tests.helpers import wait_for
from tests.processes import qcluster

pytestmark = pytest.mark.django_db(transaction=True)


# Hostile rows -----------------------------------------------------------------------------


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


#: Every column but the parameters (a hostile row's may not even be readable).
READABLE = [f.attname for f in LongTask._meta.concrete_fields if f.name != "parameters"]


@dataclass(frozen=True)
class Hostile:
    """A row no start() would write: ``params`` as given, or ``raw`` JSON text."""

    kind: str
    params: Any = None
    #: JSON text written as is (Django's encoder would refuse it, or write it otherwise).
    raw: str | None = None
    #: Words the task's error must contain (one of them, "|" between alternatives).
    names: str = ""

    def named_in(self, error: str) -> bool:
        return any(words in error for words in self.names.split("|"))

    def __repr__(self) -> str:
        return f"Hostile({self.kind!r}, {str(self.raw or self.params)[:80]})"

    def row(self, **fields: Any) -> LongTask:
        params = self.params
        if self.raw is not None:
            params = Value(self.raw, output_field=TextField())
        elif params is None:
            params = Value(None, output_field=JSONField())  # JSON null, not SQL NULL
        task = LongTask.objects.create(kind=self.kind, queue="default", **fields)
        # An UPDATE, since an INSERT would read the expression's value back.
        LongTask.objects.filter(pk=task.pk).update(parameters=params)
        return LongTask.objects.defer("parameters").get(pk=task.pk)

    @property
    def readable(self) -> bool:
        try:
            json.loads(self.raw or "null")
        except ValueError:
            return False
        return True


def assert_failed_clearly(task: LongTask, hostile: Hostile) -> None:
    """FAILED at the first attempt, with a one-line error naming the problem."""
    assert task.status == Status.FAILED, (hostile, task.status, task.error)
    assert hostile.named_in(task.error), (hostile, task.error)
    assert "\n" not in task.error and "Traceback" not in task.error, task.error
    assert task.attempts <= 1, (hostile, task.attempts, task.history)


def dead_run(**fields: Any) -> dict[str, Any]:
    """The columns of a run whose worker died an hour ago."""
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    return {
        "status": Status.RUNNING,
        "token": "deadbeefdeadbeef",
        "attempts": 1,
        "started_at": long_ago,
        "heartbeat_at": long_ago,
        **fields,
    }


COUNT_TO = kind_name(demo_tasks.count_to)
NOOP = kind_name(demo_tasks.noop)
QUILT = {"rows": 2, "cols": 2}

# Named, for the sweeper's test and the regression tests below.
MISSING_KEYS = Hostile("quilt", {}, names="rows: This field is required")
HUGE_QUILT = Hostile("quilt", {"rows": 10**9, "cols": 10**9}, names="less than or equal to 200")
NEGATIVE = Hostile("quilt", {"rows": -3, "cols": 2}, names="rows: Ensure")
BOOL_AS_INT = Hostile("quilt", {"rows": True, "cols": 2}, names="rows: Enter a whole number")
BAD_MONTH = Hostile("report", {"month": "2026-13", "work_ms": 0}, names="month: Enter a month")
NOT_AN_OBJECT = Hostile("recount", [2026], names="a JSON object is needed, not an array")
ARGS_NOT_A_LIST = Hostile(COUNT_TO, {"args": 5, "kwargs": {}}, names="invalid parameters")
#: A number Python refuses to read back (over its 4300-digit limit for int strings).
UNREADABLE = Hostile(
    "quilt", raw='{"rows": 1' + "0" * 5000 + ', "cols": 2}', names="cannot be read"
)
IMPORT_VALUE_ERROR = Hostile("task:.x", {}, names="unknown task kind 'task:.x'")
IMPORT_TYPE_ERROR = Hostile("task:..", {}, names="unknown task kind 'task:..'")

HOSTILE = [
    # Missing keys, wrong types, strings where ints go.
    MISSING_KEYS,
    BOOL_AS_INT,
    Hostile("quilt", {"rows": "abc", "cols": 2}, names="rows: Enter a whole number"),
    Hostile("quilt", {"rows": 2.5, "cols": 2}, names="rows: Enter a whole number"),
    Hostile("report", {"month": 202610, "work_ms": 0}, names="month: Enter a month"),
    Hostile("report", {"work_ms": 0}, names="month: This field is required"),
    Hostile("recount", {"year": "abc"}, names="year: Enter a whole number"),
    Hostile("recount", {"year": 2026, "work_ms": "fast"}, names="work_ms: Enter a whole number"),
    # Huge numbers and negative sizes.
    HUGE_QUILT,
    NEGATIVE,
    Hostile("quilt", {"rows": 10**40, "cols": 1}, names="rows: Ensure"),
    Hostile("quilt", {**QUILT, "cols": 0}, names="cols: Ensure"),
    Hostile("quilt", {**QUILT, "work_ms": -5}, names="work_ms: Ensure"),
    Hostile("quilt", {**QUILT, "work_ms": 10**12}, names="work_ms: Ensure"),  # years a square
    BAD_MONTH,
    Hostile("report", {"month": "2026-10", "work_ms": -1}, names="work_ms: Ensure"),
    Hostile("report", {"month": "9" * 100_000}, names="at most 7 characters"),
    Hostile("recount", {"year": 10**20}, names="year: Ensure"),
    # NaN-like values: as strings, and as numbers JSON carries that Python reads as inf.
    Hostile("quilt", {**QUILT, "fail_rate": "NaN"}, names="fail_rate: Enter a number"),
    Hostile("quilt", {**QUILT, "fail_rate": "-Infinity"}, names="fail_rate: Enter a number"),
    # SQLite reads 1e999 back as infinity (the form names the field); PostgreSQL's jsonb
    # keeps it as a 1,000-digit integer, which the form's float() cannot convert.
    Hostile(
        "quilt",
        raw='{"rows": 2, "cols": 2, "fail_rate": 1e999}',
        names="fail_rate:|invalid parameters: OverflowError",
    ),
    Hostile(
        "quilt", raw='{"rows": -1e999, "cols": 2}', names="rows: Enter a whole number|rows: Ensure"
    ),
    # Nested junk, deep nesting, and no object at all.
    Hostile("quilt", {"rows": {"a": [1, {"b": None}]}, "cols": [2]}, names="rows: Enter"),
    Hostile("quilt", {"rows": nested(900), "cols": 2}, names="rows: Enter a whole number"),
    Hostile("report", {"month": ["2026-10"], "work_ms": 0}, names="month: Enter a month"),
    NOT_AN_OBJECT,
    Hostile("quilt", "rows=3", names="a JSON object is needed, not a string"),
    Hostile("quilt", None, names="a JSON object is needed, not null"),
    UNREADABLE,
    # Unknown kinds, and kind names a django.tasks import chokes on.
    Hostile("no-such-kind", {}, names="unknown task kind 'no-such-kind'"),
    Hostile("", {}, names="unknown task kind ''"),
    IMPORT_VALUE_ERROR,
    IMPORT_TYPE_ERROR,
    Hostile("task:os.system", {"args": ["true"], "kwargs": {}}, names="unknown task kind"),
    Hostile("task:quiltsite.tasks", {}, names="unknown task kind"),
    # django.tasks functions: arguments of the wrong shape, and ones the function refuses.
    ARGS_NOT_A_LIST,
    Hostile(COUNT_TO, {"args": [], "kwargs": "n"}, names="invalid parameters: ValueError"),
    Hostile(NOOP, {"args": [1, 2], "kwargs": {}}, names="takes 0 positional arguments"),
]


# The engine's fixes, in-process (no cluster) --------------------------------------------


@pytest.mark.parametrize("hostile", [IMPORT_VALUE_ERROR, IMPORT_TYPE_ERROR], ids=lambda h: h.kind)
def test_a_kind_name_the_import_chokes_on_is_an_unknown_kind(hostile, client, viewer):
    client.force_login(viewer)  # (a django.tasks task is not open by its URL alone)
    assert registry.find(hostile.kind) is None  # (it raised ValueError / TypeError)
    task = hostile.row()
    with transaction.atomic():
        enqueue.task_job(task)  # the dispatch asks the registry too
        transaction.set_rollback(True)  # (no job left for a cluster of a later test)
    assert client.get(f"/tasks/{task.pk}/").status_code == 200
    run.run(str(task.pk))  # (it raised before the claim: the task stayed QUEUED)
    task.refresh_from_db()
    assert_failed_clearly(task, hostile)
    assert client.get(f"/tasks/{task.pk}.json").json()["status"] == "FAILED"


@pytest.mark.parametrize(
    "hostile",
    [MISSING_KEYS, HUGE_QUILT, NEGATIVE, BOOL_AS_INT, BAD_MONTH, NOT_AN_OBJECT, ARGS_NOT_A_LIST],
    ids=repr,
)
def test_the_worker_checks_stored_parameters_before_the_kind_sees_them(hostile):
    task = hostile.row()
    run.run(str(task.pk))
    task.refresh_from_db()
    assert_failed_clearly(task, hostile)
    assert task.history[-1]["exception"] == "longtask.exceptions.InvalidStoredParameters"
    assert not SubTask.objects.filter(parent=task).exists()  # nothing split


def test_the_kind_runs_with_the_parameters_as_its_form_reads_them():
    # Numbers as text, and no optional fields (as from a form that has gained them since):
    # the split gets ints and the defaults (range("2") raised TypeError, then a KeyError).
    task = Hostile("quilt", {"rows": "2", "cols": " 3 "}).row()
    run.run(str(task.pk))
    task.refresh_from_db()
    assert (task.status, task.subtasks_total, task.error) == (Status.RUNNING, 6, "")
    last = SubTask.objects.get(parent=task, index=5)
    assert last.parameters == {"row": 1, "col": 2, "work_ms": 0, "fail_rate": 0.0}
    assert task.parameters == {"rows": "2", "cols": " 3 "}  # the row is left as written


def test_a_row_whose_parameters_python_cannot_read_fails_at_once():
    task = UNREADABLE.row()
    # (The job raised ValueError reading the row: the task stayed QUEUED, its job
    # re-dispatched by every sweep.)
    run.run(str(task.pk))
    task.refresh_from_db(fields=READABLE)
    assert_failed_clearly(task, UNREADABLE)


def test_a_stale_run_python_cannot_read_does_not_stop_the_sweeper(caplog):
    unreadable = UNREADABLE.row(**dead_run())
    other = Hostile("report", {"month": "2026-10", "work_ms": 0}).row(**dead_run())
    with caplog.at_level(logging.INFO, logger="longtask"):
        counts = sweep()
    # (The step raised ValueError reading the stale rows: no run at all was recovered.)
    assert counts["tasks"] == 2, counts
    assert not [r for r in caplog.records if r.exc_info], "the sweep logged an exception"
    for task in (unreadable, other):
        task.refresh_from_db(fields=READABLE)
        assert task.status == Status.RETRYING, (task.status, task.error)
        assert task.error.startswith("RuntimeError: WorkerLost")


def test_the_pages_of_a_row_python_cannot_read_answer():
    task = UNREADABLE.row()
    client = Client(raise_request_exception=False)
    assert client.get(f"/tasks/{task.pk}.json").status_code == 200
    assert client.get(f"/tasks/{task.pk}/").status_code == 200


# The clusters ---------------------------------------------------------------------------

#: Seconds a batch of tasks may take to finish on the clusters.
FINISH_WITHIN = 60


@dataclass
class Workers:
    """The module's running clusters and their logs."""

    processes: list[Any]
    logs: list[Path]

    def mark(self) -> list[int]:
        return [log.stat().st_size for log in self.logs]

    def output_since(self, mark: list[int]) -> str:
        parts = []
        for log, offset in zip(self.logs, mark, strict=True):
            with open(log, "rb") as f:
                f.seek(offset)
                parts.append(f.read().decode(errors="replace"))
        return "".join(parts)

    def assert_healthy(self, mark: list[int]) -> None:
        """Both clusters still run, and no job raised an exception the engine missed."""
        assert all(p.poll() is None for p in self.processes), "a cluster exited"
        output = self.output_since(mark)
        # django-q2 logs "Failed '<func>' (<name>) - <exception> : <traceback>" for a job
        # that raised: longtask's run and chunk jobs record every failure themselves.
        unhandled = [line for line in output.splitlines() if "Failed '" in line]
        assert not unhandled, unhandled[:5]
        rest = _without_task_failure_reports(output)
        assert "Traceback" not in rest, rest[-3000:]


#: A log record's first line (longtask's and Django's format, or django-q2's).
_RECORD = re.compile(r"^(\d{4}-\d{2}-\d{2} |\d{2}:\d{2}:\d{2} \[Q\])")


def _without_task_failure_reports(output: str) -> str:
    """Drop Django's own "Task ... state=FAILED" records of django.tasks functions: Django
    logs them with the handled exception's traceback, by design (django/tasks/signals.py)."""
    kept, skipping = [], False
    for line in output.splitlines():
        if _RECORD.match(line):
            skipping = " django.tasks " in line and "state=FAILED" in line
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="module")
def workers(django_db_setup, tmp_path_factory) -> Iterator[Workers]:
    directory = tmp_path_factory.mktemp("fuzz-workers")
    logs = [directory / "tasks.log", directory / "subtasks.log"]
    subtasks = {"Q_CLUSTER_NAME": settings.LONGTASK_QUEUES["subtasks"]["cluster"]}
    # Four workers for tasks: an iterative recount queues a job per batch behind the rest.
    with (
        qcluster(logs[0], LONGTASK_WORKERS="4") as tasks_cluster,
        qcluster(logs[1], **subtasks) as subtasks_cluster,
    ):
        yield Workers([tasks_cluster, subtasks_cluster], logs)


def all_finished(tasks: list[LongTask]) -> bool:
    close_old_connections()
    rows = LongTask.objects.filter(pk__in=[task.pk for task in tasks])
    return not rows.filter(status__in=ACTIVE_STATUSES).exists()


def wait_until_finished(tasks: list[LongTask], workers: Workers, mark: list[int]) -> None:
    try:
        wait_for(lambda: all_finished(tasks), FINISH_WITHIN, f"{len(tasks)} tasks to finish")
    except AssertionError:
        rows = LongTask.objects.filter(pk__in=[task.pk for task in tasks])
        stuck = list(rows.filter(status__in=ACTIVE_STATUSES).values_list("kind", "status", "error"))
        output = workers.output_since(mark)[-3000:]
        raise AssertionError(f"not finished: {stuck[:10]}\n{output}") from None
    for task in tasks:
        task.refresh_from_db(fields=READABLE)


# Valid parameters, derived from each kind's declaration, on the clusters ------------------

#: Upper bounds that keep the generated work small (squares, ms of work, steps).
SMALL = {"rows": 4, "cols": 4, "work_ms": 3, "n": 5, "step_ms": 3}


def field_values(field: forms.Field, cap: int | None) -> st.SearchStrategy[Any]:
    """Values ``field`` accepts (FloatField before IntegerField: it is a subclass)."""
    if isinstance(field, forms.FloatField):
        return st.floats(field.min_value, field.max_value, allow_nan=False, allow_infinity=False)
    if isinstance(field, forms.IntegerField):
        high = field.max_value if cap is None else min(cap, field.max_value or cap)
        return st.integers(field.min_value, high)
    if isinstance(field, forms.CharField):
        for validator in field.validators:
            if isinstance(validator, RegexValidator):
                return st.from_regex(validator.regex, fullmatch=True)
        return st.text(max_size=min(field.max_length or 20, 20))
    raise NotImplementedError(f"no strategy for a {type(field).__name__}: add one here")


def form_parameters(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Data the kind's form accepts; an optional field is left out, None, "" or a value.

    A field bounded in SMALL always gets a value (its default may be bigger).
    """
    required, optional = {}, {}
    for name, field in registry.get(kind).form_class.base_fields.items():
        values = field_values(field, SMALL.get(name))
        if field.required or name in SMALL:
            required[name] = values
        else:
            optional[name] = st.none() | st.just("") | values
    return st.fixed_dictionaries(required, optional=optional)


def function_parameters(task: Task) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments of a django.tasks function, from its signature (ints so far)."""
    hints = typing.get_type_hints(task.func)
    required, optional = {}, {}
    for name, parameter in inspect.signature(task.func).parameters.items():
        if hints.get(name) is not int:
            raise NotImplementedError(f"no strategy for {task.name}({name}): add one here")
        values = st.integers(0, SMALL.get(name, 5))
        if parameter.default is inspect.Parameter.empty:
            required[name] = values
        else:
            optional[name] = values
    return st.fixed_dictionaries(required, optional=optional)


#: The demo's django.tasks functions, by kind name.
FUNCTIONS: dict[str, Task] = {
    kind_name(task): task for task in vars(demo_tasks).values() if isinstance(task, Task)
}

#: What each demo kind is started with; a kind missing here fails the test below.
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "quilt": form_parameters("quilt"),
    "report": form_parameters("report"),
    "recount": form_parameters("recount"),
    **{name: function_parameters(task) for name, task in FUNCTIONS.items()},
}


def demo_kinds() -> set[str]:
    """The demo site's kinds: those quiltsite registers, and its django.tasks functions."""
    registered = {kind.name for kind in registry if type(kind).__module__.startswith("quiltsite.")}
    return registered | set(FUNCTIONS)


def test_every_demo_kind_has_a_strategy():
    assert set(VALID) == demo_kinds()
    assert {"quilt", "report", "recount", COUNT_TO, NOOP} <= set(VALID)


@dataclass(frozen=True)
class Start:
    """One generated start: a kind and the parameters it is started with."""

    kind: str
    params: dict[str, Any]

    def __call__(self) -> LongTask:
        function = FUNCTIONS.get(self.kind)
        if function is None:
            return longtask.start(self.kind, self.params)
        return LongTask.objects.get(pk=function.enqueue(**self.params).id)


def check_result(task: LongTask) -> None:
    """A succeeded task's result is strict JSON (no NaN, no inf) and has its kind's shape."""
    result, params = task.result, task.parameters
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    if task.kind == "quilt":
        assert (result["rows"], result["cols"]) == (params["rows"], params["cols"])
        assert [len(line) for line in result["colors"]] == [params["cols"]] * params["rows"]
        assert all(COLOR.match(color) for line in result["colors"] for color in line)
    elif task.kind == "report":
        assert result["month"] == params["month"]
        assert result["rows"][-1][0] == "total"
    elif task.kind == "recount":
        assert result == {"rows": task.rows_done}
    elif task.kind == COUNT_TO:
        assert result == {"counted": params["kwargs"]["n"]}
    else:
        assert task.kind == NOOP and result is None


#: One draw: one or two starts of every demo kind, run together.
BATCHES = st.fixed_dictionaries(
    {
        kind: st.lists(values.map(lambda p, kind=kind: Start(kind, p)), min_size=1, max_size=2)
        for kind, values in VALID.items()
    }
)


@pytest.mark.integration
@hypothesis_settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=BATCHES)
def test_generated_parameters_of_every_demo_kind_succeed_on_real_workers(workers, batch):
    mark = workers.mark()
    starts = [start for starts in batch.values() for start in starts]
    tasks = [start() for start in starts]
    wait_until_finished(tasks, workers, mark)
    for start, task in zip(starts, tasks, strict=True):
        assert task.status == Status.SUCCEEDED, (start, task.status, task.error)
        check_result(task)
    assert {task.kind for task in tasks} == demo_kinds()
    workers.assert_healthy(mark)


# Hostile rows on the clusters, and the sweeper ------------------------------------------


@pytest.mark.integration
def test_hostile_rows_fail_clearly_and_leave_the_clusters_working(workers, client, viewer):
    client.force_login(viewer)
    mark = workers.mark()
    with transaction.atomic():  # dispatched as start() does: each job commits with its row
        tasks = [hostile.row() for hostile in HOSTILE]
        for task in tasks:
            enqueue.task_job(task)
    wait_until_finished(tasks, workers, mark)
    for hostile, task in zip(HOSTILE, tasks, strict=True):
        assert_failed_clearly(task, hostile)
        assert not SubTask.objects.filter(parent=task).exists(), hostile  # nothing split
        if hostile.readable:  # (see test_the_pages_of_a_row_python_cannot_read_answer)
            assert client.get(f"/tasks/{task.pk}/").status_code == 200, hostile
            assert client.get(f"/tasks/{task.pk}.json").json()["error"] == task.error
    # The clusters still run valid work, tasks and subtasks alike.
    valid = [longtask.start("quilt", {"rows": 2, "cols": 3}), longtask.start("recount", {})]
    wait_until_finished(valid, workers, mark)
    assert [task.status for task in valid] == [Status.SUCCEEDED] * 2, [t.error for t in valid]
    workers.assert_healthy(mark)


#: Hostile rows as the sweeper finds them: runs whose worker died, and jobs that were lost.
STALE = [MISSING_KEYS, HUGE_QUILT, BAD_MONTH, UNREADABLE, IMPORT_VALUE_ERROR]
LOST = [NEGATIVE, BOOL_AS_INT, NOT_AN_OBJECT, ARGS_NOT_A_LIST, IMPORT_TYPE_ERROR]


@pytest.mark.integration
def test_the_sweeper_recovers_hostile_rows_and_stays_clean(workers, caplog):
    mark = workers.mark()
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    stale = [hostile.row(**dead_run()) for hostile in STALE]
    lost = [hostile.row(due_at=long_ago, created_at=long_ago) for hostile in LOST]
    with caplog.at_level(logging.INFO, logger="longtask"):
        counts = sweep()
    assert not [r for r in caplog.records if r.exc_info], "the sweep logged an exception"
    assert (counts["tasks"], counts["requeued"]) == (len(STALE), len(LOST)), counts
    wait_until_finished(stale + lost, workers, mark)
    for hostile, task in zip(STALE + LOST, stale + lost, strict=True):
        # A stale run's next attempt (or the sweep itself) fails it with the problem.
        assert task.status == Status.FAILED, (hostile, task.status, task.error)
        assert hostile.named_in(task.error), (hostile, task.error)
    # Valid work still runs, and once it is done a sweep an hour on finds nothing to do.
    month = {"month": "2026-02", "work_ms": 0}
    valid = [longtask.start("quilt", QUILT), longtask.start("report", month)]
    wait_until_finished(valid, workers, mark)
    assert [task.status for task in valid] == [Status.SUCCEEDED] * 2, [t.error for t in valid]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longtask"):
        counts = sweep(timezone.now() + datetime.timedelta(hours=1))
    assert not any(counts.values()), counts
    assert not [r for r in caplog.records if r.exc_info], "the sweep logged an exception"
    assert not LongTask.objects.filter(status__in=ACTIVE_STATUSES).exists()
    assert not SubTask.objects.filter(status__in=ACTIVE_STATUSES).exists()
    workers.assert_healthy(mark)

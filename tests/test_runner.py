from __future__ import annotations

import pytest
from django.db import transaction

import longtask
from longtask import progress
from longtask.engine import run as runner
from longtask.exceptions import InvalidParameters, UnknownKind
from longtask.models import LongTask, Status
from quiltsite.models import Invoice
from tests import broker

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_queues():
    yield from broker.emptied()


def test_start_validates_saves_and_queues_with_the_row(
    test_kinds_registered, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        task = longtask.start("test-count", {"n": "3"})
    # The ORM broker's job is written in the row's transaction; Redis's is pushed on commit.
    assert len(callbacks) == (0 if broker.on_orm() else 1)
    assert task.status == Status.QUEUED and task.queue == "default"
    assert task.parameters == {"n": 3, "message": ""}
    assert broker.count() == 1


def test_bad_parameters_save_nothing(test_kinds_registered):
    with pytest.raises(InvalidParameters) as info:
        longtask.start("test-count", {"n": "-1"})
    assert "n:" in str(info.value)
    with pytest.raises(UnknownKind):
        longtask.start("no-such-kind", {})
    assert not LongTask.objects.exists() and not broker.count()


def test_rolled_back_start_queues_nothing(
    test_kinds_registered, django_capture_on_commit_callbacks
):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        longtask.start("test-count", {"n": 1})
        raise RuntimeError("roll back")
    assert callbacks == []
    assert not LongTask.objects.exists() and not broker.count()


def test_start_with_an_existing_name_returns_that_task(test_kinds_registered):
    first = longtask.start("test-count", {"n": 1}, name="nightly")
    again = longtask.start("test-count", {"n": 2}, name="nightly")
    assert again.pk == first.pk
    assert LongTask.objects.count() == 1


def test_run_succeeds_and_persists_final_progress(test_kinds_registered):
    task = longtask.start("test-count", {"n": 500, "message": "counting"})
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == {"counted": 500, "message": "counting"}
    assert task.attempts == 1
    # The last call is persisted on the row and in the cache, though writes were throttled.
    assert task.last_progress["current"] == 500
    assert progress.read_progress(task.pk)["current"] == 500


def test_duplicate_delivery_runs_nothing_twice(test_kinds_registered):
    task = longtask.start("test-count", {"n": 1})
    runner.run(str(task.pk))
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.attempts == 1 and task.status == Status.SUCCEEDED


def test_cancelled_task_never_runs(test_kinds_registered):
    task = longtask.start("test-count", {"n": 1})
    assert longtask.cancel(task)
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.CANCELLED and task.attempts == 0


@pytest.mark.parametrize(
    ("kind", "error"),
    [("test-boom", "RuntimeError: it broke on two lines"), ("test-not-json", "TypeError: ")],
)
def test_failures_are_recorded(test_kinds_registered, kind, error):
    task = longtask.start(kind, {})
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error.startswith(error)
    assert "Traceback" in task.traceback
    assert task.result is None


def test_unknown_kind_at_run_time_fails_the_task():
    task = LongTask.objects.create(kind="gone", queue="default")
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.FAILED and "gone" in task.error


def test_missing_task_is_skipped():
    runner.run("00000000-0000-0000-0000-000000000000")


def test_report_is_deterministic_and_reports_progress():
    task = longtask.start("report", {"month": "2026-02", "work_ms": 0})
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    rows = task.result["rows"]
    assert len(rows) == 28 + 1 and rows[-1][0] == "total"
    assert rows[-1][1] == Invoice.objects.filter(date__year=2026, date__month=2).count() > 0
    assert task.last_progress == {
        **task.last_progress,
        "current": 30,
        "total": 30,
        "message": "Done",
    }
    # Run again (another task): the same invoices, the same report.
    again = longtask.start("report", {"month": "2026-02", "work_ms": 0})
    runner.run(str(again.pk))
    again.refresh_from_db()
    assert again.result == task.result


@pytest.mark.parametrize("month", ["2026-13", "26-10", "", "2026-1", "<script>"])
def test_report_rejects_bad_months(month):
    with pytest.raises(InvalidParameters):
        longtask.start("report", {"month": month})

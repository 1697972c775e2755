from __future__ import annotations

import pytest

import longtask
from longtask import progress
from longtask.models import LongTask
from longtask.progress import ProgressReporter, RateEstimator
from tests.helpers import drain_queue, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_payload_shape_and_percent():
    assert progress.payload({"current": 1, "total": 3, "message": "m"}) == {
        "current": 1,
        "total": 3,
        "percent": 33,
        "message": "m",
    }
    assert progress.payload(None) == {"current": 0, "total": None, "percent": None, "message": ""}
    assert progress.payload({"current": 5, "total": 4})["percent"] == 100


def test_eta_from_rate_and_staleness():
    record = {"current": 10, "total": 110, "rate": 5.0, "updated_at": 100.0}
    assert progress.eta_seconds(record, now=100.0) == 20
    assert progress.eta_seconds(record, now=104.0) == 16
    assert progress.eta_seconds(record, now=500.0) == 0
    assert progress.eta_seconds({**record, "rate": None}, now=100.0) is None
    assert progress.eta_seconds({**record, "total": None}, now=100.0) is None
    assert progress.eta_seconds({**record, "current": 110}, now=100.0) == 0
    assert progress.eta_seconds(None) is None


def test_rate_estimator_smooths_and_resets():
    est = RateEstimator(tau=10.0, start=0.0)
    est.sample(0.1, 50)  # too close to the previous sample: merged
    assert est.rate is None
    est.sample(1.0, 10)
    assert est.rate == pytest.approx(10.0)
    est.sample(2.0, 40)  # an instant rate of 30 moves the estimate only part of the way
    assert 10.0 < est.rate < 30.0
    est.sample(3.0, 5)  # went backwards: unknown again
    assert est.rate is None


def test_reporter_throttles_but_never_loses_the_last_value(monkeypatch):
    writes = []
    monkeypatch.setattr(
        progress.reporter, "write_progress", lambda task_id, record: writes.append(record)
    )
    clock = FakeClock()
    reporter = ProgressReporter("t", interval=10.0, clock=clock)
    reporter.update(1, 100, "first")
    assert [w["current"] for w in writes] == [1]
    for i in range(2, 1000):
        reporter.update(i, 100, "busy")
    assert len(writes) == 1  # throttled
    clock.now += 10.0
    reporter.update(1000, 1000, "last but one")
    assert writes[-1]["current"] == 1000
    reporter.update(1001, 1001, "final")
    assert writes[-1]["current"] == 1000
    assert reporter.flush()["message"] == "final"
    assert writes[-1]["message"] == "final"
    count = len(writes)
    reporter.flush()  # nothing new: no write
    assert len(writes) == count


def test_held_back_value_is_written_by_the_timer():
    reporter = ProgressReporter("timer-task", interval=0.05)
    reporter.update(1, 10, "one")
    reporter.update(2, 10, "two, then a long step")
    wait_for(
        lambda: (
            (progress.read_progress("timer-task") or {}).get("message") == "two, then a long step"
        ),
        timeout=5,
        what="the timer to write the held-back progress",
    )


def test_long_messages_are_cut(monkeypatch):
    monkeypatch.setattr(progress.reporter, "write_progress", lambda task_id, record: None)
    reporter = ProgressReporter("t")
    reporter.update(1, 2, "x" * 10_000)
    assert len(reporter.record["message"]) == progress.MESSAGE_MAX_LENGTH


def test_records_are_json_in_the_cache():
    from django.core.cache import cache

    progress.write_progress("abc", {"current": 1, "total": None, "message": "<b>"})
    assert isinstance(cache.get(progress.progress_key("abc")), str)
    assert progress.read_progress("abc")["message"] == "<b>"
    cache.set(progress.progress_key("abc"), "not json{")
    assert progress.read_progress("abc") is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("test_kinds_registered")
@pytest.mark.parametrize("ending", ["succeed", "cancel"])
def test_a_finished_tasks_progress_leaves_the_cache_and_stays_on_the_row(ending):
    task = longtask.start("test-count", {"n": 3, "message": ""})
    progress.write_progress(task.pk, {"current": 1, "total": 3, "message": "", "updated_at": 0})
    assert progress.read_progress(task.pk) is not None
    if ending == "succeed":
        drain_queue()
    else:
        longtask.cancel(task)
    task = LongTask.objects.get(pk=task.pk)
    assert task.is_finished
    assert progress.read_progress(task.pk) is None  # the cache holds active tasks only
    assert task.progress_record() == task.last_progress


@pytest.mark.django_db(transaction=True)
def test_a_first_run_that_reported_no_progress_reads_and_deletes_none(monkeypatch):
    """Nothing can be cached for it (only a run writes progress; a finish deletes it): its
    finish neither reads the cache nor deletes from it, one round trip each to Redis."""
    from longtask.progress import store
    from quiltsite.tasks import noop

    touched: list[str] = []
    read, delete = store.read_progress, progress.delete_progress
    monkeypatch.setattr(store, "read_progress", lambda pk: touched.append("read") or read(pk))
    monkeypatch.setattr(
        progress, "delete_progress", lambda pk: touched.append("delete") or delete(pk)
    )
    result = noop.enqueue()
    drain_queue()
    task = LongTask.objects.get(pk=result.id)
    assert task.status == "SUCCEEDED" and task.attempts == 1
    assert touched == []

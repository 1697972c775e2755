"""Named queues: routing to clusters, rate limits and max concurrency."""

from __future__ import annotations

import datetime
import time

import pytest
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone

import longtask
from longtask.dispatch import concurrency, queues, ratelimit
from longtask.dispatch.queues import Queue, UnknownQueue, parse_rate
from longtask.engine import run as runner
from longtask.models import LongTask, Status, SubTask
from tests.helpers import wait_for
from tests.processes import qcluster

QUEUES = {
    "default": {"cluster": None},
    "subtasks": {"cluster": "longtask-subtasks"},
    "slow": {"cluster": "longtask-slow", "rate": "1/h"},
    "single": {"cluster": "longtask-single", "max_concurrency": 1},
}


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20/s", 20.0), ("90/m", 1.5), ("36 / hour", 0.01), ("2.5/sec", 2.5), (4, 4.0)],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["20", "fast", "0/s", "-1/s", "20/d", ""])
def test_bad_rates_are_refused_with_the_format(text):
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("rate", "burst", "window"),
    [
        (20.0, 20, (20, 1)),  # 20 per second, never more than 20 at once
        (20.0, None, (20, 1)),  # burst defaults to one second's worth
        (20.0, 5, (20, 1)),  # under a second's worth: raised to it (whole-second windows)
        (20.0, 100, (100, 5)),
        (0.5, 1, (1, 2)),
        (1 / 3600, None, (1, 3600)),
    ],
)
def test_rate_and_burst_become_a_moving_window(rate, burst, window):
    assert Queue("q", None, rate=rate, burst=burst).window == window


@override_settings(LONGTASK_QUEUES=QUEUES)
@pytest.mark.django_db
def test_a_start_picks_its_queue_and_unknown_queues_are_refused(test_kinds_registered):
    task = longtask.start("test-count", {"n": 1}, queue="slow")
    assert task.queue == "slow"
    assert queues.cluster_for(task.queue) == "longtask-slow"
    with pytest.raises(UnknownQueue, match="unknown queue 'nope'"):
        longtask.start("test-count", {"n": 1}, queue="nope")
    assert LongTask.objects.count() == 1


@pytest.mark.django_db
def test_the_database_window_admits_exactly_the_burst_then_frees_with_time():
    storage = ratelimit.database_storage()
    assert all(storage.acquire_entry("k", 3, 1) for _ in range(3))
    assert not storage.acquire_entry("k", 3, 1)
    start, count = storage.get_moving_window("k", 3, 1)
    assert count == 3 and time.time() - 1 < start <= time.time()
    # The window moves: once the oldest hit is a second old, one start frees up.
    wait_for(lambda: storage.acquire_entry("k", 3, 1), 3, "the window to move on")
    assert not storage.acquire_entry("other", 0, 1)  # keys are separate; 0 admits none


@override_settings(LONGTASK_QUEUES=QUEUES, LONGTASK_RATE_LIMIT_STORAGE=None)
@pytest.mark.django_db
def test_a_rate_limited_run_is_deferred_not_run_and_not_counted(
    test_kinds_registered, django_capture_on_commit_callbacks
):
    first = longtask.start("test-count", {"n": 1}, queue="slow")
    second = longtask.start("test-count", {"n": 1}, queue="slow")
    ratelimit._limiter.cache_clear()
    runner.run(str(first.pk))  # takes the hour's only start
    first.refresh_from_db()
    assert first.status == Status.SUCCEEDED
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        runner.run(str(second.pk))
    second.refresh_from_db()
    assert (second.status, second.attempts) == (Status.QUEUED, 0)
    from tests import broker

    etas = [
        eta for package, eta in broker.jobs("longtask-slow") if package["args"][0] == str(second.pk)
    ]
    assert etas and etas[-1] > before + datetime.timedelta(minutes=50)


@override_settings(LONGTASK_QUEUES=QUEUES, LONGTASK_STALE_AFTER=60)
@pytest.mark.django_db
def test_concurrency_slots_are_leased_released_and_expire():
    single = queues.get("single")
    token = concurrency.acquire_slot(single)
    assert token
    assert concurrency.acquire_slot(single) is None  # the one slot is taken
    concurrency.release_slot(single, token)
    second = concurrency.acquire_slot(single)
    assert second and second != token
    with override_settings(LONGTASK_STALE_AFTER=-1):
        concurrency.renew_slot(single, second)  # a lease whose worker stopped renewing it...
    assert concurrency.acquire_slot(single)  # ...has expired, and its slot is free again
    assert concurrency.acquire_slot(queues.get("default")) == ""  # no limit: nothing to lease


@override_settings(LONGTASK_QUEUES=QUEUES)
@pytest.mark.django_db
def test_a_full_queue_defers_the_run_without_claiming(test_kinds_registered):
    task = longtask.start("test-count", {"n": 1}, queue="single")
    holder = concurrency.acquire_slot(queues.get("single"))
    with override_settings(LONGTASK_LIMIT_WAIT=0.2):
        runner.run(str(task.pk))
    task.refresh_from_db()
    assert (task.status, task.attempts) == (Status.QUEUED, 0)
    concurrency.release_slot(queues.get("single"), holder)
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED


def state(task: LongTask) -> LongTask:
    close_old_connections()
    task.refresh_from_db()
    return task


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_queue_limited_to_20_per_second_runs_200_subtasks_in_no_less_than_9s(tmp_path):
    # 200 squares on a subtask queue limited to 20/s with a burst of 20, served by two
    # worker processes: the first 20 may start at once, the other 180 need 9 s more.
    limited = {"LONGTASK_QUEUES": "subtasks:rate=20/s,burst=20"}
    task = longtask.start("quilt", {"rows": 10, "cols": 20, "work_ms": 0})
    log = tmp_path / "workers.log"
    worker = ("longtask_worker", "--queue", "subtasks")
    with (
        qcluster(log, command=("longtask_worker", "--queue", "default"), **limited),
        qcluster(log, command=worker, LONGTASK_NODE="node-a", **limited),
        qcluster(log, command=worker, LONGTASK_NODE="node-b", **limited),
    ):
        wait_for(lambda: state(task).is_finished, 120, "the rate-limited quilt to finish")
    output = log.read_text()
    assert task.status == Status.SUCCEEDED, (task.error, output[-3000:])
    rows = SubTask.objects.filter(parent=task)
    assert rows.filter(status=Status.SUCCEEDED).count() == 200
    first_claim = min(rows.values_list("started_at", flat=True))
    span = (max(rows.values_list("finished_at", flat=True)) - first_claim).total_seconds()
    assert span >= 8.8, f"200 subtasks at 20/s took only {span:.1f}s"
    assert set(rows.values_list("worker", flat=True)) == {"node-a", "node-b"}


@pytest.mark.django_db
def test_the_cli_refuses_an_unknown_queue_in_one_line_and_starts_nothing():
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=r"unknown queue 'nope'.*known queues: default"):
        call_command("longtask", "start", "report", "month=2026-10", "--queue", "nope")
    assert not LongTask.objects.exists()


def test_a_misconfigured_queue_fails_the_system_check():
    from longtask.checks import check_queues

    broken = {
        "default": {"cluster": None},
        "subtasks": {"cluster": "longtask-subtasks", "rate": "fast"},
        "x": {"cluster": "nowhere"},
    }
    with override_settings(LONGTASK_QUEUES=broken):
        ids = sorted(message.id for message in check_queues(None))
    assert ids == ["longtask.E001", "longtask.E002"]
    with override_settings(LONGTASK_QUEUES={"default": {"cluster": None}}):
        assert [m.id for m in check_queues(None)] == ["longtask.E003"]  # no "subtasks"
    assert check_queues(None) == []

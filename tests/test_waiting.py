"""While a task only waits for a worker, its status says how many jobs are ahead of it.

On the ORM broker the count is of the jobs queued before the task's own (rows that became
due before it); on Redis it is the length of the queue's list, the task's job included.
Both cost one read of the queue, whatever the number of jobs or of subtasks.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import longtask
from longtask import dispatch, display, documents, progress
from longtask.live import watcher
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import claim
from tests.test_sweep_plans import _full_scans

pytestmark = pytest.mark.usefixtures("test_kinds_registered")


@pytest.fixture(autouse=True)
def _no_jobs_left():
    yield from broker.emptied()


def expected(queued_before: int, queue: str | None = None) -> int:
    """The jobs ahead as the broker tells them: those queued before the task's (ORM),
    every job in the queue's list (Redis)."""
    return queued_before if broker.on_orm() else broker.count(broker.cluster_of(queue))


def waiting(client: Any, task: LongTask) -> Any:
    """The ``waiting`` field of the task's JSON status (None when absent)."""
    response = client.get(f"/tasks/{task.pk}.json")
    assert response.status_code == 200
    return response.json().get("waiting")


def junk_jobs(count: int, queue: str | None = None) -> None:
    """Queue jobs that no test runs, as other people's work waiting in ``queue``."""
    args = [(str(uuid.uuid4()),) for _ in range(count)]
    dispatch.enqueue_many(dispatch.RUN_JOB, args, cluster=broker.cluster_of(queue))


def waiting_fan_out(n: int) -> LongTask:
    """A split fan-out of ``n`` subtasks whose chunk jobs all still wait (rows only)."""
    now = timezone.now()
    parent = LongTask.objects.create(
        kind="test-squares",
        queue="default",
        parameters={"n": n},
        status=Status.RUNNING,
        started_at=now,
        split_done=True,
        subtasks_total=n,
        dispatched_upto=n,
    )
    SubTask.objects.bulk_create(
        SubTask(parent=parent, index=i, parameters={"i": i}, due_at=now) for i in range(n)
    )
    return parent


def reads(client: Any, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return [query["sql"] for query in captured.captured_queries]


def queue_reads(sqls: list[str]) -> list[str]:
    return [sql for sql in sqls if "django_q_ormq" in sql]


@pytest.mark.django_db(transaction=True)
def test_a_queued_task_counts_the_jobs_before_its_own_until_it_is_claimed(client):
    junk_jobs(2, "subtasks")  # another queue's jobs are not ahead of it
    a, b, c = (longtask.start("test-count", {"n": 1}) for _ in range(3))
    assert [waiting(client, task) for task in (a, b, c)] == [
        {"queue": "default", "jobs_ahead": expected(before)} for before in (0, 1, 2)
    ]
    assert broker.run_next(broker.cluster_of(None))  # a worker takes a's job and runs it
    a.refresh_from_db()
    assert a.status == Status.SUCCEEDED and waiting(client, a) is None
    assert waiting(client, b)["jobs_ahead"] == expected(0)
    assert waiting(client, c)["jobs_ahead"] == expected(1)
    assert claim(b) is not None  # RUNNING, its job not acknowledged yet
    assert waiting(client, b) is None
    assert waiting(client, c)["jobs_ahead"] == expected(1)


@pytest.mark.django_db
def test_a_retrying_task_waits_for_a_worker_once_its_retry_is_due(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        task = longtask.start("test-count", {"n": 1})
    later = timezone.now() + datetime.timedelta(seconds=60)
    rows = LongTask.objects.filter(pk=task.pk)
    rows.update(status=Status.RETRYING, attempts=1, next_attempt_at=later, due_at=later)
    assert waiting(client, task) is None  # waiting for its time, not for a worker
    due = timezone.now() - datetime.timedelta(seconds=1)
    rows.update(next_attempt_at=due, due_at=due)
    assert waiting(client, task) == {"queue": "default", "jobs_ahead": expected(0)}


@pytest.mark.django_db
def test_a_task_started_to_run_later_waits_for_its_time_not_for_a_worker(client):
    later = timezone.now() + datetime.timedelta(seconds=60)
    task = longtask.start("test-count", {"n": 1}, run_after=later)
    assert waiting(client, task) is None
    LongTask.objects.filter(pk=task.pk).update(due_at=timezone.now())  # its time has come
    assert waiting(client, task) == {"queue": "default", "jobs_ahead": expected(0)}


@pytest.mark.django_db(transaction=True)
def test_a_fan_out_waits_for_a_worker_until_one_of_its_subtasks_starts(client):
    first = longtask.start("test-squares", {"n": 9})
    second = longtask.start("test-squares", {"n": 9})
    default, subtasks = broker.cluster_of(None), broker.cluster_of("subtasks")
    assert waiting(client, first) == {"queue": "default", "jobs_ahead": expected(0)}
    assert broker.run_next(default)  # first's split: its chunk jobs wait in "subtasks"
    first_chunks = broker.count(subtasks)
    assert broker.run_next(default)  # second's split, behind them
    first.refresh_from_db()
    assert first.status == Status.RUNNING and first.split_done and first_chunks
    assert waiting(client, first) == {"queue": "subtasks", "jobs_ahead": expected(0, "subtasks")}
    assert waiting(client, second) == {
        "queue": "subtasks",
        "jobs_ahead": expected(first_chunks, "subtasks"),
    }
    # A chunk of the second claims a subtask (a claim sets its heartbeat): a worker is on it.
    SubTask.objects.filter(parent=second, index=0).update(
        status=Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now(), token="t"
    )
    assert waiting(client, second) is None
    assert broker.run_next(subtasks)  # first's first chunk runs
    first.refresh_from_db()
    assert first.subtasks_done and waiting(client, first) is None


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", [".json", "/"])
def test_waiting_costs_one_read_of_the_queue_whatever_the_jobs_and_subtasks(
    client, suffix, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        alone = longtask.start("test-count", {"n": 1})
        junk_jobs(300)
        crowded = longtask.start("test-count", {"n": 1})
    few = reads(client, f"/tasks/{alone.pk}{suffix}")
    many = reads(client, f"/tasks/{crowded.pk}{suffix}")
    assert len(few) == len(many) == (2 if broker.on_orm() else 1)  # the row (+ the COUNT)
    assert waiting(client, crowded)["jobs_ahead"] == expected(301)
    small, big = waiting_fan_out(10), waiting_fan_out(2000)
    small_reads = reads(client, f"/tasks/{small.pk}{suffix}")
    big_reads = reads(client, f"/tasks/{big.pk}{suffix}")
    # The row, whether a subtask runs, the first chunk's due time (+ the COUNT).
    assert len(small_reads) == len(big_reads) == (4 if broker.on_orm() else 3)
    if broker.on_orm():
        assert len(queue_reads(few)) == len(queue_reads(big_reads)) == 1
    LongTask.objects.filter(pk=big.pk).update(subtasks_done=1)  # no longer waiting
    assert len(reads(client, f"/tasks/{big.pk}{suffix}")) == 1


@pytest.mark.django_db
def test_a_waiting_fan_outs_two_subtask_reads_search_an_index():
    parent = waiting_fan_out(50)
    with CaptureQueriesContext(connection) as captured:
        assert documents.waiting_for_worker(parent) is not None
    sqls = [query["sql"] for query in captured.captured_queries]
    subtask_reads = [sql for sql in sqls if '"longtask_subtask"' in sql]
    assert len(subtask_reads) == 2
    assert {sql: bad for sql in subtask_reads if (bad := _full_scans(sql))} == {}


@pytest.mark.django_db
def test_the_status_page_shows_the_jobs_ahead_instead_of_the_time_and_the_eta(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        junk_jobs(1234)
        task = longtask.start("report", {"month": "2026-10"})
    # Between two runs (an iterative task's batches) its progress stays in the cache.
    record = {"current": 5, "total": 20, "message": "day 5", "rate": 1.0}
    progress.write_progress(task.pk, {**record, "updated_at": timezone.now().timestamp()})
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    ahead = f"{expected(1234):,}"
    assert f'<span class="elapsed">Waiting: {ahead} jobs ahead.</span>' in html
    assert '<span class="eta"></span>' in html
    assert '<progress value="5" max="20">25%</progress>' in html
    assert client.get(f"/tasks/{task.pk}.json").json()["eta_seconds"] is None
    claim(task)
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    assert "Waiting:" not in html
    assert "Running for" in html and "About 15 s left." in html


@pytest.mark.django_db
def test_a_waiting_fan_out_page_shows_the_jobs_ahead_of_its_subtasks(client):
    parent = waiting_fan_out(9)
    html = client.get(f"/tasks/{parent.pk}/").content.decode()
    assert f'<span class="elapsed">Waiting: {expected(0, "subtasks")} jobs ahead.</span>' in html
    assert "Running for" not in html
    assert '<progress value="0" max="9">0%</progress>' in html


@pytest.mark.django_db
def test_a_broker_that_does_not_answer_leaves_a_plain_line_not_a_500(client, monkeypatch):
    def down(cluster: str | None, due: datetime.datetime | None) -> int:
        raise ConnectionError("the broker is away")

    task = longtask.start("report", {"month": "2026-10"})
    monkeypatch.setattr(dispatch, "jobs_ahead", down)
    response = client.get(f"/tasks/{task.pk}/")
    assert response.status_code == 200
    assert '<span class="elapsed">Waiting for a worker.</span>' in response.content.decode()
    assert waiting(client, task) == {"queue": "default", "jobs_ahead": None}


@pytest.mark.django_db
def test_the_live_snapshot_and_status_frames_carry_the_wait(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        task = longtask.start("test-count", {"n": 1})
    snapshot = watcher.read_snapshot(AnonymousUser(), task.pk)
    assert snapshot is not None and snapshot.document is not None
    assert snapshot.document["waiting"] == {"queue": "default", "jobs_ahead": expected(0)}
    claim(task)
    tick = watcher.read_tick(task.pk, 0, {Status.QUEUED})  # the status frame's document
    assert tick is not None and tick.document is not None
    assert tick.document["status"] == Status.RUNNING and "waiting" not in tick.document


@pytest.mark.parametrize(
    "jobs_ahead, text",
    [
        (0, "Waiting: 0 jobs ahead."),
        (1, "Waiting: 1 job ahead."),
        (4300, "Waiting: 4,300 jobs ahead."),
        (1_234_567, "Waiting: 1,234,567 jobs ahead."),
        (None, "Waiting for a worker."),
    ],
)
def test_the_wait_is_written_with_thousands_separators(jobs_ahead, text):
    assert display.waiting_text(jobs_ahead) == text


@pytest.mark.django_db
def test_a_finished_task_reads_no_queue(django_assert_num_queries):
    task = longtask.start("test-count", {"n": 1})
    longtask.cancel(task)
    task.refresh_from_db()
    with django_assert_num_queries(0):
        assert documents.waiting_for_worker(task) is None

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection
from django.test import override_settings

import longtask
from longtask import dispatch
from longtask.engine import chunks, enqueue, split, states
from longtask.engine import run as runner
from longtask.engine.states import Outcome, record
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.helpers import claim, drain_queue, quilt_squares

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    test_kinds.GATHERED.clear()
    yield from broker.emptied()


def start_and_drain(kind: str, **params) -> LongTask:
    task = longtask.start(kind, params)
    runner.run(str(task.pk))  # the parent's job: split
    drain_queue()
    task.refresh_from_db()
    return task


def test_fan_out_and_in_gathers_in_index_order():
    task = start_and_drain("test-squares", n=50)
    assert task.status == Status.SUCCEEDED
    assert task.result == [i * i for i in range(50)]
    assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (50, 50, 0)
    assert [str(task.pk)] == test_kinds.GATHERED
    seqs = sorted(SubTask.objects.filter(parent=task).values_list("finish_seq", flat=True))
    assert seqs == list(range(1, 51))
    assert task.last_progress["current"] == task.last_progress["total"] == 50


def test_zero_subtasks_complete_at_once():
    task = start_and_drain("test-squares", n=0)
    assert task.status == Status.SUCCEEDED and task.result == []


def test_gather_order_is_index_order_whatever_the_finishing_order():
    task = longtask.start("test-squares", {"n": 6})
    run = claim(task)
    with override_settings(LONGTASK_SPLIT_BATCH=100):
        split.split(run, task, registry.get("test-squares"))
    broker.clear()
    for index in reversed(range(6)):  # finish last-first
        chunks.run_chunk(str(task.pk), index, index)
    drain_queue()  # the gather step
    task.refresh_from_db()
    assert task.result == [0, 1, 4, 9, 16, 25]
    finishing = SubTask.objects.filter(parent=task).order_by("finish_seq")
    assert list(finishing.values_list("index", flat=True)) == [5, 4, 3, 2, 1, 0]


def running_subtasks(task: LongTask, n: int) -> None:
    # As a split leaves it: done, and the parent let go by the split's run.
    LongTask.objects.filter(pk=task.pk).update(subtasks_total=n, split_done=True, token="")
    SubTask.objects.bulk_create(
        SubTask(parent=task, index=i, parameters={}, status=Status.RUNNING, attempts=1)
        for i in range(n)
    )


def outcome(task: LongTask, index: int, value: int = 0) -> Outcome:
    pk = SubTask.objects.get(parent=task, index=index).pk
    return Outcome(pk=pk, index=index, attempts=1, seconds=0.01, result=value)


def test_the_same_subtask_recorded_twice_counts_once():
    task = longtask.start("test-squares", {"n": 3})
    claim(task)
    running_subtasks(task, 3)
    kind = registry.get("test-squares")
    record(str(task.pk), kind, [outcome(task, 0, 7)])
    record(str(task.pk), kind, [outcome(task, 0, 8)])  # a duplicated delivery
    record(str(task.pk), kind, [outcome(task, 1), outcome(task, 1)])  # twice in one flush
    task.refresh_from_db()
    assert task.subtasks_done == 2
    assert SubTask.objects.get(parent=task, index=0).result == 7


def test_two_threads_racing_on_the_last_subtasks_gather_once():
    for attempt in range(10):
        test_kinds.GATHERED.clear()
        task = longtask.start("test-squares", {"n": 2})
        claim(task)
        running_subtasks(task, 2)
        kind = registry.get("test-squares")
        barrier = threading.Barrier(2)
        errors = []

        def finish(index: int, task=task, kind=kind, barrier=barrier, errors=errors) -> None:
            try:
                barrier.wait()
                # Each thread records a different subtask and the same one, then fans in.
                record(str(task.pk), kind, [outcome(task, index, index), outcome(task, 0, 0)])
                states.start_fan_in(str(task.pk))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                close_old_connections()

        threads = [threading.Thread(target=finish, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        drain_queue()
        task.refresh_from_db()
        assert task.status == Status.SUCCEEDED, attempt
        assert task.subtasks_done == 2
        assert [str(task.pk)] == test_kinds.GATHERED, attempt


def test_subtasks_finishing_before_the_split_ends_complete_exactly_once():
    class DrainingSquares(test_kinds.Squares):
        # Runs the queued chunks while the split is still going, so every subtask is
        # done before the "all loaded" flag is set.
        def split(self, params):
            for item in super().split(params):
                yield item
                drain_queue()

    kind = DrainingSquares()
    task = longtask.start("test-squares", {"n": 7})
    run = claim(task)
    with override_settings(LONGTASK_SPLIT_BATCH=2):
        split.split(run, task, kind)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == [i * i for i in range(7)]
    assert [str(task.pk)] == test_kinds.GATHERED


def test_fail_fast_fails_the_parent_and_skips_the_rest():
    with override_settings(LONGTASK_SPLIT_BATCH=4):
        task = longtask.start("test-squares-oneshot", {"n": 40, "fail_index": 2})
        runner.run(str(task.pk))
        drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.error == "subtask 2 failed: ValueError: no square for 2"
    assert test_kinds.GATHERED == []
    statuses = set(SubTask.objects.filter(parent=task).values_list("status", flat=True))
    assert Status.CANCELLED in statuses
    assert SubTask.objects.get(parent=task, index=2).attempts == 1
    assert not SubTask.objects.filter(parent=task, status__in=["QUEUED", "RUNNING"]).exists()


def test_tolerate_completes_with_null_results_for_failures():
    task = start_and_drain("test-squares-tolerant", n=10, fail_index=4)
    assert task.status == Status.SUCCEEDED
    assert task.result[4] is None and task.result[5] == 25
    assert task.subtasks_failed == 1
    failed = SubTask.objects.get(parent=task, index=4)
    assert failed.status == Status.FAILED and failed.error.startswith("ValueError")


def test_a_subtask_failing_twice_then_succeeding():
    task = start_and_drain("test-squares", n=5, flaky=2)
    assert task.status == Status.SUCCEEDED
    assert task.result == [0, 1, 4, 9, 16]
    assert set(SubTask.objects.filter(parent=task).values_list("attempts", flat=True)) == {3}


def test_chunk_size_follows_observed_duration_and_overrides():
    kind = registry.get("test-squares")
    task = longtask.start("test-squares", {"n": 1})
    assert enqueue.chunk_size(kind, task, 10_000) is None  # nothing observed yet
    # A slow start: chunks double from the initial size up to the cap.
    sizes = [end - start for start, end in enqueue.chunk_bounds(kind, task, 0, 1000)]
    assert sizes == [8, 16, 32, 64, 128, 250, 250, 250, 2]
    LongTask.objects.filter(pk=task.pk).update(
        subtasks_total=100, subtasks_done=100, subtask_seconds=1.0
    )
    assert enqueue.chunk_size(kind, task, 10_000) == 100  # 10 ms each: 1 s per chunk
    LongTask.objects.filter(pk=task.pk).update(subtask_seconds=0.0001)
    assert enqueue.chunk_size(kind, task, 10_000) == 500  # capped
    # 1 us each: the last 40 go in one chunk; spread, each worker's would be 10 us of work.
    assert enqueue.chunk_size(kind, task, 40) == 40
    LongTask.objects.filter(pk=task.pk).update(subtask_seconds=5.0)
    assert enqueue.chunk_size(kind, task, 10_000) == 20  # 50 ms each
    assert enqueue.chunk_size(kind, task, 40) == 10  # leaves work for every worker
    LongTask.objects.filter(pk=task.pk).update(subtask_seconds=500.0)
    assert enqueue.chunk_size(kind, task, 10_000) == 1

    class Fixed(test_kinds.Squares):
        chunk_size = 7

    assert enqueue.chunk_size(Fixed(), task, 10_000) == 7


# No window: every subtask at its split, in batches of 1000.
@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=0, LONGTASK_SPLIT_BATCH=1000)
def test_chunks_are_enqueued_in_bulk(django_assert_max_num_queries):
    task = longtask.start("test-squares", {"n": 3000})
    run = claim(task)
    with django_assert_max_num_queries(40):
        split.split(run, task, registry.get("test-squares"))
    chunk_jobs = broker.count() - 1  # the parent's own job is still on the queue
    assert chunk_jobs == 3 * 9  # three batches of 1000, slow-started (see above)


def test_a_split_saves_batches_of_its_database_s_size(monkeypatch):
    """5,000 a transaction on PostgreSQL (fewer waits for the parent's row lock), 1,000
    on SQLite (each batch holds the one write lock); LONGTASK_SPLIT_BATCH overrides."""
    task = longtask.start("test-squares", {"n": 6000})
    run = claim(task)
    sizes: list[int] = []
    save = states.save_split_batch

    def counted(run, task, kind, batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        return save(run, task, kind, batch)

    monkeypatch.setattr(states, "save_split_batch", counted)
    split.split(run, task, registry.get("test-squares"))
    expected = 5000 if connection.vendor == "postgresql" else 1000
    assert sizes[0] == expected and sum(sizes) == 6000
    task = longtask.start("test-squares", {"n": 10})
    sizes.clear()
    with override_settings(LONGTASK_SPLIT_BATCH=4):
        split.split(claim(task), task, registry.get("test-squares"))
    assert sizes == [4, 4, 2]


def test_split_resumes_after_a_crash_without_duplicates():
    task = longtask.start("test-squares", {"n": 10})
    run = claim(task)
    kind = registry.get("test-squares")
    with override_settings(LONGTASK_SPLIT_BATCH=4):
        batch = [{"i": i, "fail": False, "flaky": 0} for i in range(4)]
        states.save_split_batch(run, task, kind, batch)
        task.refresh_from_db()
        split.split(run, task, kind)  # a re-run skips the 4 saved ones
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == [i * i for i in range(10)]


def test_json_reports_subtask_counts_and_cursor(client):
    task = start_and_drain("test-squares-tolerant", n=30, fail_index=3)
    doc = client.get(f"/tasks/{task.pk}.json").json()
    assert doc["subtasks"] == {
        "total": 30,
        "succeeded": 29,
        "failed": 1,
        "pending": 0,
        "skipped": 0,
    }
    first = client.get(f"/tasks/{task.pk}/subtasks.json?since=0").json()
    assert len(first["subtasks"]) == 30 and first["cursor"] == 30 and not first["more"]
    assert {s["index"] for s in first["subtasks"]} == set(range(30))
    rest = client.get(f"/tasks/{task.pk}/subtasks.json?since=25").json()
    assert len(rest["subtasks"]) == 5 and rest["cursor"] == 30
    assert client.get(f"/tasks/{task.pk}/subtasks.json?since=30").json()["subtasks"] == []


@pytest.mark.parametrize("since", ["-1", "abc", "1e3", "99999999999", "١٢"])
def test_bad_cursor_is_400(client, since):
    task = start_and_drain("test-squares", n=1)
    response = client.get(f"/tasks/{task.pk}/subtasks.json", {"since": since})
    assert response.status_code == 400
    assert "since" in response.json()["error"]


def test_quilt_end_to_end_in_process(client):
    task = start_and_drain("quilt", rows=3, cols=4)
    assert task.status == Status.SUCCEEDED
    colors = task.result["colors"]
    assert task.result["rows"] == 3 and task.result["cols"] == 4
    assert len(colors) == 3 and all(len(line) == 4 for line in colors)
    assert all(c.startswith("#") and len(c) == 7 for line in colors for c in line)
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    assert quilt_squares(html) == (12, 0)


def test_quilt_page_shows_squares_done_so_far(client):
    task = longtask.start("quilt", {"rows": 10, "cols": 10})
    runner.run(str(task.pk))
    args = next(job["args"] for job, _ in broker.jobs() if job["func"] == dispatch.CHUNK_JOB)
    chunks.run_chunk(*args)
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    done = args[2] - args[1] + 1
    assert quilt_squares(html) == (done, 100 - done)
    assert "style=" not in html  # the colours are fill attributes: no inline style (CSP)
    assert 'http-equiv="refresh"' in html
    doc = client.get(f"/tasks/{task.pk}.json").json()
    assert doc["progress"]["current"] == done and doc["progress"]["total"] == 100


def test_quilt_with_failures_still_completes():
    task = start_and_drain("quilt", rows=5, cols=5, fail_rate=0.9)
    assert task.status == Status.SUCCEEDED
    assert all(c for line in task.result["colors"] for c in line)
    assert SubTask.objects.filter(parent=task, attempts__gt=1).exists()


@pytest.mark.parametrize(
    "params",
    [
        {"rows": 0, "cols": 1},
        {"rows": 201, "cols": 1},
        {"rows": 1, "cols": 1, "fail_rate": 2},
        {"rows": 1, "cols": 1, "work_ms": 5001},
        {"rows": "x", "cols": 1},
    ],
)
def test_quilt_rejects_bad_parameters(params):
    with pytest.raises(longtask.InvalidParameters):
        longtask.start("quilt", params)
    assert not LongTask.objects.exists()

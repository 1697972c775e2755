"""Races between writers of the same rows, run with real threads (both passes).

SQLite serialises every write transaction, so these bite only on PostgreSQL: the
service pass is where they prove something; the embedded pass keeps them honest.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable

import pytest
from django.db import close_old_connections
from django.db.models import Count, Q
from django.utils import timezone

import longtask
from longtask.engine import recovery, states
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask
from tests import broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


def race(*actions: Callable[[], object]) -> None:
    """Run the actions at the same moment in threads of their own; re-raise their errors."""
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def go(action: Callable[[], object]) -> None:
        try:
            barrier.wait()
            action()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=go, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


def assert_counters_equal_rows(task: LongTask) -> None:
    row = LongTask.objects.annotate(
        n=Count("subtasks"),
        done=Count("subtasks", filter=Q(subtasks__status__in=[Status.SUCCEEDED, Status.FAILED])),
        failed=Count("subtasks", filter=Q(subtasks__status=Status.FAILED)),
    ).get(pk=task.pk)
    assert (row.subtasks_total, row.subtasks_done, row.subtasks_failed) == (
        row.n,
        row.done,
        row.failed,
    )


def test_a_stale_but_alive_chunk_racing_the_sweeper_counts_each_subtask_once():
    kind = registry.get("test-squares-tolerant")
    later = timezone.now() + datetime.timedelta(hours=1)
    for _attempt in range(15):
        task = longtask.start(kind.name, {"n": 6})
        broker.clear()
        run, _ = states.claim(task.pk)
        states.save_split_batch(
            run, task, kind, [{"i": i, "fail": False, "flaky": 0} for i in range(6)]
        )
        states.finish_split(run, task)
        claimed = states.claim_subtasks(str(task.pk), 0, 5, None)
        outcomes = [
            states.Outcome(pk, i, attempt, 0.0, token=claimed.token, result=i * i)
            for pk, i, _params, attempt in claimed.rows
        ]
        # The chunk records its work at the very moment the sweeper records it as lost.
        race(
            lambda t=task, o=outcomes: states.record(str(t.pk), kind, o),
            lambda: recovery.sweep(now=later),
        )
        assert_counters_equal_rows(task)
        seqs = list(
            SubTask.objects.filter(parent=task)
            .exclude(finish_seq=None)
            .values_list("finish_seq", flat=True)
        )
        assert len(seqs) == len(set(seqs))


def test_a_retry_racing_a_chunk_record_leaves_counters_equal_to_rows():
    kind = registry.get("test-squares-oneshot")
    for _attempt in range(15):
        task = longtask.start(kind.name, {"n": 6, "fail_index": 0})
        broker.clear()
        run, _ = states.claim(task.pk)
        states.save_split_batch(
            run, task, kind, [{"i": i, "fail": i == 0, "flaky": 0} for i in range(6)]
        )
        states.finish_split(run, task)
        first = states.claim_subtasks(str(task.pk), 0, 0, None)
        rest = states.claim_subtasks(str(task.pk), 1, 5, None)  # another chunk, busy
        failure = states.Outcome(
            first.rows[0][0], 0, 1, 0.0, token=first.token, error="E: x", fatal=True
        )
        states.record(str(task.pk), kind, [failure])
        task.refresh_from_db()
        assert task.status == Status.FAILED  # fail fast
        outcomes = [
            states.Outcome(pk, i, attempt, 0.0, token=rest.token, result=i * i)
            for pk, i, _params, attempt in rest.rows
        ]
        race(
            lambda t=task, o=outcomes: states.record(str(t.pk), kind, o),
            lambda t=task: longtask.retry(LongTask.objects.get(pk=t.pk)),
        )
        assert_counters_equal_rows(task)


def test_workers_claiming_one_task_at_once_make_one_attempt_with_one_runs_entry():
    """Deliveries of one job claim at the same moment: one gets the task; the others find
    it no longer claimable (the row lock, then the UPDATE's condition on the status and
    token it read), so no runs entry written from a stale copy is lost or doubled."""
    task = longtask.start("test-count", {"n": 1})
    won: list[states.Run] = []

    def claim() -> None:
        claimed = states.claim(task.pk, keep_runs=lambda kind: True)
        if claimed is not None:
            won.append(claimed[0])

    for _ in range(5):
        race(claim, claim, claim)
        assert len(won) == 1, won
        row = LongTask.objects.get(pk=task.pk)
        assert (row.status, row.token) == (Status.RUNNING, won[0].token)
        assert len(row.runs) == row.attempts
        won.clear()
        LongTask.objects.filter(pk=task.pk).update(status=Status.QUEUED)

"""A fan-out keeps a window of chunk jobs in the broker; running fan-outs take turns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings
from django.utils import timezone

import longtask
from longtask.engine import recovery, split, window
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import claim, drain_queue

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("test_kinds_registered"),
]


@pytest.fixture(autouse=True)
def _empty_queues() -> Iterator[None]:
    yield from broker.emptied()


def _split(*sizes: int) -> list[LongTask]:
    """Start fan-outs of these sizes and split them here, in order."""
    tasks = [longtask.start("test-squares", {"n": n}) for n in sizes]
    broker.clear()  # the parents' own jobs: their splits run here
    for task in tasks:
        split.split(claim(task), task, registry.get("test-squares"))
        task.refresh_from_db()
    return tasks


def _dispatched(task: LongTask) -> set[int]:
    return {
        index
        for package, _eta in broker.jobs()
        if package["args"][0] == str(task.pk)
        for index in _indexes(package["args"])
    }


def _indexes(args: tuple) -> range | list[int]:
    _parent, first, last, *rest = args
    return rest[0] if rest and rest[0] is not None else range(first, last + 1)


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=4)
def test_a_split_queues_only_the_window_and_the_rest_waits_without_a_job():
    (task,) = _split(3000)
    limit = window.window_subtasks(registry.get("test-squares"), task)
    assert task.subtasks_total == 3000 and task.dispatched_upto == limit < 3000
    assert _dispatched(task) == set(range(limit))
    above = SubTask.objects.filter(parent=task, index__gte=limit)
    assert above.count() == 3000 - limit and not above.filter(due_at__isnull=False).exists()


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=4)
def test_finishing_chunks_dispatch_the_next_and_every_subtask_runs_once():
    (task,) = _split(700)
    limit = window.window_subtasks(registry.get("test-squares"), task)
    peak = 0
    while broker.run_next():
        task.refresh_from_db()
        in_flight = task.dispatched_upto - task.subtasks_done
        assert in_flight <= window.window_subtasks(registry.get("test-squares"), task)
        peak = max(peak, broker.count())
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == [i * i for i in range(700)]
    assert SubTask.objects.filter(parent=task, attempts=1).count() == 700
    # Jobs of the slow start may still wait when bigger ones join them: twice the window.
    assert limit < 700 and peak <= 2 * 4 + 1


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=4)
def test_a_later_small_fan_out_runs_before_the_earlier_ones_backlog():
    big, small = _split(2000, 9)
    ran_of_big_before_small_done = None
    while broker.run_next():
        small.refresh_from_db()
        # Its squares, that is: its gather runs on the tasks' queue, not behind subtasks.
        if small.subtasks_done == 9 and ran_of_big_before_small_done is None:
            big.refresh_from_db()
            ran_of_big_before_small_done = big.subtasks_done
    big.refresh_from_db()
    assert big.status == Status.SUCCEEDED and small.status == Status.SUCCEEDED
    # FIFO without a window: the small one would wait for all 2,000 squares.
    assert ran_of_big_before_small_done is not None
    assert ran_of_big_before_small_done <= window.window_subtasks(registry.get("test-squares"), big)


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=0)
def test_without_a_window_the_small_fan_out_waits_for_the_whole_backlog():
    # The baseline the window improves on (and a check that the test above can fail).
    big, small = _split(2000, 9)
    while broker.run_next():
        small.refresh_from_db()
        if small.subtasks_done == 9:
            break
    big.refresh_from_db()
    assert big.subtasks_done == 2000


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=4, LONGTASK_STALE_AFTER=1)
def test_the_sweeper_leaves_subtasks_above_the_line_alone():
    (task,) = _split(3000)
    before = broker.count()
    later = timezone.now() + timezone.timedelta(hours=1)
    broker.clear()  # even with every job lost, only those below the line come back
    recovery.sweep(now=later)
    assert _dispatched(task) <= set(range(task.dispatched_upto))
    assert before > 0


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=4)
def test_two_refills_from_one_line_dispatch_each_subtask_once():
    (task,) = _split(3000)
    LongTask.objects.filter(pk=task.pk).update(subtasks_done=task.dispatched_upto)  # room
    kind = registry.get("test-squares")
    stale = LongTask.objects.get(pk=task.pk)
    first, second = window.refill(task, kind), window.refill(stale, kind)
    assert first > 0
    moved = LongTask.objects.get(pk=task.pk).dispatched_upto
    assert moved == task.dispatched_upto + first + second
    indexes = sorted(i for p, _ in broker.jobs() for i in _indexes(p["args"]))
    assert len(indexes) == len(set(indexes))


def test_a_whole_fan_out_completes_under_the_default_window():
    (task,) = _split(1500)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.subtasks_done == 1500


@override_settings(LONGTASK_FANOUT_WINDOW_JOBS=2, LONGTASK_MAX_CHUNK_SIZE=500)
def test_quick_subtasks_go_in_whole_chunks_to_the_end():
    """A chunk job costs its dispatch (a poll of the broker, a claim, a record) whatever
    its size: while thousands wait, quick subtasks go MAX_CHUNK_SIZE a job (they went a
    quarter of that, as if only MAX_CHUNK_SIZE waited), and so do the last ones: spread
    over the workers they went in rounds of halving chunks, a broker poll each, for work
    worth less than one (test_fanout's chunk size test spreads slow ones)."""
    (task,) = _split(6000)
    sizes: dict[tuple[int, int], int] = {}
    while True:
        for package, _eta in broker.jobs():
            args = package["args"]
            if len(args) >= 3 and args[0] == str(task.pk):  # its chunk jobs
                sizes[(args[1], args[2])] = len(_indexes(args))
        if not broker.run_next():
            break
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.subtasks_done == 6000
    in_order = [size for _span, size in sorted(sizes.items())]
    assert sum(in_order) == 6000  # each subtask in one job
    known = in_order.index(500)  # the first chunks, before a duration is known, are small
    assert set(in_order[known:-1]) == {500}
    assert in_order[-1] == 6000 - sum(in_order[:-1]) < 500  # what was left

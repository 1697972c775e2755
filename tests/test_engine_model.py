"""A stateful model test of the engine over the real database and broker (hypothesis).

Rules start plain and fan-out tasks, deliver jobs (once, twice, or never: a lost job),
let workers hang mid-run holding their tokens (zombies) and write later, sweep with
the clock moved past STALE_AFTER, cancel and retry. After every step the invariants
hold: a parent's counters equal its rows by status; no write from a fenced-off token
changes anything; a gather's result is committed at most once per attempt. When the
rules stop, jobs run and sweeps run with idle workers until every task is final
(liveness), and every succeeded fan-out has exactly the right result.

Examples per run: LONGTASK_MODEL_EXAMPLES (default 60); both passes of `make test` run it.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from typing import Any

import pytest
from django.core.cache import cache
from django.db.models import Count, Q
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import longtask
from longtask.engine import failures, recovery, states
from longtask.engine import run as engine_run
from longtask.kinds import registry
from longtask.models import FINISHED_STATUSES, LongTask, Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.conftest import TEST_KINDS

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = int(os.environ.get("LONGTASK_MODEL_EXAMPLES", "60"))
FANOUTS = ["test-squares", "test-squares-tolerant"]
#: Few tasks, so that the rules often meet on the same one.
MAX_TASKS = 2
#: How far a "later" sweep moves the clock: past STALE_AFTER (60 s) for every run.
LATER = datetime.timedelta(seconds=3600)


def _snapshot(task_id: Any) -> tuple[Any, ...]:
    return tuple(
        LongTask.objects.filter(pk=task_id).values_list(
            "status", "result", "error", "heartbeat_at", "subtasks_done", "token"
        )[0]
    )


def _resume(run: states.Run, task: LongTask) -> bool:
    """Do what the runner does after its claim; say whether a final write was applied."""
    kind = registry.get(task.kind)
    try:
        result = engine_run._run_kind(run, task, kind)
    except Exception as exc:
        failures.handle_failure(run, task, kind, exc, "")
        return False
    return result is not engine_run._NOTHING and states.succeed(run, result, None)


class EngineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        broker.clear()
        LongTask.objects.all().delete()
        cache.clear()
        test_kinds.GATHERED.clear()
        self.tasks: list[str] = []
        self.params: dict[str, dict[str, Any]] = {}
        #: Task runs that hung after claiming, with the row as each claimed it (a frozen
        #: worker holds its own copy: when it wakes, it goes on from what it claimed).
        self.zombie_runs: list[tuple[states.Run, LongTask]] = []
        #: Chunks that hung after claiming their subtasks.
        self.zombie_chunks: list[tuple[str, states.Claimed]] = []
        #: Gather steps claimed, per task (a gather may run again only after a new claim).
        self.gather_claims: Counter[str] = Counter()
        self.offset = datetime.timedelta(0)

    # Starting ------------------------------------------------------------------------

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(
        kind=st.sampled_from(FANOUTS),
        n=st.integers(0, 6),
        fail_index=st.none() | st.integers(0, 5),
        flaky=st.integers(0, 2),
    )
    def start_fanout(self, kind: str, n: int, fail_index: int | None, flaky: int) -> None:
        params = {"n": n, "fail_index": fail_index, "flaky": flaky}
        task = longtask.start(kind, params)
        self.tasks.append(str(task.pk))
        self.params[str(task.pk)] = {"kind": kind, **params}

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(fail_times=st.integers(0, 3), mode=st.sampled_from(["", "fatal"]))
    def start_plain(self, fail_times: int, mode: str) -> None:
        task = longtask.start("test-flaky", {"fail_times": fail_times, "mode": mode})
        self.tasks.append(str(task.pk))
        self.params[str(task.pk)] = {"kind": "test-flaky"}

    # Workers ---------------------------------------------------------------------------

    def drain(self, limit: int) -> None:
        for _ in range(limit):
            jobs = broker._entries(heads_only=True)
            if not jobs:
                return
            if broker._take(jobs[0]):
                self._gather_claim(jobs[0].package)
                broker.run(jobs[0].package)

    def _gather_claim(self, package: dict[str, Any]) -> None:
        if package["func"] == "longtask.jobs.run_task":
            row = LongTask.objects.filter(pk=package["args"][0]).first()
            if row and row.fan_in_at and row.status in states.CLAIMABLE:
                self.gather_claims[str(row.pk)] += 1

    def deliver(self, data: st.DataObject) -> None:
        """A worker takes a job and runs it to the end."""
        jobs = broker._entries()
        if not jobs:
            return
        entry = jobs[data.draw(st.integers(0, len(jobs) - 1))]
        if broker._take(entry):
            self._gather_claim(entry.package)
            broker.run(entry.package)

    def deliver_twice(self, data: st.DataObject) -> None:
        """A job is delivered again while it is still queued (a broker re-delivery)."""
        jobs = broker.jobs()
        if jobs:
            package = jobs[data.draw(st.integers(0, len(jobs) - 1))].package
            self._gather_claim(package)
            broker.run(package)

    def lose_job(self, data: st.DataObject) -> None:
        """A job disappears (its cluster was killed after taking it; Redis restarted)."""
        jobs = broker._entries()
        if jobs:
            broker._take(jobs[data.draw(st.integers(0, len(jobs) - 1))])

    def hang_task_run(self, data: st.DataObject) -> None:
        """A worker claims a task and freezes before doing anything (it keeps its token)."""
        task_id = data.draw(st.sampled_from(self.tasks))
        row = LongTask.objects.get(pk=task_id)
        gathering = row.fan_in_at is not None
        claimed = states.claim(task_id)
        if claimed:
            if gathering:
                self.gather_claims[task_id] += 1
            self.zombie_runs.append(claimed)

    def hang_chunk(self, data: st.DataObject) -> None:
        """A chunk claims some subtasks and freezes."""
        task_id = data.draw(st.sampled_from(self.tasks))
        first = data.draw(st.integers(0, 5))
        claimed = states.claim_subtasks(task_id, first, first + data.draw(st.integers(0, 3)), None)
        if claimed.rows:
            self.zombie_chunks.append((task_id, claimed))

    def zombie_task_writes(self, data: st.DataObject, action: str) -> None:
        """A frozen run wakes up and writes; if it lost its task, nothing changes."""
        run, task = self.zombie_runs.pop(data.draw(st.integers(0, len(self.zombie_runs) - 1)))
        held = states.holds(run)
        before = _snapshot(run.task_id)
        if action == "beat":
            done = states.beat(run)
            self.zombie_runs.append((run, task))
        elif action == "fail":
            done = states.fail(run, task, states.Failure("zombie failure"))
        elif action == "retry":
            done = states.schedule_retry(run, task, states.Failure("zombie"), timezone.now())
        else:  # it carries on where it froze: the kind's work, a split or a gather
            done = _resume(run, task)
        if not held:
            assert not done, f"a fenced-off run's {action} was applied"
            assert _snapshot(run.task_id) == before

    def zombie_chunk_records(self, data: st.DataObject) -> None:
        """A frozen chunk wakes up and records the right squares; fenced if it lost them."""
        index = data.draw(st.integers(0, len(self.zombie_chunks) - 1))
        task_id, claimed = self.zombie_chunks.pop(index)
        kind = registry.get(self.params[task_id]["kind"])
        ours = set(
            SubTask.objects.filter(
                pk__in=[row[0] for row in claimed.rows], status=Status.RUNNING, token=claimed.token
            ).values_list("pk", flat=True)
        )
        outcomes = [
            states.Outcome(pk, i, attempt, 0.001, token=claimed.token, result=i * i)
            for pk, i, _params, attempt in claimed.rows
        ]
        recorded = states.record(task_id, kind, outcomes)
        assert recorded.moved <= len(ours), "a fenced-off chunk's outcome was counted"

    # Operators -------------------------------------------------------------------------

    def sweep_now(self) -> None:
        recovery.sweep()

    def sweep_later(self) -> None:
        """The clock moves past STALE_AFTER: every run looks stale, every wait looks long."""
        self.offset += LATER
        recovery.sweep(now=timezone.now() + self.offset)

    def sweep_later_and_take_over(self) -> None:
        """The sweeper re-queues the frozen runs and chunks; other workers claim them at once."""
        self.sweep_later()
        for run, _task in list(self.zombie_runs):
            row = LongTask.objects.get(pk=run.task_id)
            claimed = states.claim(run.task_id)
            if claimed:
                if row.fan_in_at is not None:
                    self.gather_claims[str(run.task_id)] += 1
                self.zombie_runs.append(claimed)
        for task_id, chunk in list(self.zombie_chunks):
            taken = states.claim_subtasks(task_id, 0, 10, [row[1] for row in chunk.rows])
            if taken.rows:
                self.zombie_chunks.append((task_id, taken))

    def cancel(self, data: st.DataObject) -> None:
        longtask.cancel(LongTask.objects.get(pk=data.draw(st.sampled_from(self.tasks))))

    def retry(self, data: st.DataObject) -> None:
        longtask.retry(LongTask.objects.get(pk=data.draw(st.sampled_from(self.tasks))))

    # The rules: few, so that hypothesis often strings the interesting ones together.

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), action=st.sampled_from(["deliver", "deliver", "twice", "lose", "drain"]))
    def job(self, data: st.DataObject, action: str) -> None:
        if action == "drain":  # idle workers run everything queued, and what that queues
            self.drain(limit=500)
            return
        {"deliver": self.deliver, "twice": self.deliver_twice, "lose": self.lose_job}[action](data)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), what=st.sampled_from(["task", "chunk"]))
    def hang(self, data: st.DataObject, what: str) -> None:
        (self.hang_task_run if what == "task" else self.hang_chunk)(data)

    @precondition(lambda self: self.zombie_runs or self.zombie_chunks)
    @rule(data=st.data(), action=st.sampled_from(["beat", "fail", "retry", "succeed", "chunk"]))
    def wake(self, data: st.DataObject, action: str) -> None:
        if action == "chunk" or not self.zombie_runs:
            if self.zombie_chunks:
                self.zombie_chunk_records(data)
        else:
            self.zombie_task_writes(data, action)

    @rule(action=st.sampled_from(["now", "later", "take_over", "settle"]))
    def sweep(self, action: str) -> None:
        if action == "settle":  # workers and sweepers run until every task has ended
            self.settle()
            return
        {
            "now": self.sweep_now,
            "later": self.sweep_later,
            "take_over": self.sweep_later_and_take_over,
        }[action]()

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry"]))
    def user(self, data: st.DataObject, action: str) -> None:
        (self.cancel if action == "cancel" else self.retry)(data)

    # Invariants ------------------------------------------------------------------------

    @invariant()
    def counters_equal_rows(self) -> None:
        finished = Q(subtasks__status__in=[Status.SUCCEEDED, Status.FAILED])
        rows = LongTask.objects.annotate(
            n=Count("subtasks"),
            done=Count("subtasks", filter=finished),
            failed=Count("subtasks", filter=Q(subtasks__status=Status.FAILED)),
        )
        for task in rows:
            assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (
                task.n,
                task.done,
                task.failed,
            ), f"counters of {task.pk} ({task.status}) differ from its rows"
            assert task.subtask_cursor >= task.done

    @invariant()
    def gather_committed_at_most_once_per_claim(self) -> None:
        for task_id, times in Counter(test_kinds.GATHERED).items():
            assert times <= self.gather_claims[task_id], f"gather of {task_id} ran unclaimed"

    @invariant()
    def nothing_waits_under_a_finished_parent_after_a_sweep(self) -> None:
        # Skipped subtasks are CANCELLED; none is left RUNNING or RETRYING by the engine
        # under a finished parent except those a frozen chunk still holds.
        held = {pk for _, claimed in self.zombie_chunks for pk, *_ in claimed.rows}
        orphans = SubTask.objects.filter(
            parent__status__in=FINISHED_STATUSES, status=Status.RETRYING
        ).exclude(pk__in=held)
        assert not orphans.exists(), "a RETRYING subtask under a finished parent"

    def settle(self) -> None:
        """Frozen workers are gone for good; idle workers and sweeps run until all has ended."""
        self.zombie_runs.clear()
        self.zombie_chunks.clear()
        for _round in range(40):
            self.drain(limit=5000)
            if not LongTask.objects.exclude(status__in=FINISHED_STATUSES).exists():
                break
            self.offset += LATER
            recovery.sweep(now=timezone.now() + self.offset)

    def teardown(self) -> None:
        """Liveness: with the rules stopped, idle workers and sweeps finish every task."""
        self.settle()
        stuck = list(
            LongTask.objects.exclude(status__in=FINISHED_STATUSES).values_list("kind", "status")
        )
        assert not stuck, f"tasks never finished: {stuck}"
        self.counters_equal_rows()
        for task in LongTask.objects.filter(status=Status.SUCCEEDED, kind__in=FANOUTS):
            n = self.params[str(task.pk)]["n"]
            failed = set(
                SubTask.objects.filter(parent=task, status=Status.FAILED).values_list(
                    "index", flat=True
                )
            )
            expected = [None if i in failed else i * i for i in range(n)]
            assert task.result == expected, f"wrong result for {self.params[str(task.pk)]}"
            if task.kind == "test-squares":
                assert not failed
        broker.clear()


class _Drawn:
    """Stands for hypothesis's ``data`` in a replayed case: each draw takes the next value."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, strategy: Any) -> Any:
        return self.values.pop(0)


def test_a_frozen_run_wakes_with_the_row_it_claimed(test_kinds_registered: None) -> None:
    """A case hypothesis found: an empty fan-out's run freezes, is swept and re-run (which
    queues the gather), then wakes. It goes on from the row it claimed (a split it no
    longer holds), not from the row as it is now, so it runs no gather."""
    model = EngineModel()
    model.start_fanout(kind="test-squares", n=0, fail_index=None, flaky=0)
    task_id = model.tasks[0]
    model.hang(data=_Drawn(task_id), what="task")
    model.sweep(action="later")
    model.job(data=_Drawn(0), action="deliver")
    assert LongTask.objects.get(pk=task_id).fan_in_at is not None  # the gather is queued
    model.wake(data=_Drawn(0), action="succeed")
    assert test_kinds.GATHERED == []
    model.gather_committed_at_most_once_per_claim()
    model.teardown()
    assert LongTask.objects.get(pk=task_id).result == []
    assert [task_id] == test_kinds.GATHERED


# Chunk sizes by the workload alone, never by measured durations: a replayed example must
# find the same jobs to draw from (with sizes from timings, hypothesis saw a job list of
# another length and raised FlakyStrategyDefinition).
@override_settings(LONGTASK_CHUNK_TARGET_SECONDS=1e9)
def test_the_engine_model(test_kinds_registered: None) -> None:
    assert {kind.name for kind in TEST_KINDS} >= {*FANOUTS, "test-flaky"}
    run_state_machine_as_test(
        EngineModel,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=bool(os.environ.get("CI")),
        ),
    )

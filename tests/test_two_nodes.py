"""A gather longer than STALE_AFTER while sweepers run on two nodes: it runs exactly once.

Two nodes each run ``longtask_worker --queue default`` and ``--queue subtasks`` on the
shared database and broker (SQLite and the ORM broker on the embedded default;
PostgreSQL and Redis in the services pass): four sweepers, each every SWEEP_INTERVAL.
The fan-out's gather takes more than twice STALE_AFTER. It runs as the parent's own
claimed, heart-beaten run, so no sweeper may take it for lost and none may run it.

A decoy (a run that stops beating while the gather runs) shows that the sweepers did
sweep meanwhile: one of them recovers the decoy and leaves the gather alone.

Worker processes register kinds from the ``longtasks.py`` of an installed app. This
module's kinds are not in ``tests/longtasks.py``, so the workers get a settings module
and an app made for the test (``worker_settings``), which install them.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from django import forms
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

import longtask
from longtask.engine.heartbeat import node_name
from longtask.kinds import FanOutKind, Kind, registry
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests.helpers import wait_for
from tests.processes import ROOT, qcluster, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STALE_AFTER = 3.0
RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.5",
    "LONGTASK_STALE_AFTER": str(STALE_AFTER),
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}
GATHER_SECONDS = 2.5 * STALE_AFTER
SQUARES = 40


# Kinds ------------------------------------------------------------------------------------


class SlowGatherForm(forms.Form):
    n = forms.IntegerField(min_value=0)
    gather_seconds = forms.FloatField(min_value=0)


def gather_log(task_id: Any) -> Path:
    """Where each gather of ``task_id`` writes one line when it begins and one when it ends."""
    return Path(settings.DATA_DIR) / f"gather-{task_id}.log"


def gather_lines(task_id: Any) -> list[str]:
    path = gather_log(task_id)
    return path.read_text().splitlines() if path.exists() else []


class SlowGather(FanOutKind):
    """Squares, gathered slowly (``gather_seconds``); every gather leaves two lines."""

    name = "test-two-nodes-slow-gather"
    form_class = SlowGatherForm

    def split(self, params: dict[str, Any]):
        for i in range(params["n"]):
            yield {"i": i}

    def run_subtask(self, params: dict[str, Any]) -> Any:
        return params["i"] ** 2

    def gather(self, task: Any, results: Any) -> Any:
        with gather_log(task.pk).open("a") as log:
            log.write(f"begin {node_name()} {os.getpid()}\n")
        squares = list(results)
        time.sleep(task.parameters["gather_seconds"])  # the gather's own (long) work
        with gather_log(task.pk).open("a") as log:
            log.write(f"end {node_name()} {os.getpid()}\n")
        return {"sum": sum(squares), "count": len(squares)}


class Quick(Kind):
    """The decoy's kind: done at once."""

    name = "test-two-nodes-quick"

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        return {"attempt": task.attempts}


KINDS = [SlowGather, Quick]


@pytest.fixture(autouse=True)
def _kinds() -> Iterator[None]:
    for kind in KINDS:
        registry.register(kind)
    # Redis is not rolled back with the database (the ORM broker's table is).
    yield from broker.emptied()
    for kind in KINDS:
        registry.unregister(kind.name)


# Worker processes ----------------------------------------------------------------------------


def worker_settings(where: Path) -> dict[str, str]:
    """Environment for worker processes that install this module's kinds.

    Writes a settings module (the tests' settings plus one app) and that app, whose
    ``longtasks.py`` registers ``KINDS``, under ``where``.
    """
    app = where / "two_nodes_kinds"
    app.mkdir(exist_ok=True)
    (app / "__init__.py").write_text("")
    (app / "longtasks.py").write_text(
        "from longtask.kinds import registry\n"
        "from tests.test_two_nodes import KINDS\n\n"
        "for kind in KINDS:\n"
        "    registry.register(kind)\n"
    )
    (where / "two_nodes_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "two_nodes_kinds"]  # noqa: F405\n'
    )
    return {
        "DJANGO_SETTINGS_MODULE": "two_nodes_settings",
        "PYTHONPATH": os.pathsep.join([str(where), str(ROOT)]),
    }


def node(log_path: Path, name: str, queue: str, **env: str) -> Any:
    """Run ``manage.py longtask_worker --queue QUEUE`` as node ``name`` for the block."""
    command = ("longtask_worker", "--queue", queue)
    return qcluster(log_path, command=command, **{"LONGTASK_NODE": name, **RECOVERY, **env})


def fresh(task: LongTask) -> LongTask:
    close_old_connections()
    task.refresh_from_db()
    return task


def logs_text(paths: list[Path]) -> str:
    return "".join(path.read_text(errors="replace") for path in paths if path.exists())


# The test -----------------------------------------------------------------------------------


def test_a_gather_longer_than_stale_after_runs_once_with_sweepers_on_two_nodes(tmp_path):
    began = time.monotonic()
    # The decoy: a run that will stop beating while the gather runs. It is made RUNNING
    # by hand (its job removed), with a heartbeat in the future until then.
    decoy = longtask.start(Quick.name, {})
    broker.clear()
    LongTask.objects.filter(pk=decoy.pk).update(
        status=Status.RUNNING,
        token="decoy-token",
        attempts=1,
        started_at=timezone.now(),
        heartbeat_at=timezone.now() + datetime.timedelta(days=1),
        worker="a lost node",
    )
    task = longtask.start(SlowGather.name, {"n": SQUARES, "gather_seconds": GATHER_SECONDS})
    env = worker_settings(tmp_path)
    logs = {
        (name, queue): tmp_path / f"{name}-{queue}.log"
        for name in ("node-a", "node-b")
        for queue in ("default", "subtasks")
    }
    with ExitStack() as stack:
        workers = {key: stack.enter_context(node(log, *key, **env)) for key, log in logs.items()}
        wait_for(lambda: gather_lines(task.pk), 60, "the gather to begin")
        gather_began = time.monotonic()
        # The decoy stops beating now: stale after STALE_AFTER, well before the gather ends.
        LongTask.objects.filter(pk=decoy.pk).update(heartbeat_at=timezone.now())
        wait_for(lambda: fresh(decoy).attempts > 1 or decoy.is_finished, 30, "a sweep of the decoy")
        decoy_swept = time.monotonic() - gather_began
        assert len(gather_lines(task.pk)) == 1, "the gather ended before the decoy was swept"
        gathering = fresh(task)
        assert gathering.status == Status.RUNNING and gathering.fan_in_at is not None
        wait_for(lambda: fresh(task).is_finished, 60, "the task to finish")
        gather_took = time.monotonic() - gather_began
        wait_for(lambda: fresh(decoy).is_finished, 30, "the decoy to finish")
        assert all(process.poll() is None for process in workers.values()), "a worker died"
        stop_all(list(workers.values()))
    output = logs_text(list(logs.values()))

    assert task.status == Status.SUCCEEDED, (task.error, output[-3000:])
    assert task.result == {"sum": sum(i * i for i in range(SQUARES)), "count": SQUARES}
    # Counters equal the rows by status; each square counted once.
    rows = SubTask.objects.filter(parent=task)
    assert (task.subtasks_total, task.subtasks_done, task.subtasks_failed) == (SQUARES, SQUARES, 0)
    assert rows.filter(status=Status.SUCCEEDED).count() == SQUARES == rows.count()
    assert sorted(rows.values_list("finish_seq", flat=True)) == list(range(1, SQUARES + 1))
    # The gather ran once: one begin and one end, one fan-in logged, its first attempt.
    lines = gather_lines(task.pk)
    assert [line.split()[0] for line in lines] == ["begin", "end"], lines
    assert lines[0].split()[1:] == lines[1].split()[1:], lines  # the same node and process
    assert output.count(f"id={task.pk} kind={SlowGather.name} status=SUCCEEDED after fan-in") == 1
    assert task.attempts == 1, task.history
    assert task.history == [], task.history
    assert f"id={task.pk} kind={SlowGather.name} status=RETRYING" not in output
    # A sweeper did recover the decoy meanwhile (a lost attempt, then its retry succeeded).
    assert fresh(decoy).status == Status.SUCCEEDED, (decoy.error, decoy.history)
    assert decoy.attempts == 2 and "WorkerLost" in decoy.history[0]["error"], decoy.history
    recovery = f"id={decoy.pk} kind={Quick.name} status=RETRYING attempt=1"
    swept_by = [name for (name, _), log in logs.items() if recovery in log.read_text()]
    assert len(swept_by) == 1, f"the decoy's recovery was logged by {swept_by}"
    assert "database is locked" not in output
    print(
        f"\ntwo nodes: gather of {GATHER_SECONDS:.1f}s (STALE_AFTER {STALE_AFTER:.0f}s) on "
        f"{lines[0].split()[1]} ran once; decoy swept {decoy_swept:.1f}s into the gather by "
        f"{swept_by[0]}; finished {gather_took:.1f}s after the gather began; "
        f"{time.monotonic() - began:.1f}s in all"
    )

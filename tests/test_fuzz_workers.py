"""Hostile task rows, written straight to the table around ``start()`` and its form.

The engine must fail such a task with a one-line error naming the problem, and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.db import transaction
from django.db.models import JSONField, TextField, Value

from longtask.engine import enqueue, run
from longtask.kinds import registry
from longtask.models import LongTask, Status

pytestmark = pytest.mark.django_db(transaction=True)


# Hostile rows -----------------------------------------------------------------------------


#: Every column but the parameters (a hostile row's may not even be readable).
READABLE = [f.attname for f in LongTask._meta.concrete_fields if f.name != "parameters"]


@dataclass(frozen=True)
class Hostile:
    """A row no start() would write: ``params`` as given, or ``raw`` JSON text."""

    kind: str
    params: Any = None
    #: JSON text written as is (Django's encoder would refuse it, or write it otherwise).
    raw: str | None = None
    #: Words the task's error must contain.
    names: str = ""

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


def assert_failed_clearly(task: LongTask, hostile: Hostile) -> None:
    """FAILED at the first attempt, with a one-line error naming the problem."""
    assert task.status == Status.FAILED, (hostile, task.status, task.error)
    assert hostile.names in task.error, (hostile, task.error)
    assert "\n" not in task.error and "Traceback" not in task.error, task.error
    assert task.attempts <= 1, (hostile, task.attempts, task.history)


IMPORT_VALUE_ERROR = Hostile("task:.x", {}, names="unknown task kind 'task:.x'")
IMPORT_TYPE_ERROR = Hostile("task:..", {}, names="unknown task kind 'task:..'")


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

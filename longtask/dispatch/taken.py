"""A claimed task's job leaves the ORM broker's table in the claim's own transaction.

Once a run has claimed its task, the row is the record: a worker that dies is found by
its heartbeat and the task queued again (``longtask.engine.recovery``), never by django-q2
delivering the job again after ``retry``, which could only find the task claimed. So the
job has done its work at the claim. With django-q2's ORM broker the job is a row of
``django_q_ormq`` that the cluster's monitor deletes after the job returns: on SQLite, a
write of its own, in turn with the workers' claims and finishes for the one write lock.
Here the claim deletes the row instead, in its transaction, and once that commits the
monitor is told there is nothing left to acknowledge (the job's ``ack_id`` is cleared,
as django-q2's monitor reads it). A claim that rolls back deletes nothing, and the
monitor acknowledges the job as before.

The worker loop announces each job with django-q2's ``pre_execute`` signal, in the
worker process: ``note_jobs`` (connected by the app's ``ready``) keeps the job in hand.
Only a job of ``longtask.jobs.run_task`` for that very task, from an ORM broker in the
task table's database, is taken; any other job is left to the monitor.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django_q.conf import Conf
from django_q.signals import pre_execute

from longtask.dispatch.base import RUN_JOB
from longtask.dispatch.orm import delete_sql

#: The job the worker is running, as django-q2 handed it over (one at a time per process).
_in_hand: dict[str, Any] | None = None


def note_jobs() -> None:
    """In a worker of a cluster on the ORM broker, keep each job in hand while it runs."""
    if Conf.ORM == DEFAULT_DB_ALIAS:
        pre_execute.connect(_hold, dispatch_uid="longtask-jobs-in-hand", weak=False)


def _hold(sender: object, func: object, task: dict[str, Any], **kwargs: object) -> None:
    global _in_hand
    _in_hand = task


def in_hand(task_id: object) -> bool:
    """Whether the job in hand is this task's, on the ORM broker, not yet acknowledged."""
    job = _in_hand
    if job is None or not job.get("ack_id") or job.get("func") != RUN_JOB:
        return False
    args: list[object] = list(job.get("args") or ())
    return args in ([str(task_id)], [task_id])


def take(task_id: object) -> bool:
    """In the claim's transaction: delete the job in hand if it is this task's; say so."""
    job = _in_hand
    if job is None or not in_hand(task_id):
        return False
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute(delete_sql(DEFAULT_DB_ALIAS), [job["ack_id"]])
    transaction.on_commit(functools.partial(_taken, job))
    return True


def _taken(job: dict[str, Any]) -> None:
    job["ack_id"] = None  # django-q2's monitor acknowledges only a job that has one

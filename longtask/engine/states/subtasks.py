"""Transitions of a fan-out's subtasks, claimed and moved in chunks."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from longtask.engine import enqueue
from longtask.engine.heartbeat import node_name
from longtask.engine.states.common import (
    CANCELLED,
    CLAIMABLE,
    DUE_TOLERANCE,
    FAILED,
    QUEUED,
    RUNNING,
    SUBTASK_TRANSITIONS,
    SUCCEEDED,
    new_token,
)
from longtask.models import FINISHED_STATUSES, LongTask, SubTask
from longtask.serialize import JSONObject

# A parent id arrives as a UUID or as the str a job carried. Django takes
# both in ``parent_id=`` (as in ``pk=``), but django-stubs types an FK's lookup with the
# related pk's UUID only: the lines marked "type: ignore[misc]" below are those.


def skip_subtasks(parent_id: UUID | str) -> int:
    """Skip a stopped parent's subtasks that have not started (they are not counted)."""
    return SubTask.objects.filter(parent_id=parent_id, status__in=CLAIMABLE).update(  # type: ignore[misc]
        status=CANCELLED, token=""
    )


def abandon_subtasks(parent_id: UUID | str) -> int:
    """Stop the running subtasks of a finished parent whose chunks are gone (kind removed)."""
    with transaction.atomic():
        parent = lock_parent(parent_id)
        if parent is None or parent.status not in (SUCCEEDED, FAILED, CANCELLED):
            return 0
        return SubTask.objects.filter(parent_id=parent_id, status=RUNNING).update(  # type: ignore[misc]
            status=CANCELLED, token=""
        )


def reset_subtasks(parent_id: UUID | str) -> int:
    """Put a parent's failed, skipped and running subtasks back to QUEUED; return the failed.

    Call with the parent's row locked. Running ones are taken from their chunk (its
    token no longer matches), so nothing it writes later counts.
    """
    rows = SubTask.objects.filter(parent_id=parent_id)  # type: ignore[misc]
    changes: dict[str, object] = {
        "status": QUEUED,
        "finish_seq": None,
        "finished_at": None,
        "attempts": 0,
        "token": "",
        "error": "",
        # No job yet: the parent's next attempt queues them (engine/window.py).
        "due_at": None,
    }
    failed = rows.filter(status=FAILED).update(**changes)
    rows.filter(status__in=SUBTASK_TRANSITIONS["reset"].sources).update(**changes)
    return failed


@dataclass
class Claimed:
    token: str
    #: (pk, index, parameters, attempt) of each subtask, in index order.
    rows: list[tuple[int, int, JSONObject, int]] = field(default_factory=list)


def claim_subtasks(
    parent_id: UUID | str, first: int, last: int, indexes: Sequence[int] | None
) -> Claimed:
    """Mark a chunk's claimable subtasks RUNNING under one new token."""
    now, claimed = timezone.now(), Claimed(new_token())
    with transaction.atomic():
        rows = SubTask.objects.filter(  # type: ignore[misc]
            Q(status=QUEUED) | Q(due_at__isnull=True) | Q(due_at__lte=now + DUE_TOLERANCE),
            parent_id=parent_id,
            parent__status=RUNNING,
            status__in=CLAIMABLE,
        )
        if indexes is not None:
            rows = rows.filter(index__in=list(indexes))
        else:
            rows = rows.filter(index__gte=first, index__lte=last)
        picked = list(
            rows.select_for_update(skip_locked=True, of=("self",))
            .order_by("index")
            .values_list("pk", "index", "parameters", "attempts")
        )
        if picked:
            SubTask.objects.filter(pk__in=[row[0] for row in picked], status__in=CLAIMABLE).update(
                status=RUNNING,
                token=claimed.token,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                worker=node_name(),
            )
    claimed.rows = [(pk, index, params, attempts + 1) for pk, index, params, attempts in picked]
    return claimed


def beat_subtasks(token: str, pks: Sequence[int]) -> int:
    """Move the heartbeat of the chunk's subtasks still running under its token."""
    return SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token).update(
        heartbeat_at=timezone.now()
    )


def lock_parent(parent_id: UUID | str) -> LongTask | None:
    return (
        LongTask.objects.select_for_update()
        .only("pk", "status", "kind", "queue", "subtask_cursor", "history", "attempts")
        .filter(pk=parent_id)
        .first()
    )


def stop_subtasks(parent_id: UUID | str, token: str, pks: Sequence[int]) -> int:
    """A chunk gives up the subtasks it has not run, because its parent stopped.

    Under the parent's lock: if the parent runs after all, they are queued again.
    """
    with transaction.atomic():
        parent = lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is not None and parent.status == RUNNING:
            return _give_back(parent, rows, timezone.now())
        return _set_aside(parent, rows)


def give_back(parent_id: UUID | str, token: str, pks: Sequence[int], eta: datetime.datetime) -> int:
    """A chunk hands back subtasks it claimed but did not start, to run at ``eta``."""
    with transaction.atomic():
        parent = lock_parent(parent_id)
        rows = SubTask.objects.filter(pk__in=list(pks), status=RUNNING, token=token)
        if parent is None or parent.status != RUNNING:
            return _set_aside(parent, rows)
        return _give_back(parent, rows, eta)


def _set_aside(parent: LongTask | None, rows: QuerySet[SubTask]) -> int:
    """Running subtasks of a parent that does not run now (its lock held).

    A finished (or deleted) parent's are skipped. A parent between two attempts (QUEUED
    or RETRYING after a lost worker, say) is not done with them: they wait, with no job,
    for its next attempt, which queues them (``window.redispatch_below_line``).
    Cancelled, they were never run again and the parent waited for them forever.
    """
    if parent is None or parent.status in FINISHED_STATUSES:
        return rows.update(status=CANCELLED, token="")
    return rows.update(status=QUEUED, attempts=F("attempts") - 1, worker="", token="", due_at=None)


def _give_back(parent: LongTask, rows: QuerySet[SubTask], eta: datetime.datetime) -> int:
    indexes = list(rows.order_by("index").values_list("index", flat=True))
    moved = rows.update(status=QUEUED, attempts=F("attempts") - 1, worker="", token="", due_at=eta)
    enqueue.chunk_indexes(parent, indexes, eta=eta)
    return moved


def redispatched(pks: Iterable[int], due_before: datetime.datetime) -> list[int]:
    """Mark waiting subtasks as dispatched now; return the indexes this caller won."""
    now = timezone.now()
    rows = SubTask.objects.filter(pk__in=list(pks), status__in=CLAIMABLE, due_at__lt=due_before)
    indexes = list(rows.select_for_update(skip_locked=True).values_list("index", flat=True))
    SubTask.objects.filter(pk__in=list(pks), index__in=indexes, status__in=CLAIMABLE).update(
        due_at=now
    )
    return sorted(indexes)

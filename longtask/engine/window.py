"""A fan-out's window: only a few of its chunk jobs wait in the broker at a time.

Queues are FIFO. Were every subtask of a 40,000-square quilt queued at its split, a
3-square quilt started a second later would wait behind all of them. Instead a fan-out
keeps at most ``window_subtasks`` subtasks dispatched and unfinished (about
FANOUT_WINDOW_JOBS chunk jobs); each chunk that records its outcomes queues the next
ones, at the tail of the queue, behind whatever other fan-outs queued meanwhile: the
running fan-outs take turns. The queue holds O(running fan-outs x window) jobs, not
O(subtasks).

``dispatched_upto`` on the parent row is the line: subtasks below it have had a job
(their ``due_at`` is set, so the sweeper re-dispatches one whose job was lost); those
above wait with no job and no ``due_at``, which the sweeper leaves alone. Subtasks in
flight are ``dispatched_upto - subtasks_done``. The line moves by a compare-and-set
UPDATE, so two chunks finishing at once never dispatch the same subtasks twice.
"""

from __future__ import annotations

from django.utils import timezone

from longtask.conf import settings
from longtask.engine import enqueue
from longtask.kinds import FanOutKind
from longtask.models import LongTask, SubTask


def window_jobs() -> int:
    jobs = settings.FANOUT_WINDOW_JOBS
    return 2 * max(1, settings.SUBTASK_PARALLELISM) if jobs is None else jobs


def chunk(kind: FanOutKind, task: LongTask, waiting: int) -> int:
    """Subtasks per chunk job of the window: sized by the observed durations, and small
    enough that the ``waiting`` subtasks leave work for every worker."""
    return enqueue.chunk_size(kind, task, waiting) or enqueue.INITIAL_CHUNK_SIZE


def window_subtasks(kind: FanOutKind, task: LongTask) -> int | None:
    """Most subtasks a fan-out may have dispatched and unfinished; None: no window.

    (A chunk is largest while the most subtasks wait: at the start.)
    """
    jobs = window_jobs()
    return jobs * chunk(kind, task, task.subtasks_total) if jobs else None


def refill(task: LongTask, kind: FanOutKind) -> int:
    """Queue chunk jobs for the next waiting subtasks while the window has room; return
    how many were dispatched. Call inside the transaction that changed the counters.

    Whole chunks only, but for the last subtasks saved: a chunk of one subtask would
    cost a job for a subtask's work.
    """
    row = (
        LongTask.objects.filter(pk=task.pk)
        .values_list("dispatched_upto", "subtasks_done", "subtasks_total")
        .first()
    )
    if row is None:
        return 0
    upto, done, total = row
    if not window_jobs():  # no window: everything saved goes at once
        return _dispatch(task, kind, upto, total - upto, None)
    size = chunk(kind, task, total - upto)
    room = min(total - upto, window_jobs() * size - (upto - done))
    count = room if upto + room == total else room // size * size
    return _dispatch(task, kind, upto, count, size) if count > 0 else 0


def _dispatch(task: LongTask, kind: FanOutKind, upto: int, count: int, size: int | None) -> int:
    # Compare-and-set: of two refills racing from the same line, one moves it.
    if count <= 0 or not LongTask.objects.filter(pk=task.pk, dispatched_upto=upto).update(
        dispatched_upto=upto + count
    ):
        return 0
    SubTask.objects.filter(parent_id=task.pk, index__gte=upto, index__lt=upto + count).update(
        due_at=timezone.now()
    )
    if size is None:
        enqueue.chunk_ranges(task, kind, upto, count)
    else:
        enqueue.chunk_spans(
            task, kind, [(s, min(s + size, upto + count)) for s in range(upto, upto + count, size)]
        )
    return count


def redispatch_below_line(task: LongTask) -> None:
    """Queue again the waiting subtasks below the line (a new attempt of the parent: their
    jobs may be gone); those above it are the window's to dispatch."""
    upto = LongTask.objects.filter(pk=task.pk).values_list("dispatched_upto", flat=True).get()
    waiting = SubTask.objects.filter(
        parent_id=task.pk, index__lt=upto, status__in=("QUEUED", "RETRYING")
    )
    indexes = list(waiting.order_by("index").values_list("index", flat=True))
    waiting.update(due_at=timezone.now())
    enqueue.chunk_indexes(task, indexes)

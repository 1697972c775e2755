"""The durable record of a long task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import NotRequired, TypedDict

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from longtask import progress as progress_store
from longtask.exceptions import Cancelled
from longtask.kinds import FanOutKind, registry
from longtask.progress import ProgressRecord
from longtask.serialize import JSONObject

#: Longest stored one-line error; the full text is in ``traceback``.
ERROR_MAX_LENGTH = 1000


class Status(models.TextChoices):
    QUEUED = "QUEUED", _("Queued")  # waiting for a worker
    RUNNING = "RUNNING", _("Running")  # a worker is running it
    RETRYING = "RETRYING", _("Retrying")  # an attempt failed; waiting to run again
    SUCCEEDED = "SUCCEEDED", _("Succeeded")  # finished; the result is stored
    FAILED = "FAILED", _("Failed")  # finished for good with an error
    CANCELLED = "CANCELLED", _("Cancelled")  # stopped on request before finishing


ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING})
FINISHED_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
#: A worker may claim a task in these states.
CLAIMABLE_STATUSES = (Status.QUEUED, Status.RETRYING)


class HistoryEntry(TypedDict):
    """One entry of ``LongTask.history``: a failure, a retry, a released name."""

    event: str
    #: The attempt it happened in (absent for a released name).
    attempt: NotRequired[int]
    #: The one-line error (the released name, for "name released").
    error: str
    #: ISO 8601 time.
    at: str
    #: The failure's exception class path, when known.
    exception: NotRequired[str]


class RunEntry(TypedDict):
    """One entry of ``LongTask.runs``: who claimed an attempt, and when (ISO 8601)."""

    worker: str
    at: str


class LongTaskQuerySet(models.QuerySet["LongTask"]):
    def active(self) -> LongTaskQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def finished(self) -> LongTaskQuerySet:
        return self.filter(status__in=FINISHED_STATUSES)


class LongTask(models.Model):
    """One unit of long-running work: its parameters, state, result and error."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=100)
    #: Optional unique key: starting a task under a name that exists returns that task.
    name = models.CharField(max_length=200, null=True, blank=True, unique=True)
    queue = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        # Deleting the owner deletes their tasks: nulling it would make them public.
        on_delete=models.CASCADE,
        related_name="longtasks",
    )
    parameters: models.JSONField[JSONObject, JSONObject] = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    error = models.CharField(max_length=ERROR_MAX_LENGTH, blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: Past failures and retries, oldest first: [{"event", "attempt", "error", "at"}],
    #: failures with the exception's class path too ("exception").
    history: models.JSONField[list[HistoryEntry], list[HistoryEntry]] = models.JSONField(
        default=list, blank=True
    )
    #: The last progress record, persisted when the task ends (live progress is in the cache).
    last_progress: models.JSONField[ProgressRecord | None, ProgressRecord | None] = (
        models.JSONField(null=True, blank=True)
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: The worker (LONGTASK_NODE, else host:pid) that claimed the latest attempt.
    worker = models.CharField(max_length=200, blank=True)
    #: Each attempt's worker and start, oldest first: [{"worker", "at"}], kept across retries,
    #: for kinds with ``keeps_runs`` (django.tasks functions).
    runs: models.JSONField[list[RunEntry], list[RunEntry]] = models.JSONField(
        default=list, blank=True
    )
    #: The fencing token of the run that holds the task ("" when no run does): every
    #: write a worker makes is conditional on it, so a run that lost the task (it was
    #: re-queued while slow but alive) can no longer change it.
    token = models.CharField(max_length=16, blank=True, default="")
    #: When its current job is due: queued at, or the end of a delay (retry, limits).
    #: The sweeper re-dispatches a task still waiting STALE_AFTER past it with nothing
    #: older left in its queue (the job was lost).
    due_at = models.DateTimeField(null=True, blank=True)
    #: When a RETRYING task runs again.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    #: Set by cancel() on a running task; the worker stops at its next progress() call.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    #: When the result was first shown on the status page.
    result_viewed_at = models.DateTimeField(null=True, blank=True)
    # Fan-out bookkeeping (zero for plain tasks). subtasks_done counts finished
    # subtasks, succeeded or failed for good; it is only ever moved by the
    # conditional UPDATE that finishes a subtask, so nothing counts twice.
    subtasks_total = models.PositiveIntegerField(default=0)
    subtasks_done = models.PositiveIntegerField(default=0)
    subtasks_failed = models.PositiveIntegerField(default=0)
    #: Last finish_seq handed out; unlike subtasks_done it never goes back (retries).
    subtask_cursor = models.PositiveIntegerField(default=0)
    #: Subtasks with an index below this have had their chunk jobs queued; the rest wait
    #: for room in the fan-out's window (longtask/engine/window.py).
    dispatched_upto = models.PositiveIntegerField(default=0)
    #: Sum of the run times of finished subtasks (seconds), for chunk sizing and the ETA.
    subtask_seconds = models.FloatField(default=0)
    #: The split has queued every subtask (the seeds' "all loaded" flag).
    split_done = models.BooleanField(default=False)
    #: When every subtask had finished and the gather step was queued (once per attempt
    #: of the fan-out: a retry clears it).
    fan_in_at = models.DateTimeField(null=True, blank=True)
    # Iterative bookkeeping: the keyset cursor after the last committed batch.
    cursor = models.JSONField(null=True, blank=True)
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(null=True, blank=True)

    objects = LongTaskQuerySet.as_manager()

    #: Set by ``longtask.start`` on the task it returns (not a column): True when a task
    #: already held the name, so that one was returned and nothing was started.
    deduplicated: bool

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="longtask_status_created"),
            models.Index(fields=["owner", "-created_at"], name="longtask_owner_created"),
            models.Index(fields=["kind", "-created_at"], name="longtask_kind_created"),
            # The sweeper's reads: only active rows, so their cost does not grow with history.
            models.Index(
                fields=["status", "heartbeat_at"],
                condition=Q(status__in=sorted(ACTIVE_STATUSES)),
                name="longtask_active_heartbeat",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=Status.values), name="longtask_status_valid"
            ),
            # finished_at is set exactly when the task has finished.
            models.CheckConstraint(
                condition=(
                    Q(status__in=FINISHED_STATUSES, finished_at__isnull=False)
                    | (~Q(status__in=FINISHED_STATUSES) & Q(finished_at__isnull=True))
                ),
                name="longtask_finished_at_iff_finished",
            ),
            # A running task has been started.
            models.CheckConstraint(
                condition=~Q(status=Status.RUNNING) | Q(started_at__isnull=False),
                name="longtask_running_has_started_at",
            ),
            models.CheckConstraint(
                condition=Q(subtasks_done__lte=F("subtasks_total"))
                & Q(subtasks_failed__lte=F("subtasks_done")),
                name="longtask_subtask_counts_consistent",
            ),
            # Only a succeeded task has a result.
            models.CheckConstraint(
                condition=Q(status=Status.SUCCEEDED) | Q(result__isnull=True),
                name="longtask_result_only_if_succeeded",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("longtask:status", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def progress(self, current: float, total: float | None = None, message: str = "") -> None:
        """Report progress (cheap: writes to the cache are throttled, the last one is kept).

        Raises ``longtask.Cancelled`` once the task has been cancelled.
        """
        self.progress_reporter.update(current, total, message)
        event = self.__dict__.get("_cancel_event")
        if event is not None and event.is_set():
            raise Cancelled(f"task {self.pk} was cancelled")

    @property
    def progress_reporter(self) -> progress_store.ProgressReporter:
        reporter = self.__dict__.get("_progress_reporter")
        if reporter is None:
            reporter = self.__dict__["_progress_reporter"] = progress_store.ProgressReporter(
                self.pk
            )
        return reporter

    @property
    def is_fanout(self) -> bool:
        return isinstance(registry.find(self.kind), FanOutKind)

    def progress_record(
        self, cached: Mapping[str, ProgressRecord] | None = None, now: float | None = None
    ) -> ProgressRecord | None:
        """Return the progress record: persisted once finished, else live.

        Live progress of a fan-out task comes from its own counters (no cache read); a
        plain task's from the cache, or from ``cached`` (records by id, read for many
        tasks at once with ``progress.read_many_progress``).
        """
        if self.is_finished:
            return self.last_progress
        if self.is_fanout and self.started_at:
            return self.fanout_progress(now)
        if cached is not None:
            return cached.get(str(self.pk))
        return progress_store.read_progress(self.pk)

    def fanout_progress(self, now: float | None = None) -> ProgressRecord:
        """Progress of a fan-out task from its own counters: finished / total, rate since start."""
        now = time.time() if now is None else now
        done, total = self.subtasks_done, self.subtasks_total
        rate = None
        if self.started_at and done:
            elapsed = now - self.started_at.timestamp()
            rate = done / elapsed if elapsed > 0 else None
        if self.split_done:
            message = f"{done} of {total} subtasks done"
            if self.subtasks_failed:
                message += f", {self.subtasks_failed} failed"
        else:
            message = f"Splitting: {total} subtasks queued so far"
        return {
            "current": done,
            "total": total if self.split_done else None,
            "message": message,
            "updated_at": now,
            "rate": rate,
        }

    def claimable_now(self) -> bool:
        """Say whether a worker could claim it, as far as this (possibly stale) copy knows."""
        return self.status in CLAIMABLE_STATUSES

    @property
    def cancelled(self) -> bool:
        """Say whether the task has been asked to stop (one cheap query)."""
        event = self.__dict__.get("_cancel_event")
        if event is not None and event.is_set():
            return True
        return (
            LongTask.objects.filter(pk=self.pk)
            .filter(Q(cancel_requested_at__isnull=False) | Q(status=Status.CANCELLED))
            .exists()
        )

    def event(self, event: str, error: str, exception: str = "") -> HistoryEntry:
        """One entry of ``history``; ``exception`` is the failure's class path, if known."""
        entry: HistoryEntry = {
            "event": event,
            "attempt": self.attempts,
            "error": error,
            "at": timezone.now().isoformat(),
        }
        if exception:
            entry["exception"] = exception
        return entry

    def mark_result_viewed(self) -> bool:
        """Record the first time the result was shown; later views change nothing."""
        updated = LongTask.objects.filter(
            pk=self.pk, status=Status.SUCCEEDED, result_viewed_at__isnull=True
        ).update(result_viewed_at=timezone.now())
        if updated:
            self.refresh_from_db(fields=["result_viewed_at"])
        return bool(updated)


def one_line(text: str) -> str:
    """Squash ``text`` to one line that fits the ``error`` column."""
    line = " ".join(str(text).split())
    if len(line) > ERROR_MAX_LENGTH:
        line = line[: ERROR_MAX_LENGTH - 1] + "…"
    return line

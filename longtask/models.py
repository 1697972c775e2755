"""The durable record of a long task."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from longtask import heartbeat
from longtask import progress as progress_store

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
CLAIMABLE_STATUSES = frozenset({Status.QUEUED, Status.RETRYING})


class LongTaskQuerySet(models.QuerySet["LongTask"]):
    def active(self) -> LongTaskQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def finished(self) -> LongTaskQuerySet:
        return self.filter(status__in=FINISHED_STATUSES)

    def visible_to(self, user: Any) -> LongTaskQuerySet:
        """Return the tasks ``user`` may list (anonymous tasks are reachable only by URL)."""
        from longtask.access import can_view_all  # access imports this module

        if can_view_all(user):
            return self.all()
        if user.is_authenticated:
            return self.filter(owner=user)
        return self.none()


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
    parameters = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    error = models.CharField(max_length=ERROR_MAX_LENGTH, blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: Past failures and retries, oldest first: [{"event", "attempt", "error", "at"}].
    history = models.JSONField(default=list, blank=True)
    #: The last progress record, persisted when the task ends (live progress is in the cache).
    last_progress = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: The worker (LONGTASK_NODE, else host:pid) that claimed the latest attempt.
    worker = models.CharField(max_length=200, blank=True)
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
    #: Sum of the run times of finished subtasks (seconds), for chunk sizing and the ETA.
    subtask_seconds = models.FloatField(default=0)
    #: The split has queued every subtask (the seeds' "all loaded" flag).
    split_done = models.BooleanField(default=False)
    #: Set by the one worker that wins the right to run gather.
    fan_in_at = models.DateTimeField(null=True, blank=True)
    # Iterative bookkeeping: the keyset cursor after the last committed batch.
    cursor = models.JSONField(null=True, blank=True)
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(null=True, blank=True)

    objects = LongTaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="longtask_status_created"),
            models.Index(fields=["owner", "-created_at"], name="longtask_owner_created"),
            models.Index(fields=["kind", "-created_at"], name="longtask_kind_created"),
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
            from longtask.exceptions import Cancelled

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
        from longtask.kinds import FanOutKind, registry

        return isinstance(registry.find(self.kind), FanOutKind)

    def progress_record(self) -> dict[str, Any] | None:
        """Return the progress record: persisted once finished, else live.

        Live progress of a fan-out task comes from its own counters (no cache read).
        """
        if self.is_finished:
            return self.last_progress
        if self.is_fanout and self.started_at:
            from longtask.fanout import fanout_record

            return fanout_record(self)
        return progress_store.read_progress(self.pk)

    # State changes. Each is one conditional UPDATE, so two workers racing on one
    # task can never both claim it or both finish it; each returns whether it won.

    def _transition(
        self, from_statuses: frozenset[str] | set[str], _heartbeat: Any = None, **changes: Any
    ) -> bool:
        rows = LongTask.objects.filter(pk=self.pk, status__in=from_statuses)
        if _heartbeat is not None:  # only if no worker has beaten since it was seen stale
            rows = rows.filter(heartbeat_at=_heartbeat)
        updated = rows.update(**changes)
        if updated:
            self.refresh_from_db(fields=[*changes])
            from longtask import push

            transaction.on_commit(lambda: push.notify(self.pk))
        return bool(updated)

    def claimable_now(self) -> bool:
        """Say whether ``claim`` could succeed, as far as this (possibly stale) copy knows."""
        return self.status in CLAIMABLE_STATUSES

    def claim(self) -> bool:
        """Mark a queued task RUNNING and count the attempt; False if someone else has it."""
        now = timezone.now()
        return self._transition(
            CLAIMABLE_STATUSES,
            status=Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), now),
            heartbeat_at=now,
            next_attempt_at=None,
            worker=heartbeat.node_name(),
        )

    def schedule_retry(
        self,
        error: str,
        traceback: str,
        next_attempt_at: Any,
        progress: dict[str, Any] | None = None,
        *,
        expected_heartbeat: Any = None,
    ) -> bool:
        """Put a running task whose attempt failed into RETRYING until ``next_attempt_at``."""
        error = one_line(error)
        changes: dict[str, Any] = {
            "status": Status.RETRYING,
            "history": [*self.history, self._event("attempt failed", error)],
            "error": error,
            "traceback": traceback,
            "last_progress": progress,
            "next_attempt_at": next_attempt_at,
        }
        return self._transition({Status.RUNNING}, _heartbeat=expected_heartbeat, **changes)

    def succeed(self, result: Any, progress: dict[str, Any] | None = None) -> bool:
        """Store the result of a running task and mark it SUCCEEDED."""
        return self._transition(
            {Status.RUNNING},
            status=Status.SUCCEEDED,
            result=result,
            last_progress=progress,
            error="",
            finished_at=timezone.now(),
        )

    def fail(
        self,
        error: str,
        traceback: str = "",
        progress: dict[str, Any] | None = None,
        *,
        expected_heartbeat: Any = None,
    ) -> bool:
        """Mark a running task FAILED with a one-line error and its traceback."""
        error = one_line(error)
        return self._transition(
            {Status.RUNNING},
            _heartbeat=expected_heartbeat,
            status=Status.FAILED,
            history=[*self.history, self._event("failed", error)],
            error=error,
            traceback=traceback,
            last_progress=progress,
            finished_at=timezone.now(),
        )

    def cancel(self) -> bool:
        """Cancel the task; False if it has already finished.

        A queued or retrying task becomes CANCELLED at once and never runs. A running
        fan-out task too: its queued subtasks are skipped and gather never runs. A
        running plain task is asked to stop: it raises ``Cancelled`` at its next
        ``progress()`` call (cooperative) and then becomes CANCELLED.
        """
        now = timezone.now()
        if self._transition(CLAIMABLE_STATUSES, status=Status.CANCELLED, finished_at=now):
            return True
        if self.is_fanout and self._transition(
            {Status.RUNNING}, status=Status.CANCELLED, finished_at=now, cancel_requested_at=now
        ):
            SubTask.objects.filter(parent=self, status__in=CLAIMABLE_STATUSES).update(
                status=Status.CANCELLED
            )
            return True
        updated = LongTask.objects.filter(
            pk=self.pk, status=Status.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now)
        if updated:
            self.cancel_requested_at = now
        return bool(updated) or (
            self.status == Status.RUNNING and self.cancel_requested_at is not None
        )

    def finish_cancelled(
        self, progress: dict[str, Any] | None = None, *, expected_heartbeat: Any = None
    ) -> bool:
        """Record that a running task stopped because it was cancelled."""
        return self._transition(
            {Status.RUNNING},
            _heartbeat=expected_heartbeat,
            status=Status.CANCELLED,
            last_progress=progress,
            finished_at=timezone.now(),
        )

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

    def continue_later(self) -> bool:
        """Hand a running iterative task back to the queue for its next batch."""
        return self._transition(
            {Status.RUNNING}, status=Status.QUEUED, attempts=0, heartbeat_at=timezone.now()
        )

    def requeue(self) -> bool:
        """Put a failed or cancelled task back in the queue; its last error goes to history."""
        return self._transition(
            {Status.FAILED, Status.CANCELLED},
            status=Status.QUEUED,
            history=[*self.history, self._event("retried", self.error)],
            error="",
            traceback="",
            finished_at=None,
            fan_in_at=None,
        )

    def _event(self, event: str, error: str) -> dict[str, Any]:
        return {
            "event": event,
            "attempt": self.attempts,
            "error": error,
            "at": timezone.now().isoformat(),
        }

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


# SubTask lives in its own module; importing it here registers it with the app and
# keeps ``from longtask.models import SubTask`` working. (At the end: it needs LongTask.)
from longtask.queuestate import QueueState  # noqa: E402
from longtask.subtasks import SubTask  # noqa: E402

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "LongTask",
    "QueueState",
    "Status",
    "SubTask",
    "one_line",
]

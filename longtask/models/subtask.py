"""SubTask: one unit of a fan-out task."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from longtask.models.task import ERROR_MAX_LENGTH, LongTask, Status


class SubTask(models.Model):
    """One unit of a fan-out task, with its own parameters, result and attempts."""

    id = models.BigAutoField(primary_key=True)
    #: No index of its own: ``subtask_unique_index`` (parent, index) serves every lookup by
    #: parent (a second index would be written at every row version, for nothing).
    parent = models.ForeignKey(
        LongTask, on_delete=models.CASCADE, related_name="subtasks", db_index=False
    )
    index = models.PositiveIntegerField()
    parameters = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status, default=Status.QUEUED)
    result = models.JSONField(null=True, blank=True)
    error = models.CharField(max_length=ERROR_MAX_LENGTH, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: Run time of the last attempt (seconds).
    seconds = models.FloatField(null=True, blank=True)
    #: Position in the parent's finishing order (1, 2, ...): the cursor of subtasks.json.
    finish_seq = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: The worker (LONGTASK_NODE, else host:pid) that claimed the latest attempt.
    worker = models.CharField(max_length=200, blank=True)
    #: The fencing token of the chunk run that claimed it ("" while it waits).
    token = models.CharField(max_length=16, blank=True, default="")
    #: When its job is due: queued at, or the end of a retry delay. A RETRYING row is
    #: not claimed before it, and the sweeper re-dispatches a row still waiting
    #: STALE_AFTER past it with nothing ahead of it in its queue.
    due_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["parent", "index"], name="subtask_unique_index"),
            models.UniqueConstraint(
                fields=["parent", "finish_seq"],
                condition=Q(finish_seq__isnull=False),
                name="subtask_unique_finish_seq",
            ),
            models.CheckConstraint(
                condition=Q(status__in=Status.values), name="subtask_status_valid"
            ),
            # A finished subtask has its place in the finishing order, and only it.
            models.CheckConstraint(
                condition=(
                    Q(status__in=[Status.SUCCEEDED, Status.FAILED], finish_seq__isnull=False)
                    | (
                        ~Q(status__in=[Status.SUCCEEDED, Status.FAILED])
                        & Q(finish_seq__isnull=True)
                    )
                ),
                name="subtask_finish_seq_iff_finished",
            ),
        ]
        # Every write of a subtask's status writes a new version of its row into each
        # full index, and into each partial index whose condition the new version meets:
        # the fewer indexes, the cheaper its four writes (saved, dispatched, claimed,
        # finished). A lookup by parent uses ``subtask_unique_index`` (parent, index).
        #
        # The partial indexes' conditions name a column that the engine's frequent
        # statements (claim, record, beat: by primary key or (parent, index) range, with a
        # status condition) do not test. Were a condition implied by a status alone,
        # PostgreSQL could walk the whole partial index (every waiting or running version
        # not yet vacuumed) to AND it with the primary key: with no statistics (autovacuum
        # off, or not yet run after a large split) it did, and a claim of 125 subtasks of a
        # million read 2.6 million index entries.
        indexes = [
            # The sweeper's two reads touch only waiting or running rows: partial indexes
            # keep their cost independent of the finished rows piling up. A waiting row
            # above the fan-out's window line has no due time and no entry.
            models.Index(
                fields=["due_at"],
                condition=Q(status__in=[Status.QUEUED, Status.RETRYING], due_at__isnull=False),
                name="subtask_dispatched_due",
            ),
            models.Index(
                fields=["heartbeat_at"],
                condition=Q(status=Status.RUNNING, heartbeat_at__isnull=False),
                name="subtask_running_beat",
            ),
            # Operators' reads of a fan-out's failed or skipped subtasks (the admin's page
            # of failures, a retry's count), without walking its succeeded ones.
            models.Index(
                fields=["parent", "index"],
                condition=Q(status__in=[Status.FAILED, Status.CANCELLED]),
                name="subtask_parent_unsuccessful",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.parent_id}[{self.index}] ({self.status})"

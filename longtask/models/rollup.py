"""TaskMinute: counts of what happened to tasks, per minute and kind, plus all-time totals.

The state machine adds to two rows of the task's kind in the transaction of each counted
transition (one ``INSERT ... ON CONFLICT DO UPDATE``, ``longtask.engine.states.tallies``):
the row of the current minute, and the kind's **totals row**, whose minute is
``TOTALS`` (1970-01-01). The minute rows draw the dashboard's last hour and day; the
totals rows are the Prometheus counters, which must never go back: pruning old minute
rows (``manage.py longtask purge``) leaves them alone, and deleting tasks never touches
either.
"""

from __future__ import annotations

import datetime

from django.db import models

#: The minute of a kind's totals row: everything counted since the table began.
TOTALS = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

#: Upper bounds (seconds) of the run-duration histogram's buckets (``runs`` is +Inf).
RUN_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400)

#: The counters a transition adds to, in column order.
EVENTS = ("started", "succeeded", "failed", "cancelled", "retried")


class TaskMinute(models.Model):
    """What happened to tasks of one kind in one minute (or, at ``TOTALS``, ever).

    The counters are plain integers, without the ``>= 0`` CHECK of a positive field:
    they are written only by ``engine.states.tallies``, which adds only amounts that are
    not negative (and refuses others), and PostgreSQL rebuilt the 17 checks from their
    stored form for every statement that counts, two per run (11% of its CPU per task).
    """

    minute = models.DateTimeField()
    kind = models.CharField(max_length=100)
    #: Tasks whose first run began (a retry or a fan-in's gather does not start it again).
    started = models.BigIntegerField(default=0)
    succeeded = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    cancelled = models.BigIntegerField(default=0)
    #: Attempts scheduled again: after a failed attempt (the retry policy, the sweeper)
    #: or by a user's retry of a failed or cancelled task.
    retried = models.BigIntegerField(default=0)
    #: Subtasks of this kind's fan-outs that finished (succeeded or failed for good).
    subtasks_done = models.BigIntegerField(default=0)
    subtasks_failed = models.BigIntegerField(default=0)
    #: Finishes of tasks that had started: the run-duration histogram's count and sum
    #: (seconds from the first start to the end), and its cumulative buckets.
    runs = models.BigIntegerField(default=0)
    run_seconds = models.FloatField(default=0)
    runs_le_1 = models.BigIntegerField(default=0)
    runs_le_5 = models.BigIntegerField(default=0)
    runs_le_15 = models.BigIntegerField(default=0)
    runs_le_60 = models.BigIntegerField(default=0)
    runs_le_300 = models.BigIntegerField(default=0)
    runs_le_900 = models.BigIntegerField(default=0)
    runs_le_3600 = models.BigIntegerField(default=0)
    runs_le_14400 = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "task minute"
        constraints = [
            # The upsert's conflict target; its index also serves the dashboard's range
            # over the last day (minute first) and the totals rows (minute = TOTALS).
            models.UniqueConstraint(fields=["minute", "kind"], name="taskminute_minute_kind"),
        ]

    def __str__(self) -> str:
        when = "totals" if self.minute == TOTALS else self.minute.isoformat()
        return f"{self.kind} {when}"


def bucket_field(bound: int) -> str:
    """The column counting runs of at most ``bound`` seconds."""
    return f"runs_le_{bound}"

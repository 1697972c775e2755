"""`manage.py longtask list|show|retry|cancel|purge`: looking at tasks and acting on them."""

from __future__ import annotations

import datetime
import json
import logging
from typing import TYPE_CHECKING

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from longtask import api, display, documents, progress
from longtask.documents import Waiting, status_document, subtask_breakdown
from longtask.management import cli
from longtask.models import LongTask, Status, SubTask
from longtask.progress import ProgressRecord

logger = logging.getLogger("longtask")

#: Longest result printed by ``show`` (``show --json`` prints it whole).
RESULT_PREVIEW = 2000


if TYPE_CHECKING:
    # The checker sees the command this is mixed into.
    _Command = BaseCommand
else:
    _Command = object


class OperateCommands(_Command):
    """The subcommands that work on existing tasks; mixed into the command."""

    def handle_list(
        self, *, status: str | None, kind: str | None, limit: int, **options: object
    ) -> None:
        tasks = LongTask.objects.select_related("owner")
        if status:
            tasks = tasks.filter(status=status)
        if kind:
            tasks = tasks.filter(kind=kind)
        rows = list(tasks.order_by("-created_at")[: max(0, limit)])
        if not rows:
            self.stdout.write("No tasks.")
            return
        self.stdout.write(
            f"{'ID':36}  {'KIND':12}  {'STATUS':9}  {'DONE':>4}  {'CREATED':16}  {'OWNER':12}  NAME"
        )
        for task in rows:
            percent = documents.row_percent(task)
            created = timezone.localtime(task.created_at).strftime("%Y-%m-%d %H:%M")
            self.stdout.write(
                f"{task.pk!s:36}  {task.kind:12}  {task.status:9}  "
                f"{'-' if percent is None else f'{percent}%':>4}  {created:16}  "
                f"{task.owner or '-'!s:12}  {task.name or ''}"
            )

    def handle_show(self, *, ident: str, as_json: bool, **options: object) -> None:
        task = cli.find_task(ident)
        record = task.progress_record()
        url = cli.status_url(task)
        if as_json:
            self.stdout.write(json.dumps(status_document(task, record, status_url=url), indent=2))
            return
        progress_text = progress_line(record)
        waiting = documents.waiting_for_worker(task)
        fields = [
            ("id", task.pk),
            ("kind", task.kind),
            ("name", task.name or "-"),
            ("status", task.status),
            ("progress", progress_text),
            *([("waiting", waiting_line(waiting))] if waiting else []),
            ("owner", task.owner or "-"),
            ("queue", task.queue),
            ("attempts", task.attempts),
            ("created", task.created_at.isoformat()),
            ("started", task.started_at.isoformat() if task.started_at else "-"),
            ("finished", task.finished_at.isoformat() if task.finished_at else "-"),
            (
                "duration",
                display.duration_text(display.run_seconds(task), decimals=1)
                if task.finished_at
                else "-",
            ),
            ("status page", url),
        ]
        if task.error:
            fields.append(("error", task.error))
        if task.is_fanout or task.subtasks_total:
            counts = subtask_breakdown(task)
            fields.append(("subtasks", ", ".join(f"{n} {s}" for s, n in counts.items())))
        for label, value in fields:
            self.stdout.write(f"{label + ':':13}{value}")
        for event in task.history:
            self.stdout.write(
                f"  {event.get('at', '')}  {event.get('event', '')} "
                f"(attempt {event.get('attempt', '?')}): {event.get('error', '')}"
            )
        if task.status == Status.SUCCEEDED:
            text = json.dumps(task.result, indent=2)
            if len(text) > RESULT_PREVIEW:
                text = text[:RESULT_PREVIEW] + f"\n… ({len(text)} characters; see --json)"
            self.stdout.write("result:\n" + text)

    # Changing ---------------------------------------------------------------------

    def handle_retry(self, *, ident: str, **options: object) -> None:
        task = cli.find_task(ident)
        again = 0
        if task.is_fanout and task.split_done:
            failed = [Status.FAILED, Status.CANCELLED]
            again = SubTask.objects.filter(parent=task, status__in=failed).count()
        if not api.retry(task):
            raise CommandError(
                f"LongTask {task.pk} is {task.status}; only failed or cancelled tasks can be "
                "retried",
                returncode=1,
            )
        detail = f" ({again} subtask(s) queued again)" if again else ""
        self.stdout.write(f"LongTask {task.pk} retried{detail}: {cli.status_url(task)}")

    def handle_cancel(self, *, ident: str, **options: object) -> None:
        task = cli.find_task(ident)
        cancelled = api.cancel(task)
        if cancelled:
            logger.info("LongTask id=%s cancel requested (command line)", task.pk)
        task.refresh_from_db(fields=["status"])
        if not cancelled:
            raise CommandError(
                f"LongTask {task.pk} is {task.status}; it cannot be cancelled", returncode=1
            )
        if task.status == Status.CANCELLED:
            self.stdout.write(f"LongTask {task.pk} cancelled.")
        else:  # a running plain task stops cooperatively, at its next progress report
            self.stdout.write(
                f"LongTask {task.pk} asked to stop; it ends at its next progress report."
            )

    def handle_purge(self, *, older_than: float, dry_run: bool, **options: object) -> None:
        if older_than < 0:
            raise cli.bad_input("--older-than must be zero or more days")
        cutoff = timezone.now() - datetime.timedelta(days=older_than)
        old = LongTask.objects.finished().filter(finished_at__lt=cutoff)
        counts = api.old_counts(cutoff)
        if dry_run:
            tasks, subtasks = old.count(), SubTask.objects.filter(parent__in=old).count()
            minutes = counts.count()
            verb = "Would delete"
        else:
            tasks, subtasks = api.delete_finished(old)
            minutes = counts.delete()[0]
            verb = "Deleted"
        self.stdout.write(
            f"{verb} {tasks} finished task(s) and {subtasks} subtask(s) "
            f"finished before {cutoff.isoformat(timespec='seconds')}."
        )
        self.stdout.write(
            f"{verb} {minutes} per-minute count row(s) of the dashboard (the totals stay)."
        )


def waiting_line(waiting: Waiting) -> str:
    """Say which queue's workers a task waits for, and how many jobs are ahead of it."""
    ahead = display.jobs_ahead_text(waiting["jobs_ahead"])
    return f"for a worker of queue {waiting['queue']}" + (f", {ahead}" if ahead else "")


def progress_line(record: ProgressRecord | None) -> str:
    """Describe progress in one line: percent, counts and message."""
    payload = progress.payload(record)
    if payload["total"]:
        line = f"{payload['percent']}% ({payload['current']:g}/{payload['total']:g})"
    else:
        line = "-"
    return f"{line} {payload['message']}".strip()

"""The admin's actions on tasks: retry, cancel, delete the finished ones."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.http import HttpRequest
from django.template.response import TemplateResponse

from longtask import api
from longtask.admin.fields import BOTH
from longtask.models import LongTask, LongTaskQuerySet, Status, SubTask

logger = logging.getLogger("longtask")

if TYPE_CHECKING:
    # The checker sees the ModelAdmin this is mixed into (not generic at run time).
    _ModelAdmin = admin.ModelAdmin[LongTask]
else:
    _ModelAdmin = object


class TaskActions(_ModelAdmin):
    """Retry, cancel and delete; mixed into LongTaskAdmin."""

    @admin.action(
        description="Retry this task (if failed or cancelled)",
        description_plural="Retry selected failed or cancelled tasks",
        permissions=["change"],
        location=BOTH,
    )
    def retry_tasks(self, request: HttpRequest, queryset: LongTaskQuerySet) -> None:
        retried = skipped = 0
        for task in queryset:
            if api.retry(task):  # a fan-out re-runs only its failed and skipped subtasks
                self.log_change(request, task, "Retried")
                retried += 1
            else:
                skipped += 1
        if retried:
            self.message_user(request, f"{retried} task(s) retried.", messages.SUCCESS)
        if skipped:
            message = f"{skipped} task(s) skipped: only failed or cancelled tasks can be retried."
            self.message_user(request, message, messages.WARNING)

    @admin.action(
        description="Cancel this task",
        description_plural="Cancel selected tasks",
        permissions=["change"],
        location=BOTH,
    )
    def cancel_tasks(self, request: HttpRequest, queryset: LongTaskQuerySet) -> None:
        cancelled = asked = skipped = 0
        for task in queryset:
            if not api.cancel(task):
                skipped += 1
                continue
            self.log_change(request, task, "Cancelled")
            logger.info("LongTask id=%s cancel requested by user=%s (admin)", task.pk, request.user)
            task.refresh_from_db(fields=["status"])
            if task.status == Status.CANCELLED:
                cancelled += 1
            else:  # a running plain task stops at its next progress report
                asked += 1
        if cancelled:
            self.message_user(request, f"{cancelled} task(s) cancelled.", messages.SUCCESS)
        if asked:
            self.message_user(
                request,
                f"{asked} running task(s) asked to stop at their next progress report.",
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request, f"{skipped} task(s) skipped: already finished.", messages.WARNING
            )

    @admin.action(description="Delete selected finished tasks", permissions=["delete"])
    def delete_finished_tasks(
        self, request: HttpRequest, queryset: LongTaskQuerySet
    ) -> TemplateResponse | None:
        finished = queryset.finished()
        count = finished.count()
        kept = queryset.count() - count
        if not count:
            self.message_user(
                request,
                "None of the selected tasks has finished: nothing deleted.",
                messages.WARNING,
            )
            return None
        if request.POST.get("post") == "yes":
            tasks, subtasks = api.delete_finished(finished)
            self.message_user(
                request, f"Deleted {tasks} task(s) and {subtasks} subtask(s).", messages.SUCCESS
            )
            if kept:
                self.message_user(request, f"{kept} active task(s) kept.", messages.WARNING)
            return None
        sample = list(finished.order_by("-created_at")[:20])
        context = {
            **self.admin_site.each_context(request),
            "title": "Delete finished tasks?",
            "opts": self.model._meta,
            "count": count,
            "kept": kept,
            "subtask_count": SubTask.objects.filter(parent__in=finished).count(),
            "sample": sample,
            "more": count - len(sample),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across") == "1",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(
            request, "admin/longtask/longtask/delete_finished_confirmation.html", context
        )

"""The operators' view of long tasks: list, detail with subtasks, retry, cancel and delete."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.paginator import Paginator
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, QueryDict
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from longtask import api, display, documents, progress
from longtask.documents import subtask_counts
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask

logger = logging.getLogger("longtask")

#: Failed subtasks shown per page of the detail view.
FAILED_PAGE_SIZE = 50
FAILED_PAGE_PARAM = "failed_page"
#: Longest JSON shown on the detail view; a 200x200 quilt's result is far longer.
JSON_DISPLAY_LIMIT = 20_000
#: The only fields an operator may change; everything else belongs to the workers.
EDITABLE_FIELDS = ("name", "owner")
#: Shown for a value that is not there (the admin's own empty value).
EMPTY = "-"
PRE_STYLE = "margin: 0; max-height: 30em; overflow: auto"
#: Retry and cancel are offered on the list and on a task's own page.
BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]


def pretty_json(value: Any) -> SafeString:
    text = display.json_text(value, JSON_DISPLAY_LIMIT)
    return format_html('<pre class="longtask-json" style="{}">{}</pre>', PRE_STYLE, text)


@admin.register(LongTask)
class LongTaskAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "kind",
        "name",
        "status",
        "progress_percent",
        "owner",
        "created_at",
        "duration",
    ]
    list_filter = ["status", "kind", "queue", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["id", "name", "owner__username"]
    raw_id_fields = ["owner"]
    actions = ["retry_tasks", "cancel_tasks", "delete_finished_tasks"]
    readonly_fields = [
        "id",
        "kind",
        "status",
        "queue",
        "status_page",
        "progress_detail",
        "parameters_json",
        "result_json",
        "error",
        "traceback_text",
        "attempts_display",
        "next_attempt_at",
        "cancel_requested_at",
        "history_table",
        "rows_done",
        "rows_total",
        "cursor_json",
        "subtasks_summary",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "heartbeat_at",
        "worker",
        "result_viewed_at",
    ]

    def get_fieldsets(self, request: HttpRequest, obj: LongTask | None = None) -> list[Any]:
        fieldsets: list[Any] = [
            (
                None,
                {
                    "fields": [
                        "id",
                        "kind",
                        "name",
                        "status",
                        "status_page",
                        "progress_detail",
                        "owner",
                        "queue",
                    ]
                },
            ),
            ("Parameters", {"fields": ["parameters_json"]}),
            ("Result", {"fields": ["result_json"]}),
            ("Error", {"fields": ["error", "traceback_text"]}),
            (
                "Attempts",
                {"fields": ["attempts_display", "worker", "next_attempt_at", "history_table"]},
            ),
        ]
        if obj is not None and (obj.subtasks_total or obj.is_fanout):
            fieldsets.append(("Subtasks", {"fields": ["subtasks_summary"]}))
        if obj is not None and (obj.rows_total is not None or obj.cursor is not None):
            fieldsets.append(("Batches", {"fields": ["rows_done", "rows_total", "cursor_json"]}))
        times = ["created_at", "started_at", "finished_at", "duration", "heartbeat_at"]
        fieldsets.append(("Times", {"fields": [*times, "cancel_requested_at", "result_viewed_at"]}))
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[LongTask]:
        # Annotated so that the duration column sorts in the database.
        return (
            super()
            .get_queryset(request)
            .annotate(
                run_time=ExpressionWrapper(
                    F("finished_at") - F("started_at"), output_field=DurationField()
                )
            )
        )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> LongTask | None:
        task = super().get_object(request, object_id, from_field)
        if task is not None:
            # Readonly fields see only the object: this hands them the page asked for.
            task._admin_query = request.GET.copy()  # type: ignore[attr-defined]
        return task

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A task starts through longtask.start (form validation, then the queue), never here.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LongTask | None = None) -> bool:
        if obj is not None and not obj.is_finished:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(
        self, request: HttpRequest, action_location: ActionLocation = ActionLocation.CHANGE_LIST
    ) -> dict[str, Any]:
        actions = super().get_actions(request, action_location=action_location)
        # Replaced by delete_finished_tasks, which never deletes a task that is running.
        actions.pop("delete_selected", None)
        return actions

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        # The default lists every subtask: 40,000 lines for a big fan-out. Count them instead.
        tasks = list(objs)
        subtasks = SubTask.objects.filter(parent__in=[task.pk for task in tasks]).count()
        deleted = [str(task) for task in tasks]
        counts = {LongTask._meta.verbose_name_plural: len(tasks)}
        if subtasks:
            counts[SubTask._meta.verbose_name_plural] = subtasks
        return deleted, counts, set(), []

    def delete_model(self, request: HttpRequest, obj: LongTask) -> None:
        # The same path as the action and purge: re-checked under lock, cache cleared.
        api.delete_finished(LongTask.objects.filter(pk=obj.pk))

    def save_model(
        self, request: HttpRequest, obj: LongTask, form: ModelForm, change: bool
    ) -> None:
        fields = [name for name in form.changed_data if name in EDITABLE_FIELDS]
        if fields:
            # Only the operator's fields: a full save would write back stale copies of
            # the status, progress and counters that workers change meanwhile.
            obj.save(update_fields=fields)

    # List columns ---------------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short_id(self, task: LongTask) -> str:
        return str(task.pk)[:8]

    @admin.display(description="progress")
    def progress_percent(self, task: LongTask) -> str:
        # From the row only (last progress, fan-out counters): a cache read per row
        # would make a page of 100 tasks cost 100 reads, so a running plain task shows "-".
        percent = documents.row_percent(task)
        return EMPTY if percent is None else f"{percent}%"

    @admin.display(description="duration", ordering="run_time")
    def duration(self, task: LongTask) -> str:
        seconds = display.run_seconds(task)
        return EMPTY if seconds is None else display.duration_text(seconds, decimals=1)

    # Detail fields ----------------------------------------------------------------------

    @admin.display(description="status page")
    def status_page(self, task: LongTask) -> SafeString:
        url = task.get_absolute_url()
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description="progress")
    def progress_detail(self, task: LongTask) -> str:
        record = task.progress_record()  # one cache read, for this one task
        payload = progress.payload(record)
        parts = []
        if payload["percent"] is not None:
            parts.append(f"{payload['percent']}% ({payload['current']:g}/{payload['total']:g})")
        eta = None if task.is_finished else progress.eta_seconds(record)
        parts += [display.eta_text(eta), payload["message"]]
        return " · ".join(part for part in parts if part) or "-"

    @admin.display(description="parameters")
    def parameters_json(self, task: LongTask) -> SafeString:
        return pretty_json(task.parameters)

    @admin.display(description="result")
    def result_json(self, task: LongTask) -> SafeString | str:
        return EMPTY if task.result is None else pretty_json(task.result)

    @admin.display(description="attempts")
    def attempts_display(self, task: LongTask) -> str:
        kind = registry.find(task.kind)
        limit = kind.retry_policy().max_attempts if kind is not None else None
        return f"{task.attempts} of {limit}" if limit else str(task.attempts)

    @admin.display(description="cursor")
    def cursor_json(self, task: LongTask) -> SafeString | str:
        return EMPTY if task.cursor is None else pretty_json(task.cursor)

    @admin.display(description="traceback")
    def traceback_text(self, task: LongTask) -> SafeString | str:
        if not task.traceback:
            return EMPTY
        return format_html(
            '<pre class="longtask-traceback" style="{}">{}</pre>', PRE_STYLE, task.traceback
        )

    @admin.display(description="history")
    def history_table(self, task: LongTask) -> SafeString | str:
        if not task.history:
            return EMPTY
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (e.get("at", ""), e.get("event", ""), e.get("attempt", ""), e.get("error", ""))
                for e in task.history
            ),
        )
        return format_html(
            "<table><thead><tr><th>at</th><th>event</th><th>attempt</th><th>error</th></tr>"
            "</thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="subtasks")
    def subtasks_summary(self, task: LongTask) -> SafeString:
        # One grouped count and one page of failed subtasks: never every row.
        query: QueryDict = getattr(task, "_admin_query", None) or QueryDict()
        failed = (
            SubTask.objects.filter(parent=task, status=Status.FAILED)
            .order_by("index")
            .only("index", "error", "attempts", "finished_at")
        )
        page = Paginator(failed, FAILED_PAGE_SIZE).get_page(query.get(FAILED_PAGE_PARAM))

        def page_url(number: int) -> str:
            linked = query.copy()
            linked[FAILED_PAGE_PARAM] = str(number)
            return f"?{linked.urlencode()}#subtasks"

        context = {
            "counts": subtask_counts(task),
            "page": page,
            "previous_url": page_url(page.previous_page_number()) if page.has_previous() else "",
            "next_url": page_url(page.next_page_number()) if page.has_next() else "",
        }
        return render_to_string("admin/longtask/longtask/subtasks.html", context)

    # Actions ------------------------------------------------------------------------------

    @admin.action(
        description="Retry this task (if failed or cancelled)",
        description_plural="Retry selected failed or cancelled tasks",
        permissions=["change"],
        location=BOTH,
    )
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[LongTask]) -> None:
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
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[LongTask]) -> None:
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
        self, request: HttpRequest, queryset: QuerySet[LongTask]
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

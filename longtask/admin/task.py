"""LongTaskAdmin: the list and detail pages of tasks, registered with the admin site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.contrib import admin
from django.contrib.admin import ActionLocation
from django.contrib.admin.options import Action
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from longtask import api
from longtask.admin.actions import TaskActions
from longtask.admin.fields import EDITABLE_FIELDS, TaskFields
from longtask.models import LongTask, SubTask

if TYPE_CHECKING:
    from django_stubs_ext import FieldOpts, FieldsetSpec, StrOrPromise


@admin.register(LongTask)
class LongTaskAdmin(TaskFields, TaskActions, admin.ModelAdmin):
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

    def get_fieldsets(self, request: HttpRequest, obj: LongTask | None = None) -> FieldsetSpec:
        fieldsets: list[tuple[StrOrPromise | None, FieldOpts]] = [
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
        tasks: QuerySet[LongTask] = (
            super()
            .get_queryset(request)
            .annotate(
                run_time=ExpressionWrapper(
                    F("finished_at") - F("started_at"), output_field=DurationField()
                )
            )
        )
        return tasks

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> LongTask | None:
        task = super().get_object(request, object_id, from_field)
        if task is not None:
            # Readonly fields see only the object: this hands them the page asked for.
            task.__dict__["_admin_query"] = request.GET.copy()
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
    ) -> dict[str, Action | None]:
        actions = super().get_actions(request, action_location=action_location)
        # Replaced by delete_finished_tasks, which never deletes a task that is running.
        actions.pop("delete_selected", None)
        return actions

    def get_deleted_objects(
        self, objs: Sequence[LongTask] | QuerySet[LongTask], request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        # The default lists every subtask: 40,000 lines for a big fan-out. Count them instead.
        tasks = list(objs)
        subtasks = SubTask.objects.filter(parent__in=[task.pk for task in tasks]).count()
        deleted = [str(task) for task in tasks]
        counts = {LongTask._meta.verbose_name_plural: len(tasks)}
        if subtasks:
            counts[SubTask._meta.verbose_name_plural] = subtasks
        # Keyed by the (lazy) verbose names as Django's own are; django-stubs says str.
        return deleted, counts, set(), []  # type: ignore[return-value]

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

"""The admin's columns and read-only fields of a task."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin import ActionLocation
from django.core.paginator import Paginator
from django.http import QueryDict
from django.template.loader import render_to_string
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from longtask import display, documents, progress
from longtask.documents import subtask_breakdown
from longtask.kinds import registry
from longtask.models import LongTask, Status, SubTask

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


def pretty_json(value: object) -> SafeString:
    text = display.json_text(value, JSON_DISPLAY_LIMIT)
    return format_html('<pre class="longtask-json" style="{}">{}</pre>', PRE_STYLE, text)


class TaskFields:
    """List columns and detail fields; mixed into LongTaskAdmin."""

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
        waiting = None if task.is_finished else documents.waiting_for_worker(task)
        if waiting is not None:  # instead of an ETA: no clock runs while nobody works on it
            parts.append(display.waiting_text(waiting["jobs_ahead"]))
        eta = None if task.is_finished or waiting else progress.eta_seconds(record)
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
            "counts": subtask_breakdown(task),
            "page": page,
            "previous_url": page_url(page.previous_page_number()) if page.has_previous() else "",
            "next_url": page_url(page.next_page_number()) if page.has_next() else "",
        }
        return render_to_string("admin/longtask/longtask/subtasks.html", context)

    # Actions ------------------------------------------------------------------------------

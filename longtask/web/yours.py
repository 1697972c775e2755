"""Your tasks (``/tasks/``): the visitor's own tasks, newest first, with live rows.

Whose tasks: a signed-in user's own (staff included: "your tasks" is never everybody's);
for an anonymous visitor, those started from this browser session, whose ids the start
view remembers in the session (the last ``REMEMBER_AT_MOST``). The rule itself is
``longtask.guards.access.own_tasks``.

Live rows, one connection per page: ``yours.js`` polls ``/tasks/live.json?ids=...``
with the ids of the page's unfinished rows every ``LONGTASK_REFRESH_SECONDS`` (2 s),
while the tab is visible, and stops when every row has finished; without JavaScript a
``<meta http-equiv="refresh">`` (in ``<noscript>``) reloads the page while any row is
unfinished. Why not the status page's websocket: its watchers follow one task each, so
a page of 20 running rows would hold 20 watchers, each reading the database every
``LONGTASK_LIVE_INTERVAL`` (0.3 s) on the embedded default, for rows that only show a
percent and a time. One poll reads the listed rows with one query plus one cache
``get_many``, whatever their number: at 2 s, half a request per second per open page,
and none once its rows have finished. (A multiplexed socket would need a watcher
reading many tasks at once; these rows do not need its 0.1 s latency.)

Cost: a page is a bounded number of queries whatever the history (the session, the
user and their permissions, one COUNT, one page of rows); the progress of plain tasks
comes from the cache in one ``get_many``, a fan-out's from its row's counters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from longtask import display, progress
from longtask.conf import settings
from longtask.guards.access import own_tasks
from longtask.kinds import registry
from longtask.models import LongTask, LongTaskQuerySet, Status
from longtask.progress import ProgressRecord

#: The session key of the ids of the tasks an anonymous visitor started, oldest first.
STARTED_SESSION_KEY = "longtask_started"
#: Most task ids one session remembers (the newest are kept).
REMEMBER_AT_MOST = 100
#: Rows per page of /tasks/.
PAGE_SIZE = 20
#: Rows of "your tasks" on the home page.
RECENT_ON_HOME = 5
#: Most ids one request to /tasks/live.json may ask about.
MAX_LIVE_IDS = 50
#: Columns a row never shows (and which may be large): not read.
UNLISTED_FIELDS = ("parameters", "result", "traceback", "history", "runs", "cursor")


# Remembering an anonymous visitor's tasks ---------------------------------------------


def remember(request: HttpRequest, task: LongTask) -> None:
    """Remember in the session a task started by an anonymous visitor (owned ones need not)."""
    session = getattr(request, "session", None)
    if session is None or task.owner_id is not None:
        return
    task_id = str(task.pk)
    started = [known for known in started_ids(request) if known != task_id]
    started.append(task_id)
    session[STARTED_SESSION_KEY] = started[-REMEMBER_AT_MOST:]


def started_ids(request: HttpRequest) -> list[str]:
    """Return the ids of the tasks this session started anonymously, oldest first."""
    session = getattr(request, "session", None)
    if session is None:
        return []
    remembered = session.get(STARTED_SESSION_KEY)
    if not isinstance(remembered, list):
        return []
    return [value for value in remembered if isinstance(value, str) and _is_uuid(value)]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def your_tasks(request: HttpRequest) -> LongTaskQuerySet:
    """Return the request's own tasks, newest first, without the columns rows never show."""
    tasks = own_tasks(request.user, started_ids(request))
    return tasks.defer(*UNLISTED_FIELDS).order_by("-created_at", "-pk")


# Rows ----------------------------------------------------------------------------------


def rows(tasks: Iterable[LongTask]) -> list[dict[str, Any]]:
    """Describe each task as a row: one cache read for all the live progress, no query."""
    tasks = list(tasks)
    # A started fan-out's progress is its own counters; a finished task's is on its row.
    from_cache = [
        task.pk
        for task in tasks
        if not task.is_finished and not (task.is_fanout and task.started_at)
    ]
    cached = progress.read_many_progress(from_cache)
    now, clock = timezone.now(), time.time()
    return [_row(task, cached, now, clock) for task in tasks]


def _row(
    task: LongTask, cached: Mapping[str, ProgressRecord], now: Any, clock: float
) -> dict[str, Any]:
    record = task.progress_record(cached, clock)
    shown = progress.payload(record)
    percent = shown["percent"]
    if percent is None and task.status == Status.SUCCEEDED:
        percent = 100
    eta = None if task.is_finished else progress.eta_seconds(record, clock)
    kind = registry.find(task.kind)
    return {
        "id": str(task.pk),
        "url": task.get_absolute_url(),
        "name": task.name or "",
        "kind": task.kind,
        "kind_title": (kind.title if kind is not None else "") or task.kind,
        "status": task.status,
        "status_label": task.get_status_display(),
        "final": task.is_finished,
        "percent": percent,
        "message": shown["message"],
        "eta_seconds": eta,
        "timing": timing_text(task, eta, now),
        "created_at": task.created_at,
    }


def timing_text(task: LongTask, eta: int | None, now: Any) -> str:
    """How long it has taken (and may still take), in a few words."""
    if task.is_finished:
        taken = display.run_seconds(task)
        return "" if taken is None else f"took {display.duration_text(taken)}"
    if task.status == Status.RETRYING:
        if task.next_attempt_at and task.next_attempt_at > now:
            wait = (task.next_attempt_at - now).total_seconds()
            return f"next try in {display.duration_text(wait)}"
        return "next try now"
    if task.started_at:
        text = f"running for {display.duration_text((now - task.started_at).total_seconds())}"
        if eta is not None:
            text += f", about {display.duration_text(eta)} left"
        return text
    return f"waiting for {display.duration_text((now - task.created_at).total_seconds())}"


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as /tasks/live.json sends it."""
    return {key: value for key, value in row.items() if key != "created_at"} | {
        "created_at": row["created_at"].isoformat()
    }


def recent_rows(request: HttpRequest, limit: int = RECENT_ON_HOME) -> list[dict[str, Any]]:
    """The newest few rows of the request's own tasks (for the home page): one query."""
    user = request.user
    if not user.is_authenticated and not started_ids(request):
        return []
    return rows(your_tasks(request)[:limit])


# The page and its JSON -----------------------------------------------------------------


class TaskFilter(forms.Form):
    """The list's filters (GET): a status, a kind; empty means any."""

    status = forms.ChoiceField(required=False)
    kind = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["status"]).choices = [
            ("", "any status"),
            *Status.choices,
        ]
        kinds = [(kind.name, kind.title or kind.name) for kind in registry]
        cast(forms.ChoiceField, self.fields["kind"]).choices = [("", "any kind"), *kinds]


@require_GET
def your_tasks_page(request: HttpRequest) -> HttpResponse:
    """List your tasks: 400 with the reason for a filter that is not one of the choices."""
    form = TaskFilter(request.GET)
    context: dict[str, Any] = {
        "form": form,
        "rows": [],
        "any_active": False,
        "refresh_seconds": settings.REFRESH_SECONDS,
    }
    if not form.is_valid():
        return render(request, "longtask/yours.html", context, status=400)
    tasks = your_tasks(request)
    if form.cleaned_data["status"]:
        tasks = tasks.filter(status=form.cleaned_data["status"])
    if form.cleaned_data["kind"]:
        tasks = tasks.filter(kind=form.cleaned_data["kind"])
    # A page number that is not one (or is past the end) shows the first (or last) page.
    page = Paginator(tasks, PAGE_SIZE).get_page(request.GET.get("page"))
    context["rows"] = rows(page.object_list)
    context["any_active"] = any(not row["final"] for row in context["rows"])
    context["page"] = page
    # What the page links keep: the filters in use, nothing else of the query.
    context["filters"] = urlencode({k: v for k, v in form.cleaned_data.items() if v})
    return render(request, "longtask/yours.html", context)


@never_cache
@require_GET
def your_tasks_json(request: HttpRequest) -> JsonResponse:
    """Rows of the listed ids that are yours (``?ids=a,b``); the others are left out."""
    raw = request.GET.get("ids", "")
    ids = [value for value in raw.split(",") if value] if raw else []
    if len(ids) > MAX_LIVE_IDS:
        return JsonResponse({"error": f"at most {MAX_LIVE_IDS} ids"}, status=400)
    if not all(_is_uuid(value) for value in ids):
        return JsonResponse({"error": "ids must be task ids separated by commas"}, status=400)
    tasks = your_tasks(request).filter(pk__in=ids) if ids else []
    return JsonResponse(
        {
            "tasks": [json_row(row) for row in rows(tasks)],
            "interval": settings.REFRESH_SECONDS,
        }
    )

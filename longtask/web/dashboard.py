"""The operations dashboard (``/tasks/ops/``): is the system healthy right now?

Staff with ``longtask.view_longtask`` (or ``change_longtask``) see the numbers of
``longtask.stats.snapshot()``: queues, workers, throughput per minute as server-drawn
SVG sparklines, the slowest running tasks and those that look stuck. Retrying or
cancelling a stuck task needs ``longtask.change_longtask``. No JavaScript: the page
reloads itself every ``REFRESH_SECONDS`` with a ``<meta refresh>``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from longtask import api, stats
from longtask.guards.access import can_change_all, can_view_all
from longtask.models import LongTask
from longtask.web.sparkline import sparkline

#: Seconds between two reloads of the page.
REFRESH_SECONDS = 10
#: What the page says after an action, by the ``done`` parameter of its redirect.
DONE = {
    "retried": "queued again",
    "cancelled": "cancelled",
    "unchanged": "left as it was (it was no longer stuck, or already finished)",
}


def may_view(user: Any) -> bool:
    """Staff who may read every task: the dashboard's and /metrics' session rule."""
    return bool(user is not None and user.is_authenticated and user.is_staff and can_view_all(user))


def _refused(request: HttpRequest, message: str) -> HttpResponse:
    context = {"title": "Not allowed", "message": message}
    return render(request, "longtask/refused.html", context, status=403)


def _gate(request: HttpRequest) -> HttpResponse | None:
    """None if the visitor may see the dashboard; else the login page or a 403."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not may_view(request.user):
        return _refused(request, "The operations dashboard is for staff who may view all tasks.")
    return None


@never_cache
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    refused = _gate(request)
    if refused is not None:
        return refused
    snapshot = stats.snapshot()
    charts = []
    for period, title in (("hour", "last hour, per minute"), ("day", "last day, per 15 minutes")):
        series = snapshot["series"][period]
        lines = []
        for name in stats.SERIES:
            values = series[name]
            label = f"Tasks {name} in the {title}: {sum(values)} in all, at most {max(values)}"
            lines.append(
                {
                    "name": name,
                    "total": sum(values),
                    "peak": max(values),
                    "svg": sparkline(values, label=label, css_class=name),
                }
            )
        charts.append({"period": period, "title": title, "lines": lines})
    done = request.GET.get("done")
    context = {
        "snapshot": snapshot,
        "charts": charts,
        "can_act": can_change_all(request.user),
        "refresh_seconds": REFRESH_SECONDS,
        "done": DONE.get(done or ""),
        "done_task": request.GET.get("task", "")[:36] if done in DONE else "",
    }
    return render(request, "longtask/ops.html", context)


def _act(request: HttpRequest, task_id: UUID, action: str) -> HttpResponse:
    refused = _gate(request)
    if refused is not None:
        return refused
    if not can_change_all(request.user):
        return _refused(request, "Retrying or cancelling tasks needs the change permission.")
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None:
        raise Http404("No such task.")
    if action == "retry":
        # Failed or cancelled: run it again; stuck: take it up now, as the sweeper would.
        changed = api.retry(task) or api.recover(task)
    else:
        # A stuck run cannot stop by itself: its cancel is finished here.
        changed = api.cancel(task)
        api.recover(task)
    done = {"retry": "retried", "cancel": "cancelled"}[action] if changed else "unchanged"
    url = f"{reverse('longtask:ops')}?done={done}&task={task.pk}#stuck"
    response = HttpResponseRedirect(url)
    response.status_code = 303  # a reload of the dashboard never re-posts
    return response


@require_POST
def retry(request: HttpRequest, task_id: UUID) -> HttpResponse:
    return _act(request, task_id, "retry")


@require_POST
def cancel(request: HttpRequest, task_id: UUID) -> HttpResponse:
    return _act(request, task_id, "cancel")

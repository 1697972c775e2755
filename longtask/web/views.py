"""Start forms, the bookmarkable status page, its JSON twin and the result download."""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from longtask import api, progress
from longtask.conf import settings
from longtask.documents import finished_subtasks, status_document
from longtask.exceptions import (
    InvalidParameters,
    LimitExceeded,
    NotAllowed,
    ParametersTooLarge,
    UnknownKind,
)
from longtask.guards import abuse, sizes
from longtask.guards.access import (
    can_change,
    can_start,
    can_view_all,
    get_changeable_task,
    get_visible_task,
)
from longtask.kinds import Kind, registry
from longtask.live.cursor import parse_cursor
from longtask.live.routing import websocket_path
from longtask.models import LongTask, Status
from longtask.web import drawings, yours

logger = logging.getLogger("longtask")

#: A form body may be this many times the parameters' limit: percent-encoding
#: triples punctuation, and the CSRF token and field names come on top.
RAW_BODY_FACTOR = 4


def _get_kind(name: str) -> Kind:
    try:
        return registry.get(name)
    except UnknownKind:
        raise Http404("No such kind of task.") from None


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    # A kind the visitor may not start is listed without its form.
    kinds = [
        (kind, kind.form_class() if can_start(request.user, kind) else None) for kind in registry
    ]
    context = {
        "kinds": kinds,
        "your_tasks": yours.recent_rows(request),
        "refresh_seconds": settings.REFRESH_SECONDS,
    }
    return render(request, "longtask/index.html", context)


@require_http_methods(["GET", "POST"])
def new_task(request: HttpRequest, kind: str) -> HttpResponse:
    kind_obj = _get_kind(kind)
    if not can_start(request.user, kind_obj):
        return _not_allowed(request, kind_obj)
    if request.method == "POST":
        if _content_length(request) > settings.MAX_PARAMETERS_BYTES * RAW_BODY_FACTOR:
            size = sizes.format_bytes(settings.MAX_PARAMETERS_BYTES)
            return refused(request, ParametersTooLarge(f"parameters are over the {size} limit"))
        try:
            actor = abuse.Actor.from_request(request)
            task = api.start(kind_obj, request.POST, owner=request.user, actor=actor)
        except InvalidParameters as exc:
            context = {"kind": kind_obj, "form": exc.form}
            return render(request, "longtask/new.html", context, status=400)
        except NotAllowed:
            return _not_allowed(request, kind_obj)
        except LimitExceeded as exc:
            return refused(request, exc)
        yours.remember(request, task)  # an anonymous visitor's "your tasks"
        return redirect_303(task.get_absolute_url())
    return render(request, "longtask/new.html", {"kind": kind_obj, "form": kind_obj.form_class()})


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _not_allowed(request: HttpRequest, kind: Kind) -> HttpResponse:
    """Send visitors to the login page; tell users without the permission they lack it."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    message = f"You may not start {kind.title or kind.name} tasks."
    context = {"title": "Not allowed", "message": message}
    return render(request, "longtask/refused.html", context, status=403)


def refused(request: HttpRequest, exc: LimitExceeded) -> HttpResponse:
    """Answer a start refused by a limit: 429 (or 413 for a size) with the reason."""
    title = "Too large" if isinstance(exc, ParametersTooLarge) else "Too many requests"
    context = {"title": title, "message": str(exc)}
    response = render(request, "longtask/refused.html", context, status=exc.status)
    if exc.retry_after:
        response["Retry-After"] = str(exc.retry_after)
    return response


def redirect_303(url: str) -> HttpResponseRedirect:
    """Answer a POST with "303 See Other", so reloading the status page never re-posts."""
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def _drawn(
    hook: Callable[[LongTask], SafeString | str], task: LongTask, what: str
) -> SafeString | str:
    """A kind's drawing of the task, or a plain line if it fails: a row written around
    ``start()`` (parameters its kind cannot read) must not make its page a 500."""
    try:
        return hook(task)
    except Exception:
        logger.exception("LongTask id=%s kind=%s: its %s cannot be drawn", task.pk, task.kind, what)
        return f"This task's {what} cannot be shown."


@require_GET
def status(request: HttpRequest, task_id: UUID) -> HttpResponse:
    task = get_visible_task(request.user, task_id)
    record = task.progress_record()
    kind = registry.find(task.kind)
    now = timezone.now()
    context: dict[str, object] = {
        "task": task,
        "kind": kind,
        "waiting_seconds": (now - task.created_at).total_seconds(),
        "elapsed_seconds": (
            ((task.finished_at or now) - task.started_at).total_seconds()
            if task.started_at
            else None
        ),
        "progress": progress.payload(record),
        "eta_seconds": None,
        "refresh_seconds": settings.REFRESH_SECONDS,
        # The traceback is the site's internals: for those who may read every task.
        "show_traceback": can_view_all(request.user),
        "can_cancel": (
            not task.is_finished and not task.cancel_requested_at and can_change(request.user, task)
        ),
        # Where status.js follows the task live (a websocket path, no URL name to reverse).
        "live_url": websocket_path(task.pk),
    }
    if task.status == Status.RETRYING and kind is not None:
        context["max_attempts"] = kind.retry_policy().max_attempts
        if task.next_attempt_at:
            context["retry_in_seconds"] = max(0, (task.next_attempt_at - now).total_seconds())
    if not task.is_finished:
        # The page shows what the JSON says: the ETA, or where the task waits for a worker.
        url = request.build_absolute_uri(task.get_absolute_url())
        document = status_document(task, record, status_url=url)
        context["eta_seconds"] = document["eta_seconds"]
        context["waiting"] = document.get("waiting")
        if kind is not None:
            context["progress_html"] = _drawn(kind.display_progress, task, "progress")
            if kind.live_template:  # the kind's live area gets the document, as its script does
                context["document"] = document
    if task.status == Status.SUCCEEDED and kind is not None:
        if task.result_viewed_at is None:
            task.mark_result_viewed()
        cached = kind.result_html_cached
        draw = kind.display_result
        context["result_html"] = _drawn(
            lambda task: drawings.result_html(draw, task, cached), task, "result"
        )
        context["has_download"] = kind.offers_download(task)
    return render(request, "longtask/status.html", context)


@require_GET
def status_json(request: HttpRequest, task_id: UUID) -> JsonResponse:
    task = get_visible_task(request.user, task_id)
    url = request.build_absolute_uri(task.get_absolute_url())
    return JsonResponse(status_document(task, task.progress_record(), status_url=url))


@require_POST
def cancel(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """Cancel a task (its owner, a user with change_longtask, or an anonymous task's URL)."""
    task = get_changeable_task(request.user, task_id)
    api.cancel(task)
    return redirect_303(task.get_absolute_url())


@require_GET
def subtasks_json(request: HttpRequest, task_id: UUID) -> JsonResponse:
    task = get_visible_task(request.user, task_id)
    since = parse_cursor(request.GET.get("since"))
    if since is None:
        return JsonResponse({"error": "since must be a non-negative integer cursor"}, status=400)
    return JsonResponse(finished_subtasks(task, since))


@require_GET
def download(request: HttpRequest, task_id: UUID) -> HttpResponse:
    task = get_visible_task(request.user, task_id)
    kind = registry.find(task.kind)
    offered = kind.download(task) if kind and task.status == Status.SUCCEEDED else None
    if offered is None:
        raise Http404("This task has no result to download.")
    response = HttpResponse(offered.content, content_type=offered.content_type)
    response["Content-Disposition"] = content_disposition_header(True, offered.filename)
    return response

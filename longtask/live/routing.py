"""Websocket routes of longtask, mounted by the project's ASGI application."""

from __future__ import annotations

from uuid import UUID

from django.urls import re_path

from longtask.live.consumers import TaskConsumer

#: Any last segment reaches the consumer, which closes with 4404 for a malformed id too.
websocket_urlpatterns = [
    # channels routes an ASGI app with Django's re_path; django-stubs expects a view there.
    re_path(
        r"^ws/tasks/(?P<task_id>[^/]+)/$",
        TaskConsumer.as_asgi(),  # type: ignore[arg-type]
        name="longtask-live",
    ),
]


def websocket_path(task_id: UUID | str) -> str:
    """Return the path of a task's websocket (channels routes cannot be reversed)."""
    return f"/ws/tasks/{task_id}/"

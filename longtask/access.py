"""The one access rule for every surface that shows a task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.http import Http404

from longtask.models import LongTask

if TYPE_CHECKING:
    from longtask.kinds import Kind


def can_view(user: Any, task: LongTask) -> bool:
    """Owned tasks: their owner and staff. Anonymous tasks: whoever holds the URL."""
    if task.owner_id is None:
        return True
    return bool(user.is_authenticated and (user.is_staff or user.pk == task.owner_id))


def get_visible_task(user: Any, task_id: UUID | str) -> LongTask:
    """Return the task if ``user`` may see it; otherwise 404, so ids cannot be probed."""
    task = LongTask.objects.filter(pk=task_id).first()
    if task is None or not can_view(user, task):
        raise Http404("No such task.")
    return task


def can_start(user: Any, kind: Kind) -> bool:
    """A kind with ``login_required`` or a ``permission`` needs a user who has it."""
    if not kind.login_required and not kind.permission:
        return True
    if user is None or not user.is_authenticated:
        return False
    return kind.permission is None or bool(user.has_perm(kind.permission))

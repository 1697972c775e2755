"""The one access rule for every surface that shows or changes a task.

A task's owner may do everything with it; a task started anonymously is reachable by
whoever holds its URL (a random UUID, shared like a secret link), but a django.tasks
function enqueued by code without an owner is not: nobody started it on the web, and its
arguments may be anybody's. Anyone else needs a
permission, asked of ``user.has_perm`` so that superusers, groups and custom backends
count as Django counts them: ``longtask.view_longtask`` to read a task (or
``change_longtask``, which implies it as in the admin), ``longtask.change_longtask`` to
cancel or retry it. ``is_staff`` alone grants nothing: it only opens the admin's door.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.http import Http404

from longtask.kinds import TASK_KIND_PREFIX
from longtask.models import LongTask, LongTaskQuerySet, rows

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, _User

    from longtask.kinds import Kind

#: A signed-in user: the project's AUTH_USER_MODEL (django-stubs' plugin reads it from the
#: settings and puts that model in place of ``_User``).
type User = _User
#: Whoever asks: a user or an anonymous visitor (``request.user``); None where nobody
#: asks (Python code starting a task).
type AnyUser = _User | AnonymousUser

VIEW_PERMISSION = "longtask.view_longtask"
CHANGE_PERMISSION = "longtask.change_longtask"


def _open_by_url(task: LongTask) -> bool:
    return task.owner_id is None and not task.kind.startswith(TASK_KIND_PREFIX)


def _is_owner(user: AnyUser | None, task: LongTask) -> bool:
    return bool(user is not None and user.is_authenticated and user.pk == task.owner_id)


def can_view_all(user: AnyUser | None) -> bool:
    """Return whether ``user`` may read every task (view or change permission)."""
    if user is None or not user.is_authenticated:
        return False
    return bool(user.has_perm(VIEW_PERMISSION) or user.has_perm(CHANGE_PERMISSION))


def can_change_all(user: AnyUser | None) -> bool:
    """Return whether ``user`` may cancel or retry every task."""
    return bool(user is not None and user.is_authenticated and user.has_perm(CHANGE_PERMISSION))


def can_view(user: AnyUser | None, task: LongTask) -> bool:
    """Anonymous tasks: whoever holds the URL. Owned ones: the owner and viewers."""
    return _open_by_url(task) or _is_owner(user, task) or can_view_all(user)


def can_change(user: AnyUser | None, task: LongTask) -> bool:
    """Cancel or retry: whoever may view an anonymous task, the owner, or a changer."""
    return _open_by_url(task) or _is_owner(user, task) or can_change_all(user)


def get_visible_task(user: AnyUser | None, task_id: UUID | str) -> LongTask:
    """Return the task if ``user`` may see it; otherwise 404, so ids cannot be probed.

    A row written around ``start()`` may hold parameters or a result Python cannot
    decode (a 5,000-digit number): such a value reads as None here, so its pages still
    answer (the task itself was failed by its worker), never a 500.
    """
    task = rows.fetch(task_id, readable=True)
    if task is None or not can_view(user, task):
        raise Http404("No such task.")
    return task


def get_changeable_task(user: AnyUser | None, task_id: UUID | str) -> LongTask:
    """Return the task if ``user`` may cancel it: 404 if unseen, 403 if only seen."""
    task = get_visible_task(user, task_id)
    if not can_change(user, task):
        raise PermissionDenied("You may not change this task.")
    return task


def can_start(user: AnyUser | None, kind: Kind) -> bool:
    """A kind with ``login_required`` or a ``permission`` needs a user who has it."""
    if not kind.login_required and not kind.permission:
        return True
    if user is None or not user.is_authenticated:
        return False
    return kind.permission is None or bool(user.has_perm(kind.permission))


def visible_tasks(user: AnyUser) -> LongTaskQuerySet:
    """Return the tasks ``user`` may list (anonymous tasks are reachable only by URL)."""
    if can_view_all(user):
        return LongTask.objects.all()
    if user.is_authenticated:
        return LongTask.objects.filter(owner=user)
    return LongTask.objects.none()


def own_tasks(user: Any, started_here: Iterable[UUID | str] = ()) -> LongTaskQuerySet:
    """Return what "your tasks" lists: never anybody else's, whatever the permissions.

    A signed-in user's own tasks (staff included: a permission to read every task does
    not make them theirs). For an anonymous visitor, those of ``started_here`` (the ids
    their session remembers) that are open by URL: an id that became owned, or a
    django.tasks function's, is left out. Always a part of what ``can_view`` allows
    (owners see their own; anonymous tasks are open by URL), with no permission read.
    """
    if user is not None and user.is_authenticated:
        return LongTask.objects.filter(owner=user)
    ids = list(started_here)
    if not ids:
        return LongTask.objects.none()
    return LongTask.objects.filter(pk__in=ids, owner__isnull=True).exclude(
        kind__startswith=TASK_KIND_PREFIX
    )

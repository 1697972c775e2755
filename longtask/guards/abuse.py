"""Abuse limits on starting tasks: starts per minute, active tasks, subtasks in flight.

The limits apply when a start names an ``Actor`` (the web views and the CLI do);
``longtask.start()`` called from Python without one is not limited. Users' starts
and active tasks are counted from their LongTask rows (the rows of the last 60
seconds: a moving window). Anonymous visitors are counted per client IP, because the
row has no IP column: their starts in the ``limits`` library's moving window (in
Redis or the database, like the queues' rate limits: never in a pickling cache), the
ids of their recent tasks in the shared cache for active ones. A fixed per-minute
window would let twice the limit through across a minute's boundary.
Counting is not atomic with the start: concurrent starts may pass a limit by a few.
"""

from __future__ import annotations

import datetime
import functools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.cache import BaseCache, caches
from django.db.models import F, Q, Sum
from django.utils import timezone
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from longtask.conf import settings
from longtask.dispatch.ratelimit import database_storage
from longtask.exceptions import LimitExceeded, NotAllowed
from longtask.guards.access import can_start
from longtask.kinds import FanOutKind, Kind
from longtask.models import LongTask

if TYPE_CHECKING:
    from django.http import HttpRequest

    from longtask.guards.access import AnyUser, User

#: How many of an IP's task ids the cache remembers to count its active tasks.
IP_TASKS_KEPT = 1000
#: How long an IP's task ids are remembered (a task active longer is no longer counted).
IP_TASKS_TTL = 24 * 3600
#: Seconds of the moving window of ``STARTS_PER_MINUTE``.
START_WINDOW = 60


@dataclass(frozen=True)
class Actor:
    """Who asks for a start: a user (anonymous or None) and, on the web, the client's IP."""

    user: AnyUser | None = None
    client_ip: str | None = None
    #: An operator at the command line: no login, permission or rate checks, only sizes.
    trusted: bool = False

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        """Return the actor of a web request."""
        return cls(user=request.user, client_ip=client_ip(request))

    @property
    def signed_in(self) -> User | None:
        """The user, if one is signed in."""
        return self.user if self.user is not None and self.user.is_authenticated else None

    @property
    def authenticated(self) -> bool:
        return self.signed_in is not None

    @property
    def exempt(self) -> bool:
        """Say whether the rate and count limits pass this actor by."""
        if self.trusted:
            return True
        user = self.signed_in
        return bool(settings.LIMITS_EXEMPT_STAFF and user is not None and user.is_staff)


def client_ip(request: HttpRequest) -> str:
    """Return REMOTE_ADDR: X-Forwarded-For is whatever the client wrote unless a proxy you
    trust rewrites it, so behind a proxy set REMOTE_ADDR from its header in a middleware."""
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def check_allowed(kind: Kind, actor: Actor) -> None:
    """Raise NotAllowed if the kind needs a login or a permission the actor lacks."""
    if not actor.trusted and not can_start(actor.user, kind):
        if kind.permission and actor.authenticated:
            raise NotAllowed(f"you may not start {kind.name!r} tasks")
        raise NotAllowed(f"log in to start {kind.name!r} tasks")


def check_start(kind: Kind, actor: Actor) -> None:
    """Raise LimitExceeded if starting ``kind`` now would pass one of the actor's limits."""
    if actor.exempt:
        return
    per_minute, max_active = settings.STARTS_PER_MINUTE, settings.MAX_ACTIVE_TASKS
    if (user := actor.signed_in) is not None:
        recent, active = _user_counts(user, per_minute, max_active)
        tasks = Q(owner=user)
    else:
        ip = actor.client_ip or "unknown"
        recent, active = _ip_counts(ip, per_minute, max_active)
        tasks = Q(pk__in=_cache().get(_tasks_key(ip)) or [])
    if per_minute is not None and recent >= per_minute:
        raise LimitExceeded(
            f"Too many tasks started: at most {per_minute} a minute. Try again in a minute.",
            retry_after=_retry_after(actor, per_minute),
        )
    if max_active is not None and active >= max_active:
        raise LimitExceeded(
            f"Too many tasks under way: at most {max_active} at once. "
            "Wait for one to finish, or cancel one.",
            retry_after=60,
        )
    _check_queued_subtasks(kind, tasks)


def record_start(task: LongTask, actor: Actor) -> None:
    """Count an anonymous start against its IP (users' starts are counted from their rows)."""
    if actor.exempt or actor.authenticated:
        return
    ip = actor.client_ip or "unknown"
    if (per_minute := settings.STARTS_PER_MINUTE) is not None:
        _start_limiter().hit(_start_item(per_minute), ip)
    cache = _cache()
    ids = cache.get(_tasks_key(ip)) or []
    cache.set(_tasks_key(ip), [*ids, str(task.pk)][-IP_TASKS_KEPT:], timeout=IP_TASKS_TTL)


def _user_counts(user: User, per_minute: int | None, max_active: int | None) -> tuple[int, int]:
    tasks = LongTask.objects.filter(owner=user)
    since = timezone.now() - datetime.timedelta(minutes=1)
    recent = tasks.filter(created_at__gte=since).count() if per_minute is not None else 0
    active = tasks.active().count() if max_active is not None else 0
    return recent, active


def _ip_counts(ip: str, per_minute: int | None, max_active: int | None) -> tuple[int, int]:
    cache = _cache()
    recent = 0
    if per_minute is not None:
        stats = _start_limiter().get_window_stats(_start_item(per_minute), ip)
        recent = per_minute - stats.remaining
    active = 0
    if max_active is not None and (ids := cache.get(_tasks_key(ip))):
        rows = LongTask.objects.active().filter(pk__in=ids).values_list("pk", flat=True)
        still = [str(pk) for pk in rows]
        if len(still) != len(ids):  # forget finished tasks, so the list stays short
            cache.set(_tasks_key(ip), still, timeout=IP_TASKS_TTL)
        active = len(still)
    return recent, active


def _check_queued_subtasks(kind: Kind, tasks: Q) -> None:
    """Refuse a fan-out start while the actor's own fan-outs have ``cap`` subtasks in flight.

    Counted from the parents' counters (total - done - failed of their active fan-outs),
    never from the subtask table: the cost is the actor's active tasks, whatever the
    size of the fan-outs or of the history, and one actor's backlog refuses nobody else.
    """
    cap = settings.MAX_QUEUED_SUBTASKS
    if cap is None or not isinstance(kind, FanOutKind):
        return
    left = F("subtasks_total") - F("subtasks_done") - F("subtasks_failed")
    in_flight = LongTask.objects.active().filter(tasks).aggregate(n=Sum(left))["n"] or 0
    if in_flight >= cap:
        raise LimitExceeded(
            f"Too many subtasks of yours are waiting ({in_flight}, at most {cap}). "
            "Wait for your fan-outs to finish, or cancel one.",
            retry_after=300,
        )


def _cache() -> BaseCache:
    return caches[settings.LIMITS_CACHE_ALIAS or settings.CACHE_ALIAS]


def _start_limiter() -> MovingWindowRateLimiter:
    """Return the moving-window limiter of anonymous starts, on the queues' storage."""
    return _limiter_on(settings.RATE_LIMIT_STORAGE)


@functools.cache
def _limiter_on(uri: str | None) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage_from_string(uri) if uri else database_storage())


def _start_item(per_minute: int) -> RateLimitItem:
    return RateLimitItemPerSecond(per_minute, START_WINDOW, namespace="longtask-starts")


def _retry_after(actor: Actor, per_minute: int) -> int:
    """Seconds until the oldest start leaves the window (a minute for users' rows)."""
    if actor.authenticated:
        return START_WINDOW
    stats = _start_limiter().get_window_stats(_start_item(per_minute), actor.client_ip or "unknown")
    return max(1, min(START_WINDOW, math.ceil(stats.reset_time - time.time())))


def _tasks_key(ip: str) -> str:
    return f"{settings.KEY_PREFIX}:limits:tasks:{ip}"

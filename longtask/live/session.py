"""The access re-check of an open live connection, shared by every transport.

A websocket or an event stream may stay open for hours after the one access check
at connect; each re-reads the session and re-applies the access rule every
LONGTASK_LIVE_RECHECK seconds with ``still_allowed``.
"""

from __future__ import annotations

import uuid
from importlib import import_module
from typing import Any

from django.conf import settings as django_settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare

from longtask.guards.access import can_view
from longtask.models import rows


def session_user(session_key: str | None) -> Any:
    """Return the user a session still authenticates, or None; never changes the session.

    The checks of ``django.contrib.auth.get_user``, read-only: that function also flushes
    or cycles the session it reads, which is the HTTP request's business, not ours.
    """
    if not session_key:
        return None
    engine = import_module(django_settings.SESSION_ENGINE)
    session = engine.SessionStore(session_key)
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend_path not in django_settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = session.get(HASH_SESSION_KEY)
        hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        if not session_hash or not any(constant_time_compare(session_hash, h) for h in hashes):
            return None  # the password changed (or the secret key, without a fallback)
    return user


def still_allowed(session_key: str | None, user_pk: Any, task_id: uuid.UUID) -> bool:
    """Return whether the session still holds ``user_pk`` and they may still see the task."""
    user = session_user(session_key)
    if user is None or user.pk != user_pk:
        return False
    task = rows.fetch(task_id, readable=True)
    # A deleted task is the watcher's to report (the "gone" frame).
    return task is None or can_view(user, task)

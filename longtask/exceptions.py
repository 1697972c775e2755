"""Exceptions raised by longtask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django import forms


class LongTaskError(Exception):
    """Base class of longtask's errors; do not raise directly."""


class UnknownKind(LongTaskError, LookupError):
    """No kind is registered under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown task kind {name!r}")
        self.name = name


class InvalidParameters(LongTaskError, ValueError):
    """The parameters do not pass the kind's form; ``form`` holds the errors."""

    def __init__(self, form: forms.Form) -> None:
        self.form = form
        # An ErrorList yields its messages as str (django-stubs says "or ValidationError").
        errors = "; ".join(
            f"{field}: {' '.join(map(str, messages))}"
            if field != "__all__"
            else " ".join(map(str, messages))
            for field, messages in form.errors.items()
        )
        super().__init__(f"invalid parameters: {errors}")


class KindConfigurationError(LongTaskError, ImproperlyConfigured):
    """A kind is declared wrongly (no name, a name used twice, ...)."""


class FatalError(LongTaskError):
    """Raise from a task to fail it for good at once, without retries."""


class RetryLater(LongTaskError):
    """Raise from a task to ask for another attempt after ``delay`` seconds."""

    def __init__(self, delay: float = 0, message: str = "") -> None:
        super().__init__(message or f"retry requested in {delay:g}s")
        self.delay = delay


class Cancelled(LongTaskError):
    """Raised inside a running task by ``progress()`` once the task has been cancelled."""


class TimeLimitExceeded(LongTaskError):
    """A run took longer than its kind's ``time_limit`` (counted as a failed attempt)."""


class NotAllowed(LongTaskError, PermissionError):
    """The user may not start this kind (it needs a login or a permission they lack)."""


class LimitExceeded(LongTaskError):
    """A start was refused by an abuse limit; ``status`` is the HTTP status to answer with."""

    status: int = 429

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ParametersTooLarge(LimitExceeded):
    """The parameters' JSON is over ``LONGTASK_MAX_PARAMETERS_BYTES``."""

    status = 413


class ResultTooLarge(FatalError):
    """A result's JSON is over ``LONGTASK_MAX_RESULT_BYTES`` (fatal: a retry returns as much)."""


class InvalidStoredParameters(FatalError):
    """A task's stored parameters fail its kind's validation, checked again by the worker.

    ``start()`` saves only what the kind's form cleaned; a row written around it (SQL,
    the admin, a form changed since) fails with this at once, without retries.
    """

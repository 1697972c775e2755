"""The site's middleware, all of it able to run async as well as sync.

Under an ASGI server one middleware that can only run sync splits the chain: Django
then hops to a thread above it and back to the event loop below it, twice per request
(measured: bench/web.py, docs/benchmarks.md). So these two run either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override
from whitenoise.middleware import WhiteNoiseMiddleware

type GetResponse = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]


class AdminStylesMiddleware:
    """Allow inline styles on the admin's pages only (its widgets and ours use style attributes).

    Everywhere else the policy has no ``'unsafe-inline'`` at all. Listed after
    ``ContentSecurityPolicyMiddleware``, so the override is on the response it reads.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    @cached_property
    def admin_prefix(self) -> str:
        return reverse("admin:index")  # the URLconf is loaded by the first request

    def __call__(self, request: HttpRequest) -> Any:
        if not request.path.startswith(self.admin_prefix):
            return self.get_response(request)  # a coroutine when async: awaited above
        policy = {**settings.SECURE_CSP, "style-src": [CSP.SELF, CSP.UNSAFE_INLINE]}
        return csp_override(policy)(self.get_response)(request)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware (static files), able to run async: it reads no body and
    does no I/O but for the file it serves."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:  # DEBUG: looks on disk each time
            static_file = self.find_file(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)  # type: ignore[misc]

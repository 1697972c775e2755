"""The admin's own Content-Security-Policy: the site's, plus inline styles."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override


class AdminStylesMiddleware:
    """Allow inline styles on the admin's pages only (its widgets and ours use style attributes).

    Everywhere else the policy has no ``'unsafe-inline'`` at all. Listed after
    ``ContentSecurityPolicyMiddleware``, so the override is on the response it reads.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(reverse("admin:index")):
            return self.get_response(request)
        policy = {**settings.SECURE_CSP, "style-src": [CSP.SELF, CSP.UNSAFE_INLINE]}
        return csp_override(policy)(self.get_response)(request)

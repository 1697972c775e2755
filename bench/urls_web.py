"""The site's URLs plus the web bench's baseline view (bench/settings_web.py)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET

from quiltsite.urls import urlpatterns as site_urlpatterns


@require_GET
def bare(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "SUCCEEDED", "progress": {"current": 1, "total": 1}})


urlpatterns = [path("bench/bare.json", bare), *site_urlpatterns]

"""longtask's URLs, under the ``longtask`` namespace: ``path("", include("longtask.urls"))``."""

from django.urls import include, path

app_name = "longtask"

urlpatterns = [
    path("", include("longtask.web.urls")),
    path("", include("longtask.live.urls")),
]

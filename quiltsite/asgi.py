"""ASGI entry point: the site's HTTP and the longtask websockets, for uvicorn or daphne."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quiltsite.settings")
# Set Django up before importing anything that touches models or settings.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from longtask.live.routing import websocket_urlpatterns  # noqa: E402
from quiltsite.lanes import ThreadLanes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ThreadLanes(django_asgi_app),
        # A page of another site must not open a socket with the user's cookies.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

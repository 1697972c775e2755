"""ASGI entry point: the site's HTTP and the longtask websockets (gunicorn with uvicorn
workers, or any ASGI server)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quiltsite.settings")
# Set Django up before importing anything that touches models or settings.
django.setup(set_prefix=False)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from longtask.live.routing import websocket_urlpatterns  # noqa: E402
from quiltsite.http import SyncChainASGIHandler, ThreadLanes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ThreadLanes(SyncChainASGIHandler()),
        # A page of another site must not open a socket with the user's cookies.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

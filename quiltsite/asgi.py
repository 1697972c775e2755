"""ASGI entry point: daphne serves the site's HTTP (and, later, websockets)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quiltsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)

application = ProtocolTypeRouter({"http": django_asgi_app})

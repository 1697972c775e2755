"""The live transports served over plain HTTP (included by ``longtask.urls``); the
websocket's route is in ``longtask.live.routing``. A new transport adds its URL here."""

from django.urls import path

from longtask.live import sse

urlpatterns = [
    # Server-Sent Events (needs an ASGI server): the websocket's frames over plain HTTP.
    path("tasks/<uuid:task_id>/events", sse.events, name="events"),
]

"""Live updates of a task, over any transport.

One watcher per watched task (``watcher``) reads it for every client, and its listener
(``listener``) hears the workers' pushes; clients that join together share their snapshot
and catch-up reads (``shared``, over ``reads``); ``follow`` turns it all into one client's
frames (``frames``) from its cursor (``cursor``) to the end; ``session`` re-checks a
signed-in client's access. Two transports use them: the websocket (``consumers``,
``routing``) and Server-Sent Events (``sse``). A new transport is one module here: read
the snapshot (``shared.snapshot``), then send ``Follow.next_frames`` until a frame
``follow.ends`` it.
"""

"""Live updates of a task, over any transport.

One watcher per watched task (``watcher``) reads it for every client; ``follow`` turns it
into one client's frames from its cursor (``cursor``) to the end; ``session`` re-checks a
signed-in client's access. Two transports use them: the websocket (``consumers``,
``routing``) and Server-Sent Events (``sse``). A new transport is one module here: read
the snapshot (``watcher.read_snapshot``), then send ``Follow.next_frames`` until a frame
``follow.ends`` it.
"""

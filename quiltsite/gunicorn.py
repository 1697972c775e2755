"""gunicorn's settings for the site (``gunicorn -c python:quiltsite.gunicorn``): uvicorn
workers, one per CPU unless WEB_CONCURRENCY says otherwise, on 127.0.0.1:$PORT.

One process serves about one core's worth of requests (the GIL); several share the
port through gunicorn, which restarts a worker that dies. Measured: bench/web.py.
"""

import os

from uvicorn_worker import UvicornWorker

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
worker_class = "quiltsite.gunicorn.Worker"
# A stop (Ctrl-C, systemctl stop) waits this long for open requests, websockets and
# event streams, then ends them: below the unit's TimeoutStopSec.
graceful_timeout = 10


class Worker(UvicornWorker):
    """uvicorn's worker, sending websocket frames uncompressed.

    uvicorn compresses each frame once per socket (permessage-deflate, which browsers
    ask for): a live frame sent to a thousand watchers was deflated a thousand times,
    the web process's biggest cost then (bench/live.py). The frames are small JSON.
    """

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "ws_per_message_deflate": False}

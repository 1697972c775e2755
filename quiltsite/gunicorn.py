"""gunicorn's settings for the site (``gunicorn -c python:quiltsite.gunicorn``): uvicorn
workers, one per CPU unless WEB_CONCURRENCY says otherwise, on 127.0.0.1:$PORT.

One process serves about one core's worth of requests (the GIL); several share the
port through gunicorn, which restarts a worker that dies. Measured: bench/web.py.
"""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
worker_class = "uvicorn_worker.UvicornWorker"
# A stop (Ctrl-C, systemctl stop) waits this long for open requests, websockets and
# event streams, then ends them: below the unit's TimeoutStopSec.
graceful_timeout = 10

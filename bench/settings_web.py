"""Settings of the web bench (bench/web.py): the site's, with one extra URL.

``/bench/bare.json`` is the baseline: a Django view returning a constant JSON object,
served by the same server and the same middleware as the site's pages, so the
difference is the work the status views do themselves. It exists only here.
"""

from quiltsite.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls_web"

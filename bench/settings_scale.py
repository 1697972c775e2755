"""Settings of the scale bench (bench/scale.py): the site's, plus the bench-noop kind."""

from quiltsite.settings import *  # noqa: F403
from quiltsite.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.scalekind"]

"""Test settings: the site's settings with a private data directory per test run.

Worker processes started by the integration tests inherit LONGTASK_DATA_DIR and so
share the test database and cache with the test process.
"""

import os
import tempfile

os.environ.setdefault("LONGTASK_DATA_DIR", tempfile.mkdtemp(prefix="longtask-tests-"))

from quiltsite.settings import *

# Worker processes use this settings module too, so the database they open is the test one.
DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

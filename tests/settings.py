"""Test settings: the site's settings with a private data directory per test run.

Worker processes started by the integration tests inherit LONGTASK_DATA_DIR (and
DATABASE_URL / REDIS_URL) and so share the test database, cache and queues with the
test process.

With REDIS_URL, the tests use database 15 of that Redis server (the test session
empties it first), as Django's tests use a ``test_`` database beside the real one.
"""

import os
import sys
import tempfile
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("LONGTASK_DATA_DIR", tempfile.mkdtemp(prefix="longtask-tests-"))
TEST_REDIS_DB = int(os.environ.get("LONGTASK_TEST_REDIS_DB", 15))
if os.environ.get("REDIS_URL"):
    _url = urlsplit(os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = urlunsplit(_url._replace(path=f"/{TEST_REDIS_DB}"))

from quiltsite.settings import *  # noqa: E402

# Worker processes use this settings module too, so the database they open is the test one.
_test = DATABASES["default"].setdefault("TEST", {})
_test.setdefault("NAME", f"test_{DATABASES['default']['NAME']}")
DATABASES["default"]["NAME"] = _test["NAME"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if "pytest" in sys.modules and DATABASE_URL:
    # The test process itself: no persistent connections, or a connection left open in
    # an async test's worker thread keeps PostgreSQL from dropping the test database.
    # (Worker processes started by the tests keep the site's persistent connections.)
    DATABASES["default"]["CONN_MAX_AGE"] = 0

if os.environ.get("LONGTASK_TEST_APP"):
    # Worker processes that must run test kinds: their longtasks.py registers them.
    INSTALLED_APPS = [*INSTALLED_APPS, "tests"]

"""The caches store JSON: a pickle planted where they read is never unpickled (SECURITY.md)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches
from django.core.cache.backends.filebased import FileBasedCache

from longtask import progress
from longtask.jsoncache import JSONFileBasedCache, JSONSerializer
from tests.conftest import services
from tests.processes import ROOT

#: Set by ``_unpickled`` when a planted pickle runs: the test fails if it ever does.
UNPICKLED: list[str] = []


def _unpickled(marker: str) -> str:
    UNPICKLED.append(marker)
    return marker


class Planted:
    """Unpickling this calls ``_unpickled``: what an attacker's payload would do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickled, ("code ran",))


@pytest.fixture(autouse=True)
def _no_payload_ran() -> Any:
    UNPICKLED.clear()
    yield
    assert UNPICKLED == [], "a planted pickle was unpickled"


def plant(path: Path) -> None:
    """Write what Django's FileBasedCache would write for a Planted value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(time.time() + 600) + zlib.compress(pickle.dumps(Planted())))


@pytest.fixture
def file_cache(tmp_path: Path) -> JSONFileBasedCache:
    return JSONFileBasedCache(str(tmp_path / "cache"), {})


def test_the_file_cache_stores_json(file_cache):
    cache = file_cache
    cache.set("k", {"a": [1, 2.5, "x", None, True]})
    assert cache.get("k") == {"a": [1, 2.5, "x", None, True]}
    assert cache.add("n", 0) and cache.incr("n") == 1 and cache.get("n") == 1
    assert cache.touch("k", 60) and cache.get("k")["a"][0] == 1
    with pytest.raises(TypeError):
        cache.set("bad", object())  # values must be JSON


def test_a_pickle_planted_in_the_file_cache_is_never_unpickled(file_cache, settings):
    task_id = "00000000-0000-0000-0000-000000000001"
    key = progress.progress_key(task_id)
    target = Path(file_cache._key_to_file(key))
    plant(target)  # where the JSON cache reads
    plant(target.with_suffix(".djcache"))  # where a pickling file cache would read
    assert file_cache.get(key) is None and file_cache.get(key, "miss") == "miss"
    assert not file_cache.touch(key) and not file_cache.has_key(key)
    if isinstance(caches["default"], FileBasedCache):  # the site's, through progress
        plant(Path(caches["default"]._key_to_file(key)))
        assert progress.read_progress(task_id) is None


@services
def test_a_pickle_planted_in_the_site_redis_is_never_unpickled():
    task_id = "00000000-0000-0000-0000-000000000002"
    key = progress.progress_key(task_id)
    site_cache = caches["default"]
    client = site_cache._cache.get_client(key, write=True)
    client.set(site_cache.make_and_validate_key(key), pickle.dumps(Planted()))
    assert progress.read_progress(task_id) is None
    assert site_cache.get(key) is None


def test_a_pickle_planted_in_redis_is_never_unpickled():
    serializer = JSONSerializer()
    assert serializer.loads(pickle.dumps(Planted())) is None
    assert serializer.loads(serializer.dumps({"a": [1]})) == {"a": [1]}
    assert serializer.dumps(7) == 7 and serializer.loads(b"7") == 7  # incr stays possible
    assert serializer.loads(serializer.dumps(True)) is True
    assert serializer.loads(serializer.dumps("12")) == "12"


def site_settings(**env: str) -> dict[str, Any]:
    """Read the cache and session settings of quiltsite with ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    code = (
        "import json, quiltsite.settings as s; "
        "print(json.dumps([s.CACHES['default'], s.SESSION_ENGINE], default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    caches_, engine = json.loads(out)
    return {"cache": caches_, "sessions": engine}


def test_the_site_never_configures_a_pickling_cache_or_cached_sessions(tmp_path):
    embedded = site_settings(LONGTASK_DATA_DIR=str(tmp_path))
    assert embedded["cache"]["BACKEND"] == "longtask.jsoncache.JSONFileBasedCache"
    assert embedded["sessions"] == "django.contrib.sessions.backends.db"
    redis = site_settings(LONGTASK_DATA_DIR=str(tmp_path), REDIS_URL="redis://:pw@127.0.0.1:1/0")
    assert redis["cache"]["OPTIONS"]["serializer"] == "longtask.jsoncache.JSONSerializer"
    assert redis["sessions"] == "django.contrib.sessions.backends.db"
    assert django_settings.SESSION_ENGINE == "django.contrib.sessions.backends.db"


@pytest.mark.parametrize("alias", list(django_settings.CACHES))
def test_every_configured_cache_reads_json(alias):
    options = django_settings.CACHES[alias]
    if "RedisCache" in options["BACKEND"]:
        assert options["OPTIONS"]["serializer"] == "longtask.jsoncache.JSONSerializer"
    else:
        assert isinstance(caches[alias], JSONFileBasedCache)

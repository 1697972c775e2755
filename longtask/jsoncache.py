"""Cache storage in JSON, never pickle: whoever can write the cache must not run code.

Django's file and Redis caches pickle every value, so write access to the cache
directory or the Redis server is code execution in every process that reads it.
``JSONSerializer`` is the ``serializer`` option of Django's ``RedisCache``;
``JSONFileBasedCache`` is Django's file cache with JSON files. Values must be JSON
(tuples come back as lists); undecodable entries are misses, never errors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import IO, TYPE_CHECKING, Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.filebased import FileBasedCache
from django.core.files import locks

logger = logging.getLogger("longtask")


class JSONSerializer:
    """``RedisCache``'s serializer: JSON text; plain ints stay ints so ``incr`` works."""

    def dumps(self, obj: object) -> bytes | int:
        # bool is an int subclass, but JSON keeps it a bool: only exact ints go raw.
        if type(obj) is int:
            return obj
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            pass
        try:
            return json.loads(data)
        except ValueError:
            logger.warning("cache entry is not JSON (planted or from a pickling cache): ignored")
            return None


class JSONFileBasedCache(FileBasedCache):
    """Django's file cache storing a JSON expiry line and a JSON value, never a pickle."""

    # Another suffix than Django's ".djcache": files a pickling cache left are never read.
    cache_suffix = ".json"

    if TYPE_CHECKING:
        # FileBasedCache's private helpers, used here as its own methods use them;
        # django-stubs declares only its public API.
        def _key_to_file(self, key: str, version: int | None = None) -> str: ...
        def _delete(self, fname: str) -> bool: ...

    def get(self, key: str, default: object = None, version: int | None = None) -> Any:
        fname = self._key_to_file(key, version)
        try:
            with open(fname, "rb") as f:
                if not self._is_expired(f):
                    return json.loads(f.read())
        except FileNotFoundError:
            pass
        except ValueError:
            logger.warning("cache file %s is not JSON: ignored", fname)
        return default

    def _write_content(self, file: IO[bytes], timeout: float | None, value: object) -> None:
        expiry = self.get_backend_timeout(timeout)
        file.write(json.dumps(expiry).encode() + b"\n")
        file.write(json.dumps(value, separators=(",", ":")).encode())
        file.truncate()  # touch() rewrites in place: drop what a longer old entry left

    def touch(
        self, key: str, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        try:
            with open(self._key_to_file(key, version), "r+b") as f:
                try:
                    locks.lock(f, locks.LOCK_EX)
                    if self._is_expired(f):
                        return False
                    previous_value = json.loads(f.read())
                    f.seek(0)
                    self._write_content(f, timeout, previous_value)
                    return True
                finally:
                    locks.unlock(f)
        except (FileNotFoundError, ValueError):
            return False

    def _is_expired(self, f: IO[bytes]) -> bool:
        """Read the expiry line; a file without a valid one is expired (and deleted)."""
        try:
            expiry = json.loads(f.readline())
        except ValueError:
            expiry = 0
        if expiry is not None and (not isinstance(expiry, int | float) or expiry < time.time()):
            f.close()
            self._delete(f.name)
            return True
        return False

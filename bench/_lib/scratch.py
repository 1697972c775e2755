"""Scratch places for a run: a private data directory (the SQLite database, logs), and on
``--services`` a PostgreSQL database that the bench creates and drops and a Redis database
number that it flushes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench._lib.processes import BenchError

# The comment marks a database as the bench's own: any other is refused, never dropped.
# (The older comment is what bench/fanout.py alone wrote before the benchmarks shared this.)
PG_COMMENT = "scratch database of the longtask bench (bench/)"
PG_COMMENTS = (PG_COMMENT, "scratch database of the longtask bench (bench/fanout.py)")
REDIS_MARKER = "longtask-bench:scratch"


def private_dir(prefix: str) -> Path:
    """A fresh private (0700, unguessable) directory under $TMPDIR.

    A fixed /tmp path another user could create first would let them plant files the
    benchmark's processes read (the secret key, the database).
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


def lost_service(exc: BaseException) -> bool:
    """Say whether ``exc`` is a lost connection to PostgreSQL or Redis."""
    from django.db import InterfaceError, OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, (InterfaceError, OperationalError, RedisConnectionError))


class Services:
    """A scratch PostgreSQL database and a Redis database number for ``--services``."""

    def __init__(self, pg_server: str, pg_db: str, redis_server: str, redis_db: int) -> None:
        if not pg_db.replace("_", "").isalnum():
            raise SystemExit(f"--pg-db {pg_db!r}: letters, digits and _ only")
        self.pg_server = pg_server.rstrip("/")
        self.pg_db = pg_db
        self.redis_db = redis_db
        self.database_url = f"{self.pg_server}/{pg_db}"
        self.redis_url = f"{redis_server.rstrip('/')}/{redis_db}"
        self.created = False

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(f"{self.pg_server}/postgres", autocommit=True)

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)

    def create(self) -> str:
        """(Re)create the scratch database and flush the Redis database; describe them.

        Only what an earlier bench left is replaced: a database without the bench's
        comment, or a Redis database with keys but without the bench's marker key, is
        someone else's, and the bench refuses to start (choose --pg-db / --redis-db).
        """
        client = self._redis()
        try:
            keys = client.dbsize()
            if keys and not client.exists(REDIS_MARKER):
                raise BenchError(
                    f"Redis db {self.redis_db} holds {keys} keys that the bench did not write: "
                    "choose another --redis-db"
                )
            with self._admin() as conn:
                row = conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE datname = %s",
                    [self.pg_db],
                ).fetchone()
                if row and row[0] not in PG_COMMENTS:
                    raise BenchError(
                        f"database {self.pg_db} was not made by the bench: choose another --pg-db"
                    )
                if row:
                    conn.execute(f'DROP DATABASE "{self.pg_db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.pg_db}"')
                self.created = True
                conn.execute(f"COMMENT ON DATABASE \"{self.pg_db}\" IS '{PG_COMMENT}'")
                server = conn.execute("SHOW server_version").fetchone()[0]
            client.flushdb()
            client.set(REDIS_MARKER, "1")
            version = client.info("server")["redis_version"]
        finally:
            client.close()
        return (
            f"PostgreSQL {server} database {self.pg_db} (new); Redis {version} db {self.redis_db}"
            f" ({keys} keys of an earlier bench flushed)"
        )

    def drop(self) -> None:
        """Flush the Redis database and drop the scratch database (if the bench made them)."""
        if not self.created:
            return
        from django.db import connections

        connections.close_all()
        client = self._redis()
        client.flushdb()
        client.close()
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
        self.created = False

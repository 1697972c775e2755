"""Exit 0 if PostgreSQL and Redis answer at the given URLs; else print why and exit 1."""

import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis


def main(database_url: str, redis_url: str) -> str | None:
    # The tests connect to the server's `postgres` database to create test_<name>.
    server = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    try:
        psycopg.connect(server, connect_timeout=3).close()
    except Exception as exc:
        return f"PostgreSQL at {database_url} does not answer ({type(exc).__name__})"
    try:
        redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {redis_url} does not answer ({type(exc).__name__})"
    return None


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

"""Exit 0 if the benches' PostgreSQL and Redis answer; else say why in one line, exit 1.

``make bench`` runs the PostgreSQL + Redis passes (``make bench-services``) only when
they do, as the test suite skips its service tests: a machine may have neither.

    .venv/bin/python bench/services_up.py [--pg-server URL] [--redis-server URL]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis-server", default="redis://127.0.0.1:6379")
    args = parser.parse_args(argv)
    import psycopg
    import redis

    try:
        psycopg.connect(f"{args.pg_server.rstrip('/')}/postgres", connect_timeout=3).close()
        redis.Redis.from_url(args.redis_server, socket_timeout=3).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"PostgreSQL + Redis passes skipped ({reason}); `make bench-services` runs them")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

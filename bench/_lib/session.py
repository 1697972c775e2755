"""A benchmark run: its options, environment, processes and clean-up.

Every process runs on a real settings module (quiltsite.settings, or bench.settings_raw
for the raw baseline) chosen by DJANGO_SETTINGS_MODULE; the per-run values reach them
as environment variables: LONGTASK_DATA_DIR (the private data directory, with the
SQLite database), and on ``--services`` DATABASE_URL and REDIS_URL (the scratch
database and Redis database). On the embedded default, DATABASE_URL and REDIS_URL
are ignored: embedded means embedded.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._lib.processes import ROOT, BenchError, Spawned
from bench._lib.sampling import RssSampler, ServiceCpu
from bench._lib.scratch import Services, lost_service, private_dir


def add_scratch_args(parser: argparse.ArgumentParser) -> None:
    """--keep, and --services with where its scratch database and Redis database are."""
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the data dir (logs, database; --services: the scratch database, Redis db)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="run on PostgreSQL + Redis (a scratch database and Redis db) instead of embedded",
    )
    parser.add_argument("--pg-server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--pg-db", default="longtask_bench", help="scratch database (dropped!)")
    parser.add_argument("--redis-server", default="redis://127.0.0.1:6379")
    # The test suite uses Redis db 15 (LONGTASK_TEST_REDIS_DB); keep clear of 13-15.
    parser.add_argument("--redis-db", type=int, default=11, help="Redis db number (flushed!)")


def sizes(values: list[int] | None, default: int) -> list[int]:
    """An ``action="append"`` size option: ``default`` if not given; 0 drops a run."""
    return [n for n in (values or [default]) if n > 0]


@dataclass
class Bench:
    """The processes of a run, all stopped at its end, and their RSS sampler."""

    data_dir: Path
    sampler: RssSampler
    services: Services | None = None
    started: list[Spawned] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "Q_CLUSTER_NAME"}
        env.update(
            DJANGO_SETTINGS_MODULE="quiltsite.settings",
            LONGTASK_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def spawn(self, label: str, args: list[str], env: dict[str, str], **kw: Any) -> Spawned:
        """Start a process (its log in the data dir) and watch its group's CPU and RSS."""
        spawned = Spawned(label, args, env, self.data_dir / f"{label}.log", **kw)
        self.started.append(spawned)
        self.sampler.watch(spawned.pgid)
        return spawned

    def qcluster(self, label: str, env: dict[str, str]) -> Spawned:
        return self.spawn(label, [sys.executable, "manage.py", "qcluster"], env)

    def stop(self, spawned: Spawned) -> None:
        spawned.stop()
        if spawned in self.started:
            self.started.remove(spawned)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])


class Session:
    """Sets up a run's environment; ``run`` calls the benchmark, ``close`` cleans up.

    ``env`` is added to this process's environment, which every process inherits.
    """

    def __init__(self, args: argparse.Namespace, prefix: str, **env: str) -> None:
        self.args = args
        self.status = 0
        self.data_dir = private_dir(prefix)
        os.environ.pop("Q_CLUSTER_NAME", None)
        os.environ.update(
            DJANGO_SETTINGS_MODULE="quiltsite.settings",
            LONGTASK_DATA_DIR=str(self.data_dir),
            **env,
        )
        self.services = None
        if args.services:
            self.services = Services(args.pg_server, args.pg_db, args.redis_server, args.redis_db)
            os.environ.update(
                DATABASE_URL=self.services.database_url, REDIS_URL=self.services.redis_url
            )
        else:
            for name in ("DATABASE_URL", "REDIS_URL"):  # embedded means embedded
                os.environ.pop(name, None)
        sys.path.insert(0, str(ROOT))
        os.chdir(ROOT)
        service_cpu = ServiceCpu(args.pg_db) if self.services else None
        self.sampler = RssSampler(service_cpu)
        self.bench = Bench(self.data_dir, self.sampler, services=self.services)

    def run(
        self, body: Callable[[Bench], None], *, quiet: bool = True, sample: bool = True
    ) -> None:
        """Create the scratch databases, set Django up, migrate, and call ``body``.

        ``quiet`` keeps this process's own longtask and django-q logs to warnings;
        ``sample`` starts the RSS sampler thread. Failures are reported on stderr and
        set ``status`` (1, or 130 on Ctrl-C or SIGTERM); every process is stopped.
        """

        # SIGTERM unwinds like Ctrl-C, so the finally below stops every process.
        def terminated(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, terminated)
        try:
            import django
            from django.core.management import call_command

            if self.services:
                print(self.services.create(), flush=True)  # BenchError if not ours
            django.setup()
            if quiet:  # the bench process itself queues work: keep its own logs quiet
                logging.getLogger("longtask").setLevel(logging.WARNING)
                logging.getLogger("django-q").setLevel(logging.WARNING)
            call_command("migrate", verbosity=0)
            if sample:
                self.sampler.start()
            body(self.bench)
        except BenchError as exc:
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            self.status = 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            self.status = 130
        except Exception as exc:
            if not (self.services and lost_service(exc)):
                raise
            print(
                f"FAILED: lost a service ({type(exc).__name__}: {exc}); "
                "was PostgreSQL or Redis restarted during the run?",
                file=sys.stderr,
                flush=True,
            )
            self.status = 1
        finally:
            self.bench.stop_all()
            self.sampler.done.set()
            if self.services and not self.args.keep:
                try:
                    self.services.drop()
                except Exception as exc:  # reported; the figures still print
                    print(
                        f"could not drop {self.services.pg_db} / flush Redis db: {exc}",
                        file=sys.stderr,
                    )
                    self.status = self.status or 1

    def close(self) -> int:
        """Say what is kept (with --keep or after a failure), remove the rest; the status."""
        if self.services and self.args.keep:
            print(f"kept database {self.services.pg_db} and Redis db {self.services.redis_db}")
        if self.args.keep or self.status:
            print(f"kept {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.status

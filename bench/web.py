"""The web tier under load: status JSON and pages polled by 200 locust users.

On a scratch data dir (embedded default; ``--services`` for PostgreSQL + Redis) the bench
makes a few tasks in this process (reports run to SUCCEEDED, quilts split with a
quarter of their squares done and left RUNNING, a report left QUEUED: no worker runs),
then for each server set-up starts the
site with bench/settings_web.py and drives it with locust, headless
(bench/locust_web.py): first the baseline, a bare Django JSON view behind the same
server and middleware, then the site: 49 users in 50 poll a task's status JSON and its
page (3:1), the others open the quilt start form, post it with its CSRF token and poll
what they started. The abuse limits on starts are raised for the run (every user comes
from 127.0.0.1). Printed: requests/s, p50/p99, errors, the server's CPU (cores, and ms
per request) and locust's own CPU, per set-up; the goal (>= 400 requests/s, p99 < 250 ms,
no errors) is reported, not enforced.

    .venv/bin/python bench/web.py [--setup stock --setup gunicorn] [--users 200]
        [--seconds 25] [--user-rate 2.2] [--pace poisson|constant] [--workers N] [--services]

Each user polls at random moments (``--pace poisson``, the default since 2026-12-06):
independent tabs. ``--pace constant`` is locust's constant_throughput, whose users move
in step (one burst of every user per period), the model of the earlier figures. The
counts restart once every user has started (locust's ``--reset-stats``), so the
start-up burst and the server's first connections are not in p99.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/web.py

from bench._lib.processes import (
    ROOT,
    BenchError,
    Spawned,
    free_port,
    group_members,
    log_problems,
    wait_serving,
    wait_until,
)
from bench._lib.sampling import HZ, CpuWatch, own_ticks
from bench._lib.session import Bench, Session, add_scratch_args

GOAL_RATE = 400.0
GOAL_P99_MS = 250.0
BIN = Path(sys.executable).parent


def server_args(setup: str, port: int, workers: int) -> list[str]:
    """The command of a set-up (the same application, quiltsite.asgi)."""
    app = "quiltsite.asgi:application"
    if setup == "stock":  # before 2026-12-05: one daphne, Django's own ASGI handler
        return [
            str(BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "bench.asgi_stock:application",
        ]
    if setup == "daphne":  # one process
        return [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), app]
    if setup == "gunicorn":  # `make run`'s: uvicorn workers behind gunicorn (PORT, WEB_CONCURRENCY)
        return [str(BIN / "gunicorn"), "-c", "python:quiltsite.gunicorn", app]
    if setup == "uvicorn":  # uvicorn's own supervisor
        return [
            *(str(BIN / "uvicorn"), "--workers", str(workers), "--host", "127.0.0.1"),
            *("--port", str(port), "--log-level", "warning", "--no-access-log", app),
        ]
    raise SystemExit(f"unknown set-up {setup!r}")


def make_tasks() -> list[str]:
    """Three SUCCEEDED reports, two RUNNING 10x10 quilts (a quarter of their squares
    done), one QUEUED report (its page counts the jobs ahead of it): their ids."""
    import longtask
    from longtask import jobs
    from longtask.models import LongTask, Status

    ids = []
    for _ in range(3):
        done = longtask.start("report", {"month": "2026-10", "work_ms": 0})
        jobs.run_task(str(done.pk))
        ids.append(str(done.pk))
    for _ in range(2):
        running = longtask.start("quilt", {"rows": 10, "cols": 10, "work_ms": 0})
        jobs.run_task(str(running.pk))  # the split
        jobs.run_chunk(str(running.pk), 0, 24)  # no worker takes the other squares
        ids.append(str(running.pk))
    ids.append(str(longtask.start("report", {"month": "2026-11", "work_ms": 0}).pk))
    statuses = sorted(LongTask.objects.filter(pk__in=ids).values_list("status", flat=True))
    expected = sorted([Status.SUCCEEDED] * 3 + [Status.RUNNING] * 2 + [Status.QUEUED])
    if statuses != expected:
        raise BenchError(f"the tasks are {statuses}, not {expected}")
    return ids


@dataclass
class Load:
    setup: str
    what: str
    requests: int
    failures: int
    rate: float
    p50: float
    p99: float
    server_cpu_s: float
    locust_cpu_s: float
    seconds: float
    load: float

    @property
    def ms_per_request(self) -> float:
        return 1000 * self.server_cpu_s / max(1, self.requests)

    @property
    def met(self) -> bool:
        return self.rate >= GOAL_RATE and self.p99 < GOAL_P99_MS and self.failures == 0


class Ticks:
    """CPU ticks of a process group, kept per process so that exits are not lost."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.seen: dict[int, int] = {}

    def total(self) -> int:
        for pid in group_members(self.pgid):
            self.seen[pid] = max(self.seen.get(pid, 0), own_ticks(pid) or 0)
        return sum(self.seen.values())


def drive(
    args: argparse.Namespace,
    bench: Bench,
    setup: str,
    server: Spawned,
    url: str,
    what: str,
    tasks: list[str],
) -> Load:
    """Run locust against ``url`` for ``args.seconds``; read its CSV summary."""
    prefix = bench.data_dir / f"locust-{setup}-{what}"
    env = bench.env(
        BENCH_WEB_MODE=what,
        BENCH_WEB_USER_RATE=str(args.user_rate),
        BENCH_WEB_PACE=args.pace,
        BENCH_WEB_TASKS=",".join(tasks),
    )
    users = ["Poller"] if what == "bare" else ["Poller", "Starter"]
    command = [
        *(str(BIN / "locust"), "-f", str(ROOT / "bench" / "locust_web.py"), "--headless"),
        # Users start over 4 s, and the counts restart once all have (--reset-stats).
        *("-u", str(args.users), "-r", str(max(1, args.users // 4)), "-t", f"{args.seconds}s"),
        *("--host", url, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"),
        "--reset-stats",
        *users,
    ]
    load = os.getloadavg()[0]
    server_ticks = Ticks(server.pgid)
    before = server_ticks.total()
    began = time.monotonic()
    locust = bench.spawn(f"locust-{setup}-{what}", command, env)
    locust_ticks = Ticks(locust.pgid)

    def finished() -> bool:
        locust_ticks.total()
        server.check_alive()
        return not locust.alive()

    wait_until(finished, args.seconds + 60, f"locust against {setup} ({what})")
    seconds = time.monotonic() - began
    server_cpu = (server_ticks.total() - before) / HZ
    locust_cpu = locust_ticks.total() / HZ
    bench.stop(locust)
    return read_summary(prefix, setup, what, server_cpu, locust_cpu, seconds, load)


def read_summary(
    prefix: Path,
    setup: str,
    what: str,
    server_cpu: float,
    locust_cpu: float,
    seconds: float,
    load: float,
) -> Load:
    try:
        with open(f"{prefix}_stats.csv", newline="") as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        total = rows["Aggregated"]
    except (OSError, KeyError) as exc:
        raise BenchError(f"no locust summary at {prefix}_stats.csv ({exc})") from None
    return Load(
        setup=setup,
        what=what,
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rate=float(total["Requests/s"]),
        p50=float(total["50%"]),
        p99=float(total["99%"]),
        server_cpu_s=server_cpu,
        locust_cpu_s=locust_cpu,
        seconds=seconds,
        load=load,
    )


def body(args: argparse.Namespace, bench: Bench) -> None:
    tasks = make_tasks()
    print(f"tasks: 3 SUCCEEDED, 2 RUNNING, 1 QUEUED; load {os.getloadavg()}")
    results: list[Load] = []
    notes: list[str] = []
    for setup in args.setup:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = bench.env(
            DJANGO_SETTINGS_MODULE="bench.settings_web",
            PORT=str(port),
            WEB_CONCURRENCY=str(args.workers),
            LONGTASK_STARTS_PER_MINUTE="100000",
            LONGTASK_MAX_ACTIVE_TASKS="100000",
        )
        server = bench.spawn(f"web-{setup}", server_args(setup, port, args.workers), env)
        watch = CpuWatch(bench.sampler)
        try:
            wait_serving(f"{url}/bench/bare.json", server)
            processes = len(group_members(server.pgid))
            for what in ("bare", "site"):
                result = drive(args, bench, setup, server, url, what, tasks)
                results.append(result)
                print(
                    f"  {setup} ({processes} processes) {what}: {result.rate:.0f} req/s, "
                    f"p99 {result.p99:.0f} ms, {result.failures} errors",
                    flush=True,
                )
            foreign = watch.foreign_note(setup, [server.pgid])
            if foreign:
                notes.append(foreign)
        finally:
            bench.stop(server)
        notes += log_problems([server.log])
    report(args, results, notes)


def report(args: argparse.Namespace, results: list[Load], notes: list[str]) -> None:
    print(
        f"\n{args.users} users, {args.seconds} s each, pace {args.user_rate or 'max'} req/s per "
        f"user ({args.pace}), {args.workers} processes for gunicorn and uvicorn; "
        f"{os.cpu_count()} CPUs"
    )
    header = (
        f"{'set-up':<9} | {'view':<4} | {'req/s':>6} | {'p50 ms':>6} | {'p99 ms':>6} | "
        f"{'errors':>6} | {'server cores':>12} | {'ms CPU/req':>10} | {'locust cores':>12} | "
        f"{'load 1m':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.setup:<9} | {r.what:<4} | {r.rate:>6.0f} | {r.p50:>6.0f} | {r.p99:>6.0f} | "
            f"{r.failures:>6} | {r.server_cpu_s / r.seconds:>12.2f} | "
            f"{r.ms_per_request:>10.2f} | {r.locust_cpu_s / r.seconds:>12.2f} | {r.load:>7.2f}"
        )
    bare = {r.setup: r for r in results if r.what == "bare"}
    print(
        "bare = /bench/bare.json (a constant JsonResponse, same server and middleware); "
        "site = status JSON, status page and a few starts"
    )
    for r in results:
        if r.what != "site":
            continue
        base = bare.get(r.setup)
        ratio = ""
        if base:
            ratio = (
                f", x{r.ms_per_request / base.ms_per_request:.1f} the bare view's CPU per request"
            )
        verdict = "MET" if r.met else "MISSED"
        print(
            f"goal on {r.setup} (>= {GOAL_RATE:.0f} req/s, p99 < {GOAL_P99_MS:.0f} ms, "
            f"no errors): {verdict}{ratio}"
        )
    if notes:
        print("notes:\n  " + "\n  ".join(notes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setup",
        action="append",
        choices=["stock", "daphne", "gunicorn", "uvicorn"],
        help="server set-up, repeatable (default: stock, then gunicorn). stock: one daphne "
        "with Django's own ASGI handler (the site before 2026-12-05); daphne: one daphne; "
        "gunicorn: make run's (uvicorn workers); uvicorn: uvicorn --workers",
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=25, help="locust run per view and set-up")
    parser.add_argument(
        "--user-rate",
        type=float,
        default=2.2,
        help="requests/s per user (0: as fast as answers come); 200 x 2.2 offers 440/s",
    )
    parser.add_argument(
        "--pace",
        choices=["poisson", "constant"],
        default="poisson",
        help="each user's requests at random moments, or in step (locust's constant_throughput)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes where several"
    )
    add_scratch_args(parser)
    args = parser.parse_args()
    args.setup = args.setup or ["stock", "gunicorn"]
    session = Session(args, "longtask-bench-web-")
    session.run(lambda bench: body(args, bench))
    return session.close()


if __name__ == "__main__":
    sys.exit(main())

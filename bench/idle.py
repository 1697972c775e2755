"""Idle websockets: memory per connection and CPU while nothing changes, in one process.

N websockets follow tasks that wait (no worker runs, so nothing changes) on one web
process as ``make run`` starts it (gunicorn with one uvicorn worker: WEB_CONCURRENCY=1).
Printed: the worker's RSS before and after the connections (and per connection), how
long connecting took, and the CPU the web process used over an idle window (in cores).
The clients run in this process, a batch of handshakes at a time.

    .venv/bin/python bench/idle.py [--sockets 10000] [--tasks 10] [--idle 30] [--services]

On the embedded default the web process polls the database for each watched task (one
read per task per tick, not per socket); with ``--services`` it waits for pushes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/idle.py

from bench._lib.processes import (
    BenchError,
    Spawned,
    free_port,
    group_members,
    site_command,
    wait_serving,
)
from bench._lib.sampling import group_seconds
from bench._lib.session import Bench, Session, add_scratch_args

#: Handshakes in flight at once (the client's handshake timeout is 10 s).
BATCH = 200


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def worker_pid(server: Spawned) -> int:
    """gunicorn's one worker: the member of its group that is not the master."""
    members = [pid for pid in group_members(server.pgid) if pid != server.pid]
    if len(members) != 1:
        raise BenchError(f"expected one gunicorn worker, found {members}")
    return members[0]


async def hold(urls: list[str], origin: str, idle: float, measure: object) -> list[str]:
    """Open a socket per URL (BATCH handshakes at a time), wait for each snapshot, call
    ``measure()`` once all are open, keep them for ``idle`` seconds; return failures."""
    from websockets.asyncio.client import connect

    opened: list[object] = []
    failures: list[str] = []

    async def one(url: str) -> None:
        try:
            ws = await connect(url, origin=origin, proxy=None, max_size=None)
            await asyncio.wait_for(ws.recv(), 30)  # the snapshot
            opened.append(ws)
        except Exception as exc:  # reported: the run fails
            failures.append(type(exc).__name__)

    for start in range(0, len(urls), BATCH):
        await asyncio.gather(*(one(url) for url in urls[start : start + BATCH]))
    if not failures:
        await asyncio.to_thread(measure, "open")
        await asyncio.sleep(idle)  # the window measured: nothing happens on purpose
        await asyncio.to_thread(measure, "idle")
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return failures


def scenario(bench: Bench, server: Spawned, base: str, args: argparse.Namespace) -> None:
    import longtask
    from longtask.models import LongTask

    tasks = [longtask.start("report", {"month": "2026-10"}) for _ in range(args.tasks)]
    ws = base.replace("http://", "ws://")
    urls = [f"{ws}/ws/tasks/{tasks[i % len(tasks)].pk}/" for i in range(args.sockets)]
    worker = worker_pid(server)
    before = rss_kib(worker)
    marks: dict[str, tuple[float, float, int]] = {}

    def measure(what: str) -> None:
        marks[what] = (time.monotonic(), group_seconds(server.pgid), rss_kib(worker))

    began = time.monotonic()
    failures = asyncio.run(hold(urls, base, args.idle, measure))
    if failures:
        raise BenchError(f"{len(failures)} of {args.sockets} sockets failed: {set(failures)}")
    opened_at, cpu_open, rss_open = marks["open"]
    idle_at, cpu_idle, rss_idle = marks["idle"]
    per_socket = (rss_open - before) / args.sockets
    cores = (cpu_idle - cpu_open) / (idle_at - opened_at)
    print(
        f"{args.sockets:>8} {args.tasks:>6} {opened_at - began:>10.1f} {before / 1024:>10.0f} "
        f"{rss_open / 1024:>10.0f} {per_socket:>12.1f} {rss_idle / 1024:>10.0f} {cores:>11.3f}",
        flush=True,
    )
    LongTask.objects.filter(pk__in=[t.pk for t in tasks]).delete()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=10, help="waiting tasks the sockets follow")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    add_scratch_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "longtask-bench-idle-")

    def body(bench: Bench) -> None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = bench.env(PORT=str(port), WEB_CONCURRENCY="1")
        server = bench.spawn("gunicorn", site_command("gunicorn", port), env)
        wait_serving(base + "/", server)
        print(f"one uvicorn worker; logs in {bench.data_dir}")
        print(" sockets  tasks  connect s  RSS0 MiB  RSS open  KiB/socket  RSS idle  idle cores")
        scenario(bench, server, base, args)

    session.run(body, quiet=True, sample=False)
    return session.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

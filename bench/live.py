"""Latency of live subtask events, with 1 and with 200 watchers.

For each subtask of a quilt, the time from its recorded ``finished_at`` to the moment
its event reaches each websocket client; p50 and p95 over all clients, and the CPU
that the web server and the clients used meanwhile (in cores), with a warning when
other processes used much of the machine. The web server is what ``make run`` serves
(gunicorn with WEB_CONCURRENCY uvicorn workers, one per CPU by default; ``--server
daphne`` for one daphne, as before 2026-12-05). Real server and qcluster processes share
a fresh private data directory ($TMPDIR/longtask-bench-live-*, kept with its logs with
``--keep`` or when a run fails); the clients run in this process, so on a small
machine they compete with the server for the CPU. A run where a socket closes before
the final status fails, saying how each one ended.

    .venv/bin/python bench/live.py [--rows 20 --cols 20 --work-ms 5 --watchers 1 200]
    .venv/bin/python bench/live.py --watchers 1000 --others 10 --other-watchers 100

With ``--others N`` the quilt runs beside N other 10x10 quilts, each followed by
``--other-watchers`` sockets (issue 15's "1,000 watchers of one quilt plus 100 of each
of 10 other tasks"); the table then has a row for the quilt's watchers, one for the
others' and one for all.

On the embedded default (DATABASE_URL and REDIS_URL are ignored) workers push each
change to the web processes by a datagram (longtask/progress/local.py; the web processes
poll every LONGTASK_LIVE_INTERVAL with LONGTASK_LIVE_LOCAL_PUSH off); with
``--services`` everything runs on a scratch PostgreSQL database and Redis database, as
bench/fanout.py does, and workers push each change through the channel layer.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/live.py

from bench._lib.processes import BenchError, Spawned, free_port, site_command, wait_serving
from bench._lib.sampling import HZ, CpuWatch, group_seconds, own_ticks
from bench._lib.session import Bench, Session, add_scratch_args


def cpu_seconds(process: Spawned) -> float:
    """CPU time of the server: its process group (gunicorn's master and workers)."""
    process.check_alive()
    return group_seconds(process.pgid)


def clients_cpu_seconds() -> float:
    """CPU time of this process, where the websocket clients run."""
    return (own_ticks(os.getpid()) or 0) / HZ


@functools.lru_cache(maxsize=256)
def decode(text: str) -> tuple[str, bool, tuple[int, ...]]:
    """Return a frame's type, whether it is final, and its subtask indexes.

    Sockets that watch one task are sent the same frames (the same text): each text is
    decoded once for all of them, so the measuring clients, which share this process and
    the machine with the server, cost it less CPU than two thousand browsers' decoding.
    """
    frame = json.loads(text)
    indexes = tuple(event["index"] for event in frame.get("events", ()))
    return frame["type"], bool(frame.get("final")), indexes


async def watch(url: str, origin: str, connected: asyncio.Event, arrivals: dict[int, float]) -> str:
    """Follow one task to its final status; record when each subtask's event arrived.

    Return the final status, or how the socket closed before it.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    try:
        async with connect(url, origin=origin, proxy=None, max_size=None) as ws:
            await ws.recv()  # the snapshot
            connected.set()
            async for text in ws:
                now = time.time()
                kind, final, indexes = decode(text)
                for index in indexes:
                    arrivals.setdefault(index, now)
                if kind == "status" and final:
                    return str(json.loads(text)["status"])
    except ConnectionClosed as exc:
        connected.set()  # the others must not wait for this one
        return f"closed early ({exc})"
    except (OSError, TimeoutError) as exc:  # the handshake failed or took over 10 s
        connected.set()
        return f"not connected ({type(exc).__name__})"
    return "closed early"


async def run_watchers(
    urls: list[str], origin: str, ready: Any
) -> list[tuple[int, dict[int, float]]]:
    """Watch each URL of ``urls`` (one socket each) to its final status; return, for each
    socket, the position of its URL's task in ``urls``' distinct tasks and its arrivals."""
    count = len(urls)
    tasks_of = {url: i for i, url in enumerate(dict.fromkeys(urls))}
    arrivals: list[dict[int, float]] = [{} for _ in range(count)]
    events = [asyncio.Event() for _ in range(count)]
    tasks = []
    for i, url in enumerate(urls):
        tasks.append(asyncio.create_task(watch(url, origin, events[i], arrivals[i])))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let earlier handshakes proceed
    await asyncio.gather(*(e.wait() for e in events))
    await asyncio.to_thread(ready)
    finals = Counter(await asyncio.gather(*tasks))
    if set(finals) != {"SUCCEEDED"}:
        ends = ", ".join(f"{n} {end}" for end, n in finals.most_common())
        raise BenchError(f"{count} watchers: {ends}")
    return [(tasks_of[url], client) for url, client in zip(urls, arrivals, strict=True)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def scenario(
    bench: Bench, base: str, server: Spawned, watchers: int, args: argparse.Namespace
) -> None:
    import longtask
    from longtask.models import LongTask, SubTask

    task = longtask.start("quilt", {"rows": args.rows, "cols": args.cols, "work_ms": args.work_ms})
    # The other tasks (issue 15: "plus 100 watchers of each of 10 other tasks"): small
    # quilts running at the same time, each with its own watchers.
    others = [
        longtask.start("quilt", {"rows": 10, "cols": 10, "work_ms": args.work_ms})
        for _ in range(args.others)
    ]
    ws = base.replace("http://", "ws://")
    urls = [f"{ws}/ws/tasks/{task.pk}/"] * watchers
    for other in others:
        urls += [f"{ws}/ws/tasks/{other.pk}/"] * args.other_watchers
    clusters: list[Spawned] = []
    measured: dict[str, float] = {}
    load: list[CpuWatch] = []

    def start_workers() -> None:
        # Only once every client has its snapshot: each event is then a live one.
        measured["cpu"], measured["wall"] = cpu_seconds(server), time.monotonic()
        measured["clients"] = clients_cpu_seconds()
        load.append(CpuWatch(bench.sampler))
        clusters.append(bench.qcluster("parents", bench.env()))
        clusters.append(bench.qcluster("subtasks", bench.env(Q_CLUSTER_NAME="longtask-subtasks")))

    try:
        arrivals = asyncio.run(run_watchers(urls, base, start_workers))
        cpu = cpu_seconds(server) - measured["cpu"]
        clients = clients_cpu_seconds() - measured["clients"]
        wall = time.monotonic() - measured["wall"]
        # Other processes' CPU (the clients run in this process and count as ours).
        noisy = load[0].foreign_note(
            f"{len(urls)} watchers", [server.pgid, *(c.pgid for c in clusters)]
        )
    finally:
        for process in clusters:
            bench.stop(process)
    finished = [
        {
            index: at.timestamp()
            for index, at in SubTask.objects.filter(parent=t).values_list("index", "finished_at")
        }
        for t in [task, *others]
    ]

    def latencies(which: set[int]) -> tuple[list[float], int]:
        chosen = [(finished[t], client) for t, client in arrivals if t in which]
        found = [(at - done[i]) * 1000 for done, client in chosen for i, at in client.items()]
        return found, sum(len(done) - len(client) for done, client in chosen)

    rows = [(f"{watchers}", {0})]
    if others:
        rows += [
            (f"+{args.others}x{args.other_watchers}", set(range(1, len(others) + 1))),
            ("all", set(range(len(others) + 1))),
        ]
    for label, which in rows:
        found, missing = latencies(which)
        print(
            f"{label:>8} {len(found):>8} {statistics.median(found):>8.0f} "
            f"{percentile(found, 0.95):>8.0f} {max(found):>8.0f} "
            f"{cpu / wall:>10.2f} {clients / wall:>13.2f} {wall:>7.1f} {missing:>8}",
            flush=True,
        )
    print(f"         {noisy or 'other processes used under 10% of the machine'}", flush=True)
    LongTask.objects.filter(pk__in=[task.pk, *(o.pk for o in others)]).delete()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--work-ms", type=int, default=5)
    parser.add_argument("--watchers", type=int, nargs="+", default=[1, 200])
    parser.add_argument(
        "--others", type=int, default=0, help="other 10x10 quilts running beside, each watched"
    )
    parser.add_argument("--other-watchers", type=int, default=100, help="watchers of each other")
    parser.add_argument(
        "--server",
        choices=["gunicorn", "daphne"],
        default="gunicorn",
        help="gunicorn: make run's uvicorn workers (WEB_CONCURRENCY); daphne: one process",
    )
    add_scratch_args(parser)
    args = parser.parse_args(argv)
    session = Session(args, "longtask-bench-live-")

    def body(bench: Bench) -> None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = site_command(args.server, port)
        server = bench.spawn(args.server, command, bench.env(PORT=str(port)))
        wait_serving(base + "/", server)
        print(
            f"quilt {args.rows}x{args.cols}, {args.work_ms} ms a square, served by "
            f"{args.server}; logs in {bench.data_dir}"
        )
        print(
            "watchers   events   p50 ms   p95 ms   max ms  server cores  "
            "clients cores  wall s  missing"
        )
        for watchers in args.watchers:
            scenario(bench, base, server, watchers, args)

    # Like before the helpers were shared: this process's own log lines print, and no
    # sampler thread runs beside the websocket clients.
    session.run(body, quiet=False, sample=False)
    return session.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

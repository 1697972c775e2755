"""Latency of live subtask events on the embedded default, with 1 and with 200 watchers.

For each subtask of a quilt, the time from its recorded ``finished_at`` to the moment
its event reaches each websocket client; p50 and p95 over all clients, and the CPU
that daphne used meanwhile (in cores). Real daphne and real qcluster processes share
a fresh data directory; the clients run in this process.

    .venv/bin/python bench/live.py [--rows 20 --cols 20 --work-ms 5 --watchers 1 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(tempfile.mkdtemp(prefix="longtask-bench-live-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "quiltsite.settings"
os.environ["LONGTASK_DATA_DIR"] = str(DATA_DIR)
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

import longtask  # noqa: E402
from longtask.models import LongTask, SubTask  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the main PID (qcluster hangs on a signal to its group), then wait."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def wait_until_serving(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("daphne exited; see its log in " + str(DATA_DIR))
        try:
            with urllib.request.urlopen(base + "/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # a start-up poll, not a measurement
    raise SystemExit("daphne did not serve within a minute")


async def watch(url: str, origin: str, connected: asyncio.Event, arrivals: dict[int, float]) -> str:
    """Follow one task to its final status; record when each subtask's event arrived."""
    from websockets.asyncio.client import connect

    async with connect(url, origin=origin, proxy=None, max_size=None) as ws:
        await ws.recv()  # the snapshot
        connected.set()
        async for text in ws:
            now = time.time()
            frame = json.loads(text)
            if frame["type"] == "subtasks":
                for event in frame["events"]:
                    arrivals.setdefault(event["index"], now)
            elif frame["type"] == "status" and frame["final"]:
                return frame["status"]
    return "closed early"


async def run_watchers(url: str, origin: str, count: int, ready: Any) -> list[dict[int, float]]:
    arrivals: list[dict[int, float]] = [{} for _ in range(count)]
    events = [asyncio.Event() for _ in range(count)]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(watch(url, origin, events[i], arrivals[i])))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let earlier handshakes proceed
    await asyncio.gather(*(e.wait() for e in events))
    await asyncio.to_thread(ready)
    finals = await asyncio.gather(*tasks)
    if set(finals) != {"SUCCEEDED"}:
        raise SystemExit(f"unexpected final statuses: {set(finals)}")
    return arrivals


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def scenario(base: str, daphne: subprocess.Popen, watchers: int, args: argparse.Namespace) -> None:
    task = longtask.start("quilt", {"rows": args.rows, "cols": args.cols, "work_ms": args.work_ms})
    url = base.replace("http://", "ws://") + f"/ws/tasks/{task.pk}/"
    clusters: list[subprocess.Popen] = []
    measured: dict[str, float] = {}

    def start_workers() -> None:
        # Only once every client has its snapshot: each event is then a live one.
        measured["cpu"], measured["wall"] = cpu_seconds(daphne.pid), time.monotonic()
        manage = [sys.executable, "manage.py", "qcluster"]
        clusters.append(spawn(manage, DATA_DIR / "parents.log"))
        clusters.append(
            spawn(manage, DATA_DIR / "subtasks.log", Q_CLUSTER_NAME="longtask-subtasks")
        )

    try:
        arrivals = asyncio.run(run_watchers(url, base, watchers, start_workers))
        cpu = cpu_seconds(daphne.pid) - measured["cpu"]
        wall = time.monotonic() - measured["wall"]
    finally:
        for process in clusters:
            stop(process)
    task.refresh_from_db()
    finished = {
        index: at.timestamp()
        for index, at in SubTask.objects.filter(parent=task).values_list("index", "finished_at")
    }
    latencies = [
        (arrived - finished[index]) * 1000
        for client in arrivals
        for index, arrived in client.items()
    ]
    missing = sum(len(finished) - len(client) for client in arrivals)
    print(
        f"{watchers:>8} {len(latencies):>8} {statistics.median(latencies):>8.0f} "
        f"{percentile(latencies, 0.95):>8.0f} {max(latencies):>8.0f} "
        f"{cpu / wall:>10.2f} {wall:>7.1f} {missing:>8}",
        flush=True,
    )
    LongTask.objects.filter(pk=task.pk).delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--work-ms", type=int, default=5)
    parser.add_argument("--watchers", type=int, nargs="+", default=[1, 200])
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    daphne = spawn([*command, "quiltsite.asgi:application"], DATA_DIR / "daphne.log")
    try:
        wait_until_serving(base, daphne)
        print(f"quilt {args.rows}x{args.cols}, {args.work_ms} ms a square; logs in {DATA_DIR}")
        print("watchers   events   p50 ms   p95 ms   max ms  daphne cores  wall s  missing")
        for watchers in args.watchers:
            scenario(base, daphne, watchers, args)
    finally:
        stop(daphne)
    shutil.rmtree(DATA_DIR)  # kept, with the logs, only when a run fails


if __name__ == "__main__":
    main()

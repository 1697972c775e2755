"""`manage.py longtask top|stats`: the operations dashboard's numbers in a terminal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection

from longtask import display, stats
from longtask.management import cli

#: Clear the screen and go home (ANSI), before each frame of ``top`` on a terminal.
CLEAR = "\x1b[H\x1b[2J"
#: Eight heights of a terminal sparkline.
BARS = "▁▂▃▄▅▆▇█"


if TYPE_CHECKING:
    # The checker sees the command this is mixed into.
    _Command = BaseCommand
else:
    _Command = object


class OpsCommands(_Command):
    """The subcommands that show the system's health; mixed into the command."""

    def add_ops_arguments(self, sub: Any) -> None:
        top = sub.add_parser("top", help="Watch queues, workers, throughput and stuck tasks.")
        top.add_argument(
            "--interval", type=float, default=2.0, metavar="SECONDS", help="Between two frames."
        )
        stats_parser = sub.add_parser("stats", help="Print the dashboard's numbers once.")
        stats_parser.add_argument(
            "--json", dest="as_json", action="store_true", help="As one JSON document."
        )

    def handle_stats(self, *, as_json: bool, **options: Any) -> None:
        snapshot = stats.snapshot()
        if as_json:
            self.stdout.write(json.dumps(snapshot, indent=2))
        else:
            self.stdout.write(report(snapshot))

    def handle_top(self, *, interval: float, **options: Any) -> None:
        """Redraw every ``interval`` seconds on a terminal; print one frame otherwise.

        Ctrl-C is how one leaves it: exit 0.
        """
        if not self.stdout.isatty():
            self.stdout.write(report(stats.snapshot()))
            return
        interval = max(0.2, interval)
        try:
            while True:
                frame = report(stats.snapshot())
                self.stdout.write(f"{CLEAR}{frame}\n(every {interval:g} s; Ctrl-C to leave)")
                if not connection.in_atomic_block:  # a connection held long may be stale
                    close_old_connections()
                cli.pause(interval)
        except KeyboardInterrupt:
            self.stdout.write("")


def bars(values: list[int]) -> str:
    """A one-line sparkline of ``values`` in block characters."""
    top = max(values, default=0)
    if not top:
        return BARS[0] * len(values)
    return "".join(BARS[min(7, round(7 * value / top))] for value in values)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else display.duration_text(seconds)


def report(snapshot: dict[str, Any]) -> str:
    """The snapshot as plain text, one section per block (what ``top`` draws)."""
    lines = [f"longtask at {snapshot['at']}  (stale after {_age(snapshot['stale_after'])})", ""]
    hour, day = snapshot["series"]["hour"], snapshot["series"]["day"]
    lines.append(f"{'THROUGHPUT':10}  {'last hour, one bar a minute':60}  {'hour':>6}  {'day':>8}")
    for name in stats.SERIES:
        lines.append(f"{name:10}  {bars(hour[name])}  {sum(hour[name]):>6}  {sum(day[name]):>8}")
    lines += ["", f"{'QUEUE':12} {'READY':>7} {'DELAYED':>7} {'OLDEST':>10} {'RUNNING':>7}  LIMITS"]
    for queue in snapshot["queues"]:
        limits = []
        if queue["rate"]:
            limits.append(f"rate {queue['rate']:g}/s burst {queue['burst']}")
        if queue["max_concurrency"]:
            limits.append(f"{queue['concurrency_in_use']}/{queue['max_concurrency']} slots")
        lines.append(
            f"{queue['name']:12} {queue['ready']:>7} {queue['delayed']:>7} "
            f"{_age(queue['oldest_age_seconds']):>10} {queue['running']:>7}  "
            f"{', '.join(limits) or '-'}"
        )
    lines += ["", f"{'WORKER':30} {'HEARTBEAT':>10} {'TASKS':>5} {'SUBTASKS':>8}  RUNNING"]
    for worker in snapshot["workers"]:
        running = ", ".join(f"{kind} x{count}" for kind, count in worker["running"].items())
        silent = "" if worker["alive"] else " SILENT"
        lines.append(
            f"{worker['node'][:30]:30} {_age(worker['heartbeat_age_seconds']):>10} "
            f"{worker['tasks']:>5} {worker['subtasks']:>8}  {running}{silent}"
        )
    if not snapshot["workers"]:
        lines.append("(no worker runs anything)")
    lines += ["", "RUNNING LONGEST"]
    for task in snapshot["slowest"][:5]:
        lines.append(
            f"  {task['id']}  {task['kind']:12} {_age(task['running_seconds']):>10}  "
            f"on {task['worker']}"
        )
    counts = snapshot["stuck_counts"]
    lines += ["", f"STUCK  {counts['no_heartbeat']} without heartbeat, {counts['late']} late"]
    for task in snapshot["stuck"][:10]:
        lines.append(
            f"  {task['id']}  {task['kind']:12} {task['status']:9} {task['reason']} "
            f"for {_age(task['seconds'])}"
        )
    subtasks = snapshot["stuck_subtasks"]
    if subtasks["no_heartbeat"] or subtasks["late"]:
        lines.append(
            f"  subtasks: {subtasks['no_heartbeat']} without heartbeat, {subtasks['late']} late"
        )
    return "\n".join(lines)

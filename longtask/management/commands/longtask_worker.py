"""Run a django-q2 cluster for one longtask queue so that stopping it cannot hang.

Beside the cluster it sweeps every LONGTASK_SWEEP_INTERVAL seconds for work whose
worker died (``longtask.engine.recovery``).

A signal sent to qcluster's whole process group (what a terminal's Ctrl-C and
honcho's stop both do) has been seen to hang it, while SIGTERM to its main PID
alone stops it in about a second. This command starts ``qcluster`` in a process
group of its own and passes SIGINT/SIGTERM on to qcluster's main PID only; if it
has not stopped after ``--grace`` seconds its group is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from longtask.conf import settings as longtask_settings

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # If this wrapper is killed outright, qcluster is told to stop rather than orphaned.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Command(BaseCommand):
    help = "Run the django-q2 cluster of one longtask queue (LONGTASK_QUEUES)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            choices=sorted(longtask_settings.QUEUES),
            default=longtask_settings.DEFAULT_QUEUE,
            help="default: tasks and the split of fan-out tasks; subtasks: their subtasks.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="Seconds to wait for a clean stop before killing the cluster.",
        )

    def _sweep(self) -> None:
        # Housekeeping beside the cluster: re-queue work whose worker died.
        from django.db import close_old_connections

        from longtask.engine.recovery import sweep

        try:
            sweep()
        except Exception:  # a failed sweep is retried at the next interval
            logging.getLogger("longtask").exception("longtask sweep failed")
        finally:
            close_old_connections()

    def handle(self, *args: Any, queue: str, grace: float, **options: Any) -> None:
        from longtask.queues import cluster_for

        env = dict(os.environ)
        cluster = cluster_for(queue)
        if cluster:
            env["Q_CLUSTER_NAME"] = cluster
        else:
            env.pop("Q_CLUSTER_NAME", None)
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
        child = subprocess.Popen(
            [sys.executable, "-m", "django", "qcluster"],
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        stop_requested: list[float] = []

        def forward(signum: int, frame: object) -> None:
            if not stop_requested:
                stop_requested.append(time.monotonic())
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        next_sweep = time.monotonic() + longtask_settings.SWEEP_INTERVAL
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if not stop_requested and time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + longtask_settings.SWEEP_INTERVAL
                if stop_requested and time.monotonic() - stop_requested[0] > grace:
                    self.stderr.write(f"qcluster did not stop within {grace:g}s; killing it")
                    os.killpg(child.pid, signal.SIGKILL)
        # Reap anything of qcluster's group still around (it should be empty by now).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        sys.exit(code if code >= 0 else 0 if stop_requested else 1)

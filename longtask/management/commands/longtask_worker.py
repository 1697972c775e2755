"""Run and supervise the django-q2 cluster of one longtask queue; stopping it cannot hang.

Beside the cluster it sweeps every LONGTASK_SWEEP_INTERVAL seconds for work whose
worker died (``longtask.engine.recovery``).

Restarts. A django-q2 process killed while it holds one of the cluster's queue locks
(an idle worker reading the task pipe, the monitor, a worker stopped at its time
limit) leaves that lock held forever, and the cluster never runs another job
(django-q2 #23, #339). So when any process of the cluster dies (a worker, including
one replaced after a ``time_limit``, the monitor, the pusher, the sentinel), or when
jobs wait while every worker has been idle on the queue for LONGTASK_WEDGE_AFTER
seconds (default 10), the whole cluster is restarted: SIGTERM to qcluster, 1 s, then
its process group is killed and a new qcluster started, with one WARNING line saying
why. A death is acted on within 0.2 s; a restart took 1.3-2.5 s here. Jobs that were
running are left to the sweeper (re-queued after LONGTASK_STALE_AFTER).

Recycling is no death. django-q2 replaces a worker after Q_CLUSTER's ``recycle`` jobs
(or past ``max_rss``); that worker exits cleanly and holds no lock. It says so first,
on a pipe this command gives the cluster (LONGTASK_SUPERVISOR_FD), and the cluster goes
on without a restart: the jobs running beside it are not killed.

Stopping. A signal sent to qcluster's whole process group (what a terminal's Ctrl-C
and honcho's stop both do) has been seen to hang it, while SIGTERM to its main PID
alone stops it in about a second. This command starts ``qcluster`` in a process
group of its own and passes SIGINT/SIGTERM on to qcluster's main PID only; running
jobs may finish for ``--grace`` seconds, then the group is killed. It is killed at
once on a second signal, during a restart, and when the stop is stuck (every process
left idle on the queue for 2 s: a wedged cluster).
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
from django.db import close_old_connections

from longtask.conf import settings as longtask_settings
from longtask.dispatch.cluster import NOTES_FD, cluster_status, read_notes, ready_jobs
from longtask.dispatch.queues import cluster_for
from longtask.dispatch.supervisor import Supervisor
from longtask.engine.recovery import sweep

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
        try:
            sweep()
        except Exception:  # a failed sweep is retried at the next interval
            logging.getLogger("longtask").exception("longtask sweep failed")
        finally:
            close_old_connections()

    def handle(self, *args: Any, queue: str, grace: float, **options: Any) -> None:
        env = dict(os.environ)
        cluster = cluster_for(queue)
        if cluster:
            env["Q_CLUSTER_NAME"] = cluster
        else:
            env.pop("Q_CLUSTER_NAME", None)
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
        # The pipe on which a worker says django-q2 is recycling it (cluster.note_recycles).
        notes, note_writer = os.pipe()
        for end in (notes, note_writer):
            os.set_blocking(end, False)  # a worker never waits on it; the loop never does
        env[NOTES_FD] = str(note_writer)

        def start() -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "django", "qcluster"],
                env=env,
                pass_fds=(note_writer,),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

        next_sweep = time.monotonic() + longtask_settings.SWEEP_INTERVAL

        def tick() -> None:
            nonlocal next_sweep
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + longtask_settings.SWEEP_INTERVAL

        supervisor = Supervisor(
            start,
            grace=grace,
            wedge_after=longtask_settings.WEDGE_AFTER,
            status=lambda main_pid: cluster_status(cluster, main_pid),
            ready_jobs=lambda: ready_jobs(cluster),
            tick=tick,
            recycling=lambda: read_notes(notes),
        )
        signal.signal(signal.SIGTERM, lambda signum, frame: supervisor.request_stop())
        signal.signal(signal.SIGINT, lambda signum, frame: supervisor.request_stop())
        sys.exit(supervisor.run())

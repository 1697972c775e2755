"""What the worker command's supervisor asks of django-q2 about one cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from functools import partial
from typing import Any

from django.db import close_old_connections
from django_q.conf import Conf
from django_q.signals import post_execute_in_worker
from django_q.status import Stat
from django_q.worker import rss_check

from longtask import dispatch
from longtask.dispatch.supervisor import ClusterStatus


def cluster_status(cluster: str | None, main_pid: int) -> ClusterStatus | None:
    """django-q2's own report of the cluster whose qcluster runs as ``main_pid`` here."""
    host = socket.gethostname()
    try:
        stats = Stat.get_all(dispatch.dispatcher(cluster).broker)
    except Exception:  # the cache is down: no wedge can be told meanwhile
        logging.getLogger("longtask").exception("reading django-q2's cluster status failed")
        return None
    for stat in stats:
        if stat.pid == main_pid and stat.host == host and stat.workers:
            roles = dict.fromkeys(stat.workers, "worker")
            roles.update({stat.monitor: "monitor", stat.pusher: "pusher"})
            roles[stat.sentinel] = "sentinel"
            return ClusterStatus(tuple(stat.workers), stat.task_q_size, roles, stat.reincarnations)
    return None


def ready_jobs(cluster: str | None) -> int:
    """Jobs the cluster's broker would hand out now (not those delayed)."""
    try:
        return dispatch.depth(cluster).ready
    except Exception:  # the broker is down: that is no wedge of this cluster
        logging.getLogger("longtask").exception("counting the broker's ready jobs failed")
        return 0
    finally:
        close_old_connections()


#: The environment variable that gives a cluster's processes the write end of the pipe
#: on which a worker tells ``longtask_worker`` that it is being recycled.
NOTES_FD = "LONGTASK_SUPERVISOR_FD"

_jobs_here = 0


def note_recycles() -> None:
    """In a supervised cluster, have each worker say so before django-q2 recycles it.

    django-q2 replaces a worker after ``recycle`` jobs (or past ``max_rss``): the worker
    leaves its loop after putting its last result and exits cleanly, holding no lock,
    and the sentinel starts another. Without a word, ``longtask_worker`` would take that
    exit for a death and restart the whole cluster, killing the jobs running beside it.
    The note is written before the exit, so the supervisor has it when it sees the exit.
    """
    fd = os.environ.get(NOTES_FD, "")
    if fd.isdigit():
        post_execute_in_worker.connect(
            partial(_note_recycle, int(fd)), dispatch_uid="longtask-recycles", weak=False
        )


def _note_recycle(fd: int, sender: object, task: dict[str, Any], **kwargs: object) -> None:
    # Sent once per job by the worker loop (django_q/worker.py), which counts the same
    # jobs and makes the same test right after putting the result. A failed job is not
    # excused: a worker stopped at its time limit exits here too, and is restarted for.
    global _jobs_here
    _jobs_here += 1
    if task.get("success") and (_jobs_here == Conf.RECYCLE or rss_check()):
        with contextlib.suppress(OSError):  # a full pipe: the exit is taken for a death
            os.write(fd, f"recycle {os.getpid()}\n".encode())


def read_notes(fd: int) -> set[int]:
    """The PIDs of the workers that said they are being recycled since the last read."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    # Each note is one write of under PIPE_BUF bytes: whole, never interleaved.
    pids = set()
    for line in data.splitlines():
        word, _, pid = line.partition(b" ")
        if word == b"recycle" and pid.isdigit():
            pids.add(int(pid))
    return pids

"""What the worker command's supervisor asks of django-q2 about one cluster."""

from __future__ import annotations

import logging
import socket

from django.db import close_old_connections
from django_q.status import Stat

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

"""Run a django-q2 cluster and restart it whole when one of its processes dies or it wedges."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from longtask.dispatch.procfs import (
    cluster_processes,
    cpu_ticks,
    live_children,
    pipes,
    waits_on_queue,
)

logger = logging.getLogger("longtask")

#: Seconds between two looks at the cluster's processes: a death is acted on this late
#: at most (a scan of /proc took 2-4 ms here with 150 processes).
POLL_INTERVAL = 0.2
#: Seconds between two checks for a wedge (each reads django-q2's status from the cache
#: and, when every worker is idle, counts the broker's ready jobs).
WEDGE_CHECK_INTERVAL = 1.0
#: Seconds a cluster being restarted gets to stop after SIGTERM before its group is
#: killed: an idle cluster stopped in 0.3 s here; running jobs are not waited for (the
#: sweeper re-queues them), and a wedged cluster never stops by itself.
RESTART_GRACE = 1.0
#: Once a stop is asked for, every remaining cluster process idle on the cluster's
#: queues (none running a job) for this long means the stop is stuck: kill at once. A
#: healthy stop hands out its poison pills within 0.3 s (one broker poll of the pusher).
STOP_STALL = 2.0


@dataclass(frozen=True)
class ClusterStatus:
    """What django-q2 reports about a running cluster."""

    workers: tuple[int, ...]
    #: Jobs the pusher put on the cluster's task queue that no worker took yet.
    queued_locally: int
    #: Role of each process by PID ("worker", "monitor", "pusher", "sentinel").
    roles: dict[int, str]
    #: Processes the sentinel replaced (after a death, a timeout or a recycle).
    reincarnations: int = 0


class Supervisor:
    """Keep one qcluster running; restart it whole after a death or a wedge.

    ``start`` launches ``python -m django qcluster`` in a process group of its own (the
    group's id is its PID). ``status(main_pid)`` returns django-q2's own report of that
    cluster (None while unknown); ``ready_jobs()`` counts jobs its broker would hand
    out now; ``tick()`` runs between two looks (the sweeper); ``recycling()`` returns the
    workers that said, since the last call, that django-q2 is recycling them: their exit
    is no death.
    """

    def __init__(
        self,
        start: Callable[[], subprocess.Popen],
        *,
        grace: float,
        wedge_after: float,
        status: Callable[[int], ClusterStatus | None],
        ready_jobs: Callable[[], int],
        tick: Callable[[], None] = lambda: None,
        recycling: Callable[[], set[int]] = set,
    ) -> None:
        self._start = start
        self.grace = grace
        self.wedge_after = wedge_after
        self._status = status
        self._ready_jobs = ready_jobs
        self._tick = tick
        self._recycling_notes = recycling
        self.restarts = 0
        self.stop_requests = 0
        self._stop_at: float | None = None
        self._signalled = False

    # Signal handlers only count; the loop acts within POLL_INTERVAL.
    def request_stop(self) -> None:
        """Ask for a stop; a second request kills the cluster at once."""
        self.stop_requests += 1

    def run(self) -> int:
        """Supervise until qcluster exits; return the exit code for the command."""
        self._launch()
        while True:
            try:
                code = self.child.wait(POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                self._kill_group()  # reap anything of its group still around
                if self.stop_requests:
                    return code if code >= 0 else 0
                return code if code >= 0 else 1
            if self.stop_requests:
                self._stopping()
                continue
            reason = self._death() or self._wedge()
            if reason:
                self._restart(reason)
            else:
                self._tick()

    def _launch(self) -> None:
        self.child = self._start()
        self._watched: set[int] = set()
        self._roles: dict[int, str] = {}
        self._ticks: dict[int, int | None] = {}
        self._idle_since: float | None = None
        self._next_wedge_check = time.monotonic() + WEDGE_CHECK_INTERVAL
        #: Workers that said they are being recycled, and how many ever did.
        self._recycling: set[int] = set()
        self._recycled = 0

    def _kill_group(self, child: subprocess.Popen | None = None) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg((child or self.child).pid, signal.SIGKILL)

    def _death(self) -> str | None:
        """Why to restart if a process of the cluster is gone since the last look."""
        alive = cluster_processes(self.child.pid)
        gone = self._watched - alive
        self._watched |= alive
        if gone:
            # A worker's note is written before its exit: read now, it is there.
            self._take_notes()
            recycled = gone & self._recycling
            self._watched -= recycled
            gone -= recycled
        self._recycling &= alive  # a note whose worker went on (or is gone) is spent
        if not gone:
            return None
        pid = min(gone)
        return f"its {self._roles.get(pid, 'process')} pid={pid} died"

    def _wedge(self) -> str | None:
        """Why to restart if jobs wait while every worker has idled for wedge_after."""
        now = time.monotonic()
        if now < self._next_wedge_check:
            return None
        self._next_wedge_check = now + WEDGE_CHECK_INTERVAL
        status = self._status(self.child.pid)
        if status is None or not status.workers:
            self._idle_since = None
            return None
        self._roles.update(status.roles)
        self._take_notes()
        if status.reincarnations > self._recycled:  # a death too short for the scans to see
            return f"django-q2 replaced {status.reincarnations - self._recycled} of its processes"
        ticks = {pid: cpu_ticks(pid) for pid in status.workers}
        idle = self._all_idle(status.workers, ticks)
        self._ticks = ticks
        if idle and (status.queued_locally or self._ready_jobs()):
            self._idle_since = self._idle_since or now
        else:
            self._idle_since = None
            return None
        if now - self._idle_since < self.wedge_after:
            return None
        return f"jobs waited while every worker was idle for {now - self._idle_since:.1f}s"

    def _take_notes(self) -> None:
        notes = self._recycling_notes()
        self._recycling |= notes
        self._recycled += len(notes)

    def _all_idle(self, pids: tuple[int, ...] | set[int], ticks: dict[int, int | None]) -> bool:
        sentinels = live_children().get(self.child.pid, [])
        queue_pipes = {pipe for sentinel in sentinels for pipe in pipes(sentinel)}
        return bool(pids) and all(
            ticks[pid] is not None
            and ticks[pid] == self._ticks.get(pid)
            and waits_on_queue(pid, queue_pipes)
            for pid in pids
        )

    def _restart(self, reason: str) -> None:
        """Stop the cluster (SIGTERM, then kill its group after RESTART_GRACE); start anew.

        The new qcluster starts while the old one stops: its first 1-2 s are Django's
        start-up, and the old pusher stops taking jobs as soon as it gets SIGTERM.
        """
        began = time.monotonic()
        logger.warning("longtask_worker pid=%s restarting its cluster: %s", os.getpid(), reason)
        old = self.child
        with contextlib.suppress(ProcessLookupError):
            old.send_signal(signal.SIGTERM)
        self.restarts += 1
        self._launch()
        while time.monotonic() - began < RESTART_GRACE and not self.stop_requests:
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.wait(0.05)
                break
        self._kill_group(old)
        old.wait()
        if self.stop_requests:  # mid-restart: nothing to finish, kill both at once
            self._kill_group()
            return
        logger.info(
            "longtask_worker pid=%s old cluster gone in %.2fs (restart %s)",
            os.getpid(),
            time.monotonic() - began,
            self.restarts,
        )

    def _stopping(self) -> None:
        """One step of a requested stop: forward it, or kill when stopping cannot end."""
        now = time.monotonic()
        if self._stop_at is None:
            self._stop_at = now
        if self.stop_requests > 1:
            self._kill_group()  # a second Ctrl-C
            return
        if not self._signalled:
            self._signalled = True
            self._stall_since: float | None = None
            self._ticks = {}
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGTERM)
            return
        if now - self._stop_at > self.grace:
            logger.warning("qcluster did not stop within %gs; killing it", self.grace)
            self._kill_group()
            return
        # The sentinel waits for its workers; if none runs a job, no pill will arrive.
        others = cluster_processes(self.child.pid) - set(live_children().get(self.child.pid, []))
        ticks = {pid: cpu_ticks(pid) for pid in others}
        stalled = self._all_idle(others, ticks)
        self._ticks = ticks
        if not stalled:
            self._stall_since = None
        elif self._stall_since is None:
            self._stall_since = now
        elif now - self._stall_since >= STOP_STALL:
            logger.warning("qcluster's stop is stuck (no job running); killing it")
            self._kill_group()

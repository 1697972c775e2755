"""``/metrics``: the dashboard's numbers in Prometheus' text format, for a scraper.

Guarded, never public: a staff session that may view every task (the dashboard's
rule), or ``Authorization: Bearer <token>`` equal to the ``LONGTASK_METRICS_TOKEN``
setting (compared in constant time). Anything else gets 403; without a token set,
only sessions get in.

**Multiprocess-safe by construction.** Nothing is counted in a process's memory: a
custom collector reads every value at scrape time from the database and the brokers
(``longtask.stats.snapshot()``, a fixed number of aggregate queries), so the web
processes and the workers, on any number of machines, need no shared directory
(prometheus_client's multiprocess mode) and no push gateway, and any web process gives
the same answer. The counters come from the rollup's totals rows (``TaskMinute`` at
``TOTALS``), which the state machine adds to in the transaction of each transition and
which are never pruned or deleted with tasks, so they only go up; they reset only if
the table is emptied by hand, which Prometheus' ``rate()`` treats as a counter reset.

The process's own metrics (prometheus_client's default registry: CPU, memory, GC of
this one web process) are left out: with several processes they would describe
whichever one answered.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from longtask import stats
from longtask.conf import settings
from longtask.web.dashboard import may_view


def bearer_ok(request: HttpRequest) -> bool:
    """The request carries ``Authorization: Bearer <LONGTASK_METRICS_TOKEN>``."""
    expected = settings.METRICS_TOKEN or ""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


class LongTaskCollector(Collector):
    """Builds every metric family from one ``stats.snapshot()`` per scrape."""

    def __init__(self, snapshot: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot if self.snapshot is not None else stats.snapshot()
        yield from _tasks(snap)
        yield from _queues(snap)
        yield from _workers(snap)


def _tasks(snap: dict[str, Any]) -> Iterator[Any]:
    active = GaugeMetricFamily(
        "longtask_tasks", "Tasks queued, running or retrying now.", labels=["kind", "status"]
    )
    for row in snap["active"]:
        active.add_metric([row["kind"], row["status"]], row["count"])
    yield active
    started = CounterMetricFamily(
        "longtask_tasks_started", "Tasks whose first run began.", labels=["kind"]
    )
    finished = CounterMetricFamily(
        "longtask_tasks_finished",
        "Tasks that ended (a retried task may end again).",
        labels=["kind", "status"],
    )
    retried = CounterMetricFamily(
        "longtask_tasks_retried",
        "Attempts scheduled again: after a failed attempt, or a user's retry.",
        labels=["kind"],
    )
    subtasks = CounterMetricFamily(
        "longtask_subtasks_finished",
        "Subtasks of fan-outs that finished; subtasks per second is rate() of it.",
        labels=["kind", "status"],
    )
    durations = HistogramMetricFamily(
        "longtask_task_run_seconds",
        "Seconds from a task's first start to its end.",
        labels=["kind"],
    )
    for row in snap["totals"]:
        kind = row["kind"]
        started.add_metric([kind], row["started"])
        for status in ("succeeded", "failed", "cancelled"):
            finished.add_metric([kind, status.upper()], row[status])
        retried.add_metric([kind], row["retried"])
        subtasks.add_metric([kind, "SUCCEEDED"], row["subtasks_done"] - row["subtasks_failed"])
        subtasks.add_metric([kind, "FAILED"], row["subtasks_failed"])
        buckets = [(str(float(bound)), count) for bound, count in row["run_buckets"]]
        durations.add_metric([kind], [*buckets, ("+Inf", row["runs"])], row["run_seconds"])
    yield from (started, finished, retried, subtasks, durations)
    stuck = GaugeMetricFamily(
        "longtask_stuck",
        "Tasks and subtasks past LONGTASK_STALE_AFTER: running without heartbeat, or late.",
        labels=["what", "reason"],
    )
    for reason, count in snap["stuck_counts"].items():
        stuck.add_metric(["tasks", reason], count)
    for reason, count in snap["stuck_subtasks"].items():
        stuck.add_metric(["subtasks", reason], count)
    yield stuck


def _queues(snap: dict[str, Any]) -> Iterator[Any]:
    depth = GaugeMetricFamily(
        "longtask_queue_jobs", "Jobs waiting in the queue's broker.", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "longtask_queue_oldest_job_age_seconds",
        "Age of the oldest job a worker could take now (0 when none waits).",
        labels=["queue"],
    )
    running = GaugeMetricFamily(
        "longtask_queue_running_jobs",
        "Task runs and subtasks running now on the queue.",
        labels=["queue"],
    )
    in_use = GaugeMetricFamily(
        "longtask_queue_concurrency_in_use",
        "Concurrency leases held (queues with max_concurrency).",
        labels=["queue"],
    )
    limit = GaugeMetricFamily(
        "longtask_queue_max_concurrency", "The queue's max_concurrency.", labels=["queue"]
    )
    rate = GaugeMetricFamily(
        "longtask_queue_rate_limit", "The queue's rate limit (jobs per second).", labels=["queue"]
    )
    for queue in snap["queues"]:
        name = queue["name"]
        depth.add_metric([name, "ready"], queue["ready"])
        depth.add_metric([name, "delayed"], queue["delayed"])
        oldest.add_metric([name], queue["oldest_age_seconds"] or 0.0)
        running.add_metric([name], queue["running"])
        if queue["max_concurrency"]:
            in_use.add_metric([name], queue["concurrency_in_use"] or 0)
            limit.add_metric([name], queue["max_concurrency"])
        if queue["rate"]:
            rate.add_metric([name], queue["rate"])
    yield from (depth, oldest, running, in_use, limit, rate)


def _workers(snap: dict[str, Any]) -> Iterator[Any]:
    heartbeat = GaugeMetricFamily(
        "longtask_worker_last_heartbeat_timestamp_seconds",
        "UNIX time of the node's latest heartbeat, for nodes running something.",
        labels=["node"],
    )
    running = GaugeMetricFamily(
        "longtask_worker_running_jobs",
        "Task runs and subtasks the node is running.",
        labels=["node"],
    )
    for worker in snap["workers"]:
        if worker["last_heartbeat"]:
            when = datetime.datetime.fromisoformat(worker["last_heartbeat"])
            heartbeat.add_metric([worker["node"]], when.timestamp())
        running.add_metric([worker["node"]], worker["tasks"] + worker["subtasks"])
    yield from (heartbeat, running)


def exposition(snapshot: dict[str, Any] | None = None) -> bytes:
    """The metrics in the text format, from ``snapshot`` (read now if not given)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LongTaskCollector(snapshot))
    return generate_latest(registry)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (bearer_ok(request) or may_view(request.user)):
        return HttpResponse(
            "Forbidden: a staff session or the metrics bearer token is needed.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)

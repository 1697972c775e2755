"""The operations dashboard, its numbers (longtask.stats), the counts behind them, and the CLI."""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import signal
import uuid
import xml.etree.ElementTree as ET

import pytest
from django.core.management import call_command
from django.db import close_old_connections, connection, transaction
from django.db.models import AutoField
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import longtask
from longtask import stats
from longtask.engine import states
from longtask.management import cli, ops
from longtask.models import TOTALS, LongTask, Status, SubTask, TaskMinute
from longtask.web.sparkline import sparkline
from tests import broker
from tests.conftest import user_with
from tests.helpers import claim, drain_queue, wait_for
from tests.processes import group_alive, qcluster

OPS = "longtask:ops"
SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    """Parse our own SVG (never untrusted input) as XML: it must be well-formed."""
    return ET.fromstring(markup)  # noqa: S314


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    yield from broker.emptied()


@pytest.fixture
def operator(django_user_model):
    """Staff who may view, retry and cancel every task."""
    return user_with(django_user_model, "operator", "change_longtask", is_staff=True)


def page(client, **params) -> str:
    response = client.get(reverse(OPS), params)
    assert response.status_code == 200
    return response.content.decode()


def stuck_run(kind: str = "test-count", seconds: float = 600) -> LongTask:
    """A task RUNNING under a token whose worker stopped beating ``seconds`` ago."""
    task = longtask.start(kind, {"n": 2})
    broker.clear()  # the worker took the job and died with it
    assert claim(task) is not None
    LongTask.objects.filter(pk=task.pk).update(
        heartbeat_at=timezone.now() - datetime.timedelta(seconds=seconds), worker="lost-node:1"
    )
    return task


# Access -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_dashboard_is_for_staff_who_may_view_every_task(
    client, django_user_model, staff, viewer, changer, operator
):
    url = reverse(OPS)
    response = client.get(url)
    assert response.status_code == 302 and "/login/" in response["Location"]
    for refused in (staff, changer, user_with(django_user_model, "nonstaff", "view_longtask")):
        client.force_login(refused)
        assert client.get(url).status_code == 403, refused.username
    client.force_login(viewer)
    html = page(client)
    assert "<h1>Operations</h1>" in html
    stuck_run()
    assert "Retry now" not in page(client)  # seen, not changeable
    client.force_login(operator)
    assert "Retry now" in page(client)


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_acting_from_the_dashboard_needs_the_change_permission(client, viewer, operator):
    task = stuck_run()
    retry_url = reverse("longtask:ops_retry", args=[task.pk])
    assert client.post(retry_url).status_code == 302  # to the login page
    client.force_login(viewer)
    assert client.post(retry_url).status_code == 403
    assert client.get(retry_url).status_code == 405
    task.refresh_from_db()
    assert task.status == Status.RUNNING
    client.force_login(operator)
    missing = reverse("longtask:ops_retry", args=[uuid.uuid4()])
    assert client.post(missing).status_code == 404


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_admin_index_links_to_the_dashboard(client, viewer, staff):
    client.force_login(viewer)
    assert reverse(OPS) in client.get(reverse("admin:index")).content.decode()
    client.force_login(staff)  # staff without the permission: no link
    assert reverse(OPS) not in client.get(reverse("admin:index")).content.decode()


# Sparklines ---------------------------------------------------------------------------


def test_a_sparkline_is_well_formed_svg_with_one_point_per_value():
    svg = parse(sparkline([0, 3, 1, 3], label="started <&> now", css_class="started"))
    assert svg.tag == f"{SVG}svg"
    assert svg.get("class") == "sparkline started"
    assert svg.find(f"{SVG}title").text == "started <&> now"
    points = [
        tuple(map(float, p.split(","))) for p in svg.find(f"{SVG}polyline").get("points").split()
    ]
    assert [x for x, _ in points] == [0.0, 80.0, 160.0, 240.0]
    ys = [y for _, y in points]
    assert ys[1] == ys[3] == 2.0 and ys[0] == 38.0  # the peaks at the top, zero at the bottom
    assert parse(sparkline([0, 0], label="idle")).find(f"{SVG}polyline") is not None
    assert parse(sparkline([], label="none")).find(f"{SVG}polyline").get("points") == ""


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_dashboard_draws_the_last_hour_and_day_as_sparklines_without_inline_style(
    client, viewer
):
    for n in range(3):
        longtask.start("test-count", {"n": n})
    longtask.start("test-boom", {})
    drain_queue()
    client.force_login(viewer)
    html = page(client)
    svgs = [parse(match) for match in re.findall(r"<svg .*?</svg>", html, re.DOTALL)]
    assert len(svgs) == 6  # started, succeeded, failed; per hour and per day
    classes = [svg.get("class") for svg in svgs]
    assert classes == [f"sparkline {name}" for name in ("started", "succeeded", "failed")] * 2
    hour = {svg.get("class").split()[1]: svg for svg in svgs[:3]}
    lengths = {len(svg.find(f"{SVG}polyline").get("points").split()) for svg in svgs[:3]}
    assert lengths == {60}
    assert {len(svg.find(f"{SVG}polyline").get("points").split()) for svg in svgs[3:]} == {96}
    # This minute's point is the highest of the hour (y up from the bottom).
    started = [p.split(",") for p in hour["started"].find(f"{SVG}polyline").get("points").split()]
    assert float(started[-1][1]) == 2.0 and {float(y) for _, y in started[:-1]} == {38.0}
    assert "Tasks failed in the last hour, per minute: 1 in all" in html
    assert "style=" not in html and "<script" not in html
    assert '<meta http-equiv="refresh" content="10">' in html


# Stuck tasks --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_a_run_without_heartbeat_is_listed_and_retried_from_the_dashboard(client, operator):
    task = stuck_run()
    fresh = stuck_run(seconds=1)  # beating recently: not stuck
    client.force_login(operator)
    html = page(client)
    assert f'data-task="{task.pk}"' in html and f'data-task="{fresh.pk}"' not in html
    assert "no heartbeat" in html
    response = client.post(reverse("longtask:ops_retry", args=[task.pk]))
    assert response.status_code == 303
    assert response["Location"].endswith(f"?done=retried&task={task.pk}#stuck")
    task.refresh_from_db()
    assert task.status == Status.RETRYING
    assert "WorkerLost" in task.history[-1]["error"]
    assert f'data-task="{task.pk}"' not in page(client)
    assert "queued again" in page(client, done="retried", task=str(task.pk))
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_a_queued_task_whose_job_was_lost_is_listed_and_dispatched_again(client, operator):
    task = longtask.start("test-count", {"n": 1})
    broker.clear()  # the job is lost
    LongTask.objects.filter(pk=task.pk).update(
        due_at=timezone.now() - datetime.timedelta(minutes=5)
    )
    client.force_login(operator)
    html = page(client)
    assert f'data-task="{task.pk}"' in html and "job lost" in html
    client.post(reverse("longtask:ops_retry", args=[task.pk]))
    assert broker.count() == 1
    assert f'data-task="{task.pk}"' not in page(client)
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_cancelling_a_stuck_run_from_the_dashboard_finishes_it(client, operator):
    task = stuck_run()
    client.force_login(operator)
    response = client.post(reverse("longtask:ops_cancel", args=[task.pk]))
    assert response.status_code == 303
    task.refresh_from_db()
    assert task.status == Status.CANCELLED  # not left waiting for a dead worker to stop


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_a_healthy_task_is_left_alone_by_a_stale_retry_form(client, operator):
    task = longtask.start("test-count", {"n": 1})
    client.force_login(operator)
    response = client.post(reverse("longtask:ops_retry", args=[task.pk]))
    assert response["Location"].endswith(f"?done=unchanged&task={task.pk}#stuck")
    task.refresh_from_db()
    assert task.status == Status.QUEUED and broker.count() == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_worker_s_task_is_listed_stuck_and_retried_from_the_dashboard(
    client, operator, tmp_path, settings
):
    settings.LONGTASK_STALE_AFTER = 1.5  # this process's view; the workers beat every 0.3 s
    client.force_login(operator)
    task = longtask.start("report", {"month": "2026-10", "work_ms": 300})
    log = tmp_path / "workers.log"

    def current() -> LongTask:
        close_old_connections()
        task.refresh_from_db()
        return task

    fast = {"LONGTASK_HEARTBEAT_INTERVAL": "0.3"}
    with qcluster(log, **fast) as doomed:  # no sweeper: nothing takes the task up by itself
        wait_for(lambda: current().status == Status.RUNNING, 60, "the run to start")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        wait_for(lambda: not group_alive(doomed.pid), 10, "the killed cluster to vanish")
    assert current().status == Status.RUNNING
    wait_for(lambda: f'data-task="{task.pk}"' in page(client), 30, "the task to be listed stuck")
    assert client.post(reverse("longtask:ops_retry", args=[task.pk])).status_code == 303
    assert current().status == Status.RETRYING
    with qcluster(log, **fast):
        wait_for(lambda: current().is_finished, 120, "the retried report to finish")
    assert task.status == Status.SUCCEEDED, log.read_text()[-3000:]
    assert task.attempts == 2
    close_old_connections()
    totals = TaskMinute.objects.get(minute=TOTALS, kind="report")
    assert (totals.started, totals.retried, totals.succeeded) == (1, 1, 1)


# Bounded cost -------------------------------------------------------------------------


def clone(row: object, n: int, **expressions: str) -> None:
    """Insert ``n`` copies of ``row`` in one statement, with SQL ``expressions`` for some
    columns (``seq`` counts 1..n): a recursive CTE, as SQLite and PostgreSQL both write it.

    ``bulk_create`` compiles every row's every column in Python (about 0.25 ms a task
    row: 25 s for 100,000; a parameter per column took a minute on PostgreSQL).
    """
    meta = row._meta
    quote = connection.ops.quote_name
    columns = [f.column for f in meta.concrete_fields if not isinstance(f, AutoField)]
    values = [expressions.get(column, f"t.{quote(column)}") for column in columns]
    sql = (
        # Only the model's own column names and the test's expressions are interpolated.
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s) "  # noqa: S608
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(c) for c in columns)}) "
        f"SELECT {', '.join(values)} FROM {quote(meta.db_table)} AS t, seq "
        f"WHERE t.{quote(meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [n, meta.pk.get_db_prep_value(row.pk, connection)])


def insert_finished(n: int) -> None:
    """About ``n`` finished tasks (one in ten failed), and ``n`` finished subtasks."""
    ended = timezone.now() - datetime.timedelta(hours=2)
    times = {"created_at": ended, "started_at": ended, "finished_at": ended, "heartbeat_at": ended}
    task = LongTask.objects.create(
        kind="test-squares", queue="default", status=Status.SUCCEEDED, attempts=1, **times
    )
    new_id = (
        "gen_random_uuid()" if connection.vendor == "postgresql" else "lower(hex(randomblob(16)))"
    )
    failed_every_10th = "CASE WHEN seq.i - (seq.i / 10) * 10 = 0 THEN 'FAILED' ELSE t.status END"
    clone(task, n - 1, id=new_id, status=failed_every_10th)
    del times["created_at"]
    subtask = SubTask.objects.create(
        parent=task, index=0, finish_seq=1, status=Status.SUCCEEDED, attempts=1, **times
    )
    clone(subtask, n, index="seq.i", finish_seq="seq.i + 1")


def full_scans(statements: list[tuple[str, object]]) -> list[str]:
    """Statements whose plan reads every row of the task or subtask table."""
    found = []
    with connection.cursor() as cursor:
        for sql, params in statements:
            if "longtask_longtask" not in sql and "longtask_subtask" not in sql:
                continue
            if connection.vendor == "sqlite":
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
                plan = [row[-1] for row in cursor.fetchall()]
                bad = [p for p in plan if re.fullmatch(r"SCAN longtask_(longtask|subtask)", p)]
            else:
                cursor.execute(f"EXPLAIN {sql}", params)
                plan = [row[0] for row in cursor.fetchall()]
                bad = [p for p in plan if re.search(r"Seq Scan on longtask_(longtask|subtask)", p)]
            if bad:
                found.append(f"{sql[:160]}: {bad}")
    return found


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_dashboard_metrics_and_stats_cost_as_many_queries_with_100k_finished_tasks(
    client, operator, settings
):
    settings.LONGTASK_METRICS_TOKEN = "scrape-token"
    client.force_login(operator)
    # Something in every section: counts in the rollup, a running fan-out with
    # subtasks, a stuck run, a lost job.
    longtask.start("test-count", {"n": 1})
    longtask.start("test-boom", {})
    drain_queue()
    fanout = longtask.start("test-squares", {"n": 3})
    broker.run_next()  # the split: its subtasks wait
    states.claim_subtasks(fanout.pk, 0, 0, None)
    stuck_run()
    late = longtask.start("test-count", {"n": 1})
    LongTask.objects.filter(pk=late.pk).update(due_at=timezone.now() - datetime.timedelta(hours=1))

    def cost() -> tuple[dict[str, int], list[tuple[str, object]]]:
        statements: list[tuple[str, object]] = []

        def keep(execute, sql, params, many, context):
            statements.append((sql, params))
            return execute(sql, params, many, context)

        counts = {}
        with connection.execute_wrapper(keep):
            for name, call in (
                ("stats", stats.snapshot),
                ("dashboard", lambda: client.get(reverse(OPS))),
                ("metrics", lambda: client.get("/metrics")),
                ("metrics-token", lambda: client.generic("GET", "/metrics", **BEARER)),
            ):
                with CaptureQueriesContext(connection) as queries:
                    result = call()
                assert getattr(result, "status_code", 200) == 200, name
                counts[name] = len(queries)
        return counts, statements

    insert_finished(10)
    small, _ = cost()
    insert_finished(100_000)
    assert LongTask.objects.filter(status__in=[Status.SUCCEEDED, Status.FAILED]).count() > 100_000
    assert SubTask.objects.filter(status=Status.SUCCEEDED).count() > 100_000
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    large, statements = cost()
    assert large == small
    assert small["stats"] <= 20, small
    assert full_scans(statements) == []


BEARER = {"HTTP_AUTHORIZATION": "Bearer scrape-token"}


# The counts behind the numbers ----------------------------------------------------------


def totals(kind: str = "test-count") -> dict[str, float]:
    row = TaskMinute.objects.filter(minute=TOTALS, kind=kind).values().first() or {}
    return {k: v for k, v in row.items() if k not in ("id", "minute", "kind")}


def minute_rows(kind: str = "test-count") -> int:
    return TaskMinute.objects.filter(kind=kind).exclude(minute=TOTALS).count()


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_each_transition_counts_once_in_its_minute_and_the_totals():
    task = longtask.start("test-count", {"n": 1})
    assert totals() == {}  # starting saves a row; its first run is what counts
    drain_queue()
    after = totals()
    assert (after["started"], after["succeeded"], after["runs"]) == (1, 1, 1)
    assert after["runs_le_1"] == after["runs_le_14400"] == 1
    minute = TaskMinute.objects.exclude(minute=TOTALS).get(kind="test-count")
    assert (minute.started, minute.succeeded) == (1, 1)
    assert states.claim(task.pk) is None  # a duplicate delivery counts nothing
    task.refresh_from_db()
    assert longtask.retry(task) is False  # succeeded: nothing to retry
    queued = longtask.start("test-count", {"n": 1})
    longtask.cancel(queued)
    assert totals()["cancelled"] == 1 and totals()["runs"] == 1  # never started: no run time
    longtask.retry(queued)
    drain_queue()
    after = totals()
    assert (after["started"], after["retried"], after["succeeded"]) == (2, 1, 2)


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_retries_failures_and_subtasks_are_counted():
    longtask.start("test-flaky", {"fail_times": 1})
    longtask.start("test-boom", {})
    drain_queue()
    assert totals("test-flaky")["retried"] == 1 and totals("test-flaky")["succeeded"] == 1
    assert totals("test-boom")["failed"] == 1
    longtask.start("test-squares-oneshot", {"n": 4, "fail_index": 2})
    drain_queue()
    squares = totals("test-squares-oneshot")
    assert squares["failed"] == 1  # fail_fast
    assert squares["subtasks_failed"] == 1 and squares["subtasks_done"] >= 1


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_a_transition_rolled_back_counts_nothing():
    task = longtask.start("test-count", {"n": 1})
    with pytest.raises(RuntimeError), transaction.atomic():
        states.claim(task.pk)
        raise RuntimeError("rolled back")
    assert totals() == {} and minute_rows() == 0
    task.refresh_from_db()
    assert task.status == Status.QUEUED


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_purging_tasks_leaves_the_totals():
    for _ in range(2):
        longtask.start("test-count", {"n": 1})
    drain_queue()
    before = totals()
    longtask.api.delete_finished(LongTask.objects.all())
    assert not LongTask.objects.exists() and totals() == before


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_purge_prunes_old_minutes_but_never_the_last_day_nor_the_totals():
    now = timezone.now().replace(second=0, microsecond=0)
    for days in (0, 0.5, 2, 40):
        TaskMinute.objects.create(
            minute=now - datetime.timedelta(days=days), kind="test-count", started=1
        )
    TaskMinute.objects.create(minute=TOTALS, kind="test-count", started=4)
    dry = run("purge", "--older-than", "1", "--dry-run")
    assert "Would delete 2 per-minute count row(s)" in dry
    assert minute_rows() == 4
    assert "Deleted 1 per-minute count row(s)" in run("purge", "--older-than", "30")
    assert "Deleted 1 per-minute count row(s)" in run("purge", "--older-than", "0")
    assert minute_rows() == 2 and totals()["started"] == 4


# The command line ---------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("longtask", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_top_prints_one_frame_when_not_on_a_terminal():
    stuck_run()
    longtask.start("test-count", {"n": 1})
    text = run("top", "--interval", "0.5")
    assert text.count("longtask at ") == 1 and "\x1b[" not in text
    for heading in ("THROUGHPUT", "QUEUE", "WORKER", "RUNNING LONGEST", "STUCK"):
        assert heading in text
    assert re.search(r"^default\s+1\s+0", text, re.M)  # one job ready on the default queue
    assert "STUCK  1 without heartbeat, 0 late" in text
    assert "lost-node:1" in text  # the silent worker


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_top_redraws_on_a_terminal_until_ctrl_c(monkeypatch):
    frames = []

    def interrupted(seconds: float) -> None:
        frames.append(seconds)
        if len(frames) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "pause", interrupted)
    out = Terminal()
    call_command("longtask", "top", "--interval", "0.5", stdout=out)  # no SystemExit: exit 0
    assert out.getvalue().count(ops.CLEAR) == 2 and frames == [0.5, 0.5]


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_stats_json_has_every_section():
    longtask.start("test-count", {"n": 1})
    drain_queue()
    document = json.loads(run("stats", "--json"))
    assert set(document) == {
        "at",
        "stale_after",
        "queues",
        "active",
        "workers",
        "series",
        "recent",
        "totals",
        "slowest",
        "stuck",
        "stuck_counts",
        "stuck_subtasks",
    }
    assert [q["name"] for q in document["queues"]] == ["default", "subtasks"]
    assert sum(document["series"]["hour"]["succeeded"]) == 1
    assert document["totals"][0]["kind"] == "test-count"
    assert SubTask.objects.count() == 0

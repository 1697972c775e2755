"""``/metrics``: guarded, in Prometheus' text format, and its counters move as tasks run."""

from __future__ import annotations

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

import longtask
from longtask import stats
from longtask.dispatch import concurrency, queues
from longtask.engine.states import tallies
from longtask.models import LongTask, TaskMinute
from tests import broker
from tests.conftest import user_with
from tests.helpers import drain_queue

TOKEN = "s3cret-scrape-token"


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered, settings):
    settings.LONGTASK_METRICS_TOKEN = TOKEN
    yield from broker.emptied()


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics (read with the token) by (name, sorted labels)."""
    response = client.get("/metrics", **bearer(TOKEN))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# Access -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_metrics_are_never_public(client, django_user_model, staff, viewer, settings):
    assert client.get("/metrics").status_code == 403
    for wrong in ("nope", TOKEN + "x", TOKEN[:-1], ""):
        assert client.get("/metrics", **bearer(wrong)).status_code == 403, wrong
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=TOKEN).status_code == 403
    assert client.get("/metrics", **bearer(TOKEN)).status_code == 200
    for refused in (staff, user_with(django_user_model, "reader", "view_longtask")):
        client.force_login(refused)  # staff without the permission; a viewer who is not staff
        assert client.get("/metrics").status_code == 403, refused.username
    client.force_login(viewer)
    assert client.get("/metrics").status_code == 200
    client.logout()
    settings.LONGTASK_METRICS_TOKEN = None  # no token set: no bearer gets in
    assert client.get("/metrics", **bearer("None")).status_code == 403
    assert client.get("/metrics", **bearer("")).status_code == 403
    assert client.post("/metrics", **bearer(TOKEN)).status_code in (403, 405)


# Content ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_counters_move_as_tasks_run(client):
    before = scrape(client)
    longtask.start("test-count", {"n": 2})
    longtask.start("test-count", {"n": 3})
    longtask.start("test-boom", {})
    longtask.start("test-flaky", {"fail_times": 1})
    queued = scrape(client)
    assert value(queued, "longtask_queue_jobs", queue="default", state="ready") == 4
    assert value(queued, "longtask_tasks", kind="test-count", status="QUEUED") == 2
    assert value(queued, "longtask_queue_oldest_job_age_seconds", queue="default") >= 0
    drain_queue()
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("longtask_tasks_started_total", kind="test-count") == 2
    assert moved("longtask_tasks_finished_total", kind="test-count", status="SUCCEEDED") == 2
    assert moved("longtask_tasks_finished_total", kind="test-boom", status="FAILED") == 1
    assert moved("longtask_tasks_retried_total", kind="test-flaky") == 1
    assert moved("longtask_tasks_finished_total", kind="test-flaky", status="SUCCEEDED") == 1
    assert moved("longtask_task_run_seconds_count", kind="test-count") == 2
    assert moved("longtask_task_run_seconds_bucket", kind="test-count", le="+Inf") == 2
    assert moved("longtask_task_run_seconds_bucket", kind="test-count", le="1.0") == 2
    assert value(after, "longtask_task_run_seconds_sum", kind="test-count") >= 0
    assert value(after, "longtask_queue_jobs", queue="default", state="ready") == 0
    assert value(after, "longtask_tasks", kind="test-count", status="QUEUED") == 0


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_subtasks_finished_is_a_counter_whose_rate_is_subtasks_per_second(client):
    longtask.start("test-squares-tolerant", {"n": 5, "fail_index": 3})
    drain_queue()
    samples = scrape(client)
    name = "longtask_subtasks_finished_total"
    assert value(samples, name, kind="test-squares-tolerant", status="SUCCEEDED") == 4
    assert value(samples, name, kind="test-squares-tolerant", status="FAILED") == 1


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_counters_never_go_back_when_tasks_are_deleted(client):
    for n in range(3):
        longtask.start("test-count", {"n": n})
    drain_queue()
    before = scrape(client)
    longtask.api.delete_finished(LongTask.objects.all())
    after = scrape(client)
    for name in ("longtask_tasks_started_total", "longtask_task_run_seconds_count"):
        assert value(after, name, kind="test-count") == value(before, name, kind="test-count") == 3


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_every_family_is_described_and_typed(client):
    longtask.start("test-count", {"n": 1})
    drain_queue()
    response = client.get("/metrics", **bearer(TOKEN))
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    expected = {
        "longtask_tasks": "gauge",
        "longtask_tasks_started": "counter",
        "longtask_tasks_finished": "counter",
        "longtask_tasks_retried": "counter",
        "longtask_subtasks_finished": "counter",
        "longtask_task_run_seconds": "histogram",
        "longtask_stuck": "gauge",
        "longtask_queue_jobs": "gauge",
        "longtask_queue_oldest_job_age_seconds": "gauge",
        "longtask_queue_running_jobs": "gauge",
        "longtask_queue_concurrency_in_use": "gauge",
        "longtask_queue_max_concurrency": "gauge",
        "longtask_queue_rate_limit": "gauge",
        "longtask_worker_last_heartbeat_timestamp_seconds": "gauge",
        "longtask_worker_running_jobs": "gauge",
    }
    assert {name: family.type for name, family in families.items()} == expected
    assert all(family.documentation for family in families.values())
    # Only what the database says: no process_* or python_* of whichever process answered.
    assert "process_cpu_seconds_total" not in response.content.decode()


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_queue_limits_and_leases_in_use_are_gauges(client, settings):
    settings.LONGTASK_QUEUES = {
        **settings.LONGTASK_QUEUES,
        "subtasks": {"cluster": "longtask-subtasks", "rate": "20/s", "max_concurrency": 3},
    }
    token = concurrency.acquire_slot(queues.get("subtasks"))
    samples = scrape(client)
    assert value(samples, "longtask_queue_max_concurrency", queue="subtasks") == 3
    assert value(samples, "longtask_queue_concurrency_in_use", queue="subtasks") == 1
    assert value(samples, "longtask_queue_rate_limit", queue="subtasks") == 20
    row = next(q for q in stats.snapshot()["queues"] if q["name"] == "subtasks")
    assert (row["rate"], row["burst"], row["concurrency_in_use"]) == (20, 20, 1)
    concurrency.release_slot(queues.get("subtasks"), token)
    assert value(scrape(client), "longtask_queue_concurrency_in_use", queue="subtasks") == 0


@pytest.mark.django_db
def test_a_count_cannot_be_negative():
    """The counters have no CHECK of their own (models.rollup): their one writer refuses."""
    with pytest.raises(ValueError, match="negative"):
        tallies.add("test-count", timezone.now(), succeeded=1, retried=-1)
    assert not TaskMinute.objects.exists()

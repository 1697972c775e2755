from __future__ import annotations

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

import longtask
from longtask import progress
from longtask.engine import run as runner
from longtask.models import LongTask
from longtask.web import drawings
from longtask.web.drawings import Drawings
from tests.helpers import claim
from tests.kinds import Count

pytestmark = pytest.mark.django_db


def status_url(task: LongTask) -> str:
    return reverse("longtask:status", args=[task.pk])


def json_url(task: LongTask) -> str:
    return reverse("longtask:status_json", args=[task.pk])


def test_index_lists_kinds_with_forms(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Monthly report" in html
    assert 'action="/tasks/new/report/"' in html
    assert "csrfmiddlewaretoken" in html


def test_valid_post_answers_303_to_the_status_page(client):
    response = client.post("/tasks/new/report/", {"month": "2026-10", "work_ms": "0"})
    assert response.status_code == 303
    task = LongTask.objects.get()
    assert response["Location"] == status_url(task)
    assert task.parameters == {"month": "2026-10", "work_ms": 0}
    assert task.owner is None


def test_logged_in_start_is_owned(client, user):
    client.force_login(user)
    client.post("/tasks/new/report/", {"month": "2026-10"})
    assert LongTask.objects.get().owner == user


@pytest.mark.parametrize(
    "data",
    [{}, {"month": "2026-13"}, {"month": "2026-10", "work_ms": "-5"}, {"month": "x" * 10_000}],
)
def test_invalid_post_rerenders_with_errors(client, data):
    response = client.post("/tasks/new/report/", data)
    assert response.status_code == 400
    assert b"errorlist" in response.content
    assert not LongTask.objects.exists()


def test_unknown_kind_is_404(client):
    assert client.get("/tasks/new/nope/").status_code == 404
    assert client.post("/tasks/new/nope/", {}).status_code == 404


def test_csrf_is_enforced():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/tasks/new/report/", {"month": "2026-10"})
    assert response.status_code == 403
    assert not LongTask.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        f"/tasks/{uuid.uuid4()}/",
        f"/tasks/{uuid.uuid4()}.json",
        f"/tasks/{uuid.uuid4()}/download/",
        "/tasks/not-a-uuid/",
        "/tasks/123.json",
    ],
)
def test_unknown_or_malformed_ids_are_404(client, path):
    assert client.get(path).status_code == 404


def test_queued_page_refreshes_without_javascript(client):
    task = longtask.start("report", {"month": "2026-10"})
    html = client.get(status_url(task)).content.decode()
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in html
    assert "Waiting: " in html  # for a worker: tests/test_waiting.py
    assert "<progress></progress>" in html  # no total yet: indeterminate


def test_running_page_shows_bar_message_elapsed_and_eta(client):
    task = longtask.start("report", {"month": "2026-10"})
    claim(task)
    progress.write_progress(
        task.pk,
        {
            "current": 5,
            "total": 20,
            "message": "Handling <2026-10-05>",
            "updated_at": timezone.now().timestamp(),
            "rate": 1.0,
        },
    )
    html = client.get(status_url(task)).content.decode()
    assert '<progress value="5" max="20">25%</progress>' in html
    assert "Handling &lt;2026-10-05&gt;" in html
    assert "Running for" in html
    assert "About 15 s left." in html
    assert 'http-equiv="refresh"' in html


def test_status_page_and_json_cost_one_query(client, django_assert_num_queries):
    task = longtask.start("report", {"month": "2026-10"})
    claim(task)  # while it waits, a read of its queue too: tests/test_waiting.py
    with django_assert_num_queries(1):
        assert client.get(status_url(task)).status_code == 200
    with django_assert_num_queries(1):
        assert client.get(json_url(task)).status_code == 200


def test_succeeded_page_shows_result_download_and_marks_viewed(client):
    task = longtask.start("report", {"month": "2026-02", "work_ms": 0})
    runner.run(str(task.pk))
    response = client.get(status_url(task))
    html = response.content.decode()
    assert 'http-equiv="refresh"' not in html
    assert '<table class="report">' in html and "2026-02-28" in html
    assert f'href="/tasks/{task.pk}/download/"' in html
    task.refresh_from_db()
    assert task.result_viewed_at is not None
    download = client.get(f"/tasks/{task.pk}/download/")
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv"
    assert download["Content-Disposition"] == 'attachment; filename="report-2026-02.csv"'
    lines = download.content.decode().splitlines()
    assert lines[0] == "date,invoices,net,vat,gross"
    assert lines[1].startswith("2026-02-01,") and lines[-1].startswith("total,")


def test_failed_page_shows_the_traceback_to_viewers_only(
    client, staff, viewer, test_kinds_registered
):
    task = longtask.start("test-boom", {})
    runner.run(str(task.pk))
    html = client.get(status_url(task)).content.decode()
    assert "RuntimeError: it broke on two lines" in html
    assert "Traceback" not in html
    client.force_login(staff)  # is_staff alone, no view_longtask
    assert "Traceback" not in client.get(status_url(task)).content.decode()
    client.force_login(viewer)
    assert "Traceback" in client.get(status_url(task)).content.decode()
    assert client.get(f"/tasks/{task.pk}/download/").status_code == 404


def test_cancelled_page(client):
    task = longtask.start("report", {"month": "2026-10"})
    longtask.cancel(task)
    assert "cancelled" in client.get(status_url(task)).content.decode()


def test_json_document_shape(client, test_kinds_registered):
    task = longtask.start("test-count", {"n": 4})
    doc = client.get(json_url(task)).json()
    assert doc == {
        "id": str(task.pk),
        "kind": "test-count",
        "name": None,
        "status": "QUEUED",
        "progress": {"current": 0, "total": None, "percent": None, "message": ""},
        "eta_seconds": None,
        "attempts": 0,
        "created_at": task.created_at.isoformat(),
        "started_at": None,
        "finished_at": None,
        "error": None,
        "status_url": f"http://testserver/tasks/{task.pk}/",
        "waiting": {"queue": "default", "jobs_ahead": doc["waiting"]["jobs_ahead"]},
    }
    assert isinstance(doc["waiting"]["jobs_ahead"], int)  # counted in tests/test_waiting.py
    runner.run(str(task.pk))
    doc = client.get(json_url(task)).json()
    assert doc["status"] == "SUCCEEDED"
    assert doc["result"] == {"counted": 4, "message": ""}
    assert doc["progress"] == {"current": 4, "total": 4, "percent": 100, "message": "step 4"}
    assert doc["eta_seconds"] is None and doc["finished_at"]


@pytest.mark.parametrize("suffix", ["", ".json", "/download/"])
def test_owned_tasks_are_hidden_from_others(client, user, other_user, staff, viewer, suffix):
    task = longtask.start("report", {"month": "2026-02", "work_ms": 0}, owner=user)
    runner.run(str(task.pk))
    url = f"/tasks/{task.pk}{suffix}" if suffix == ".json" else f"/tasks/{task.pk}{suffix or '/'}"
    assert client.get(url).status_code == 404  # anonymous
    client.force_login(other_user)
    assert client.get(url).status_code == 404
    client.force_login(staff)  # is_staff without view_longtask
    assert client.get(url).status_code == 404
    client.force_login(user)
    assert client.get(url).status_code == 200
    client.force_login(viewer)
    assert client.get(url).status_code == 200


def test_anonymous_task_is_visible_to_whoever_has_the_url(client, user):
    task = longtask.start("report", {"month": "2026-10"})
    client.force_login(user)
    assert client.get(status_url(task)).status_code == 200


def test_status_survives_a_lost_cache(client):
    from django.core.cache import cache

    task = longtask.start("report", {"month": "2026-10"})
    claim(task)
    cache.clear()
    assert client.get(status_url(task)).status_code == 200
    assert client.get(json_url(task)).json()["progress"]["percent"] is None


def test_a_succeeded_result_is_drawn_once_per_finish(client, test_kinds_registered, monkeypatch):
    """The page keeps display_result's HTML by task and finish time (web/drawings.py)."""
    drawn: list[str] = []

    def display_result(self, task):
        drawn.append(str(task.pk))
        return format_html("<p class='drawn'>{}</p>", task.result["counted"])

    monkeypatch.setattr(Count, "display_result", display_result)
    drawings.results.clear()
    task = longtask.start("test-count", {"n": 2})
    runner.run(str(task.pk))
    for _ in range(3):
        assert "class='drawn'" in client.get(status_url(task)).content.decode()
    assert len(drawn) == 1
    # Finished again (a retry's run) at a later time: drawn again, then kept again.
    LongTask.objects.filter(pk=task.pk).update(finished_at=timezone.now())
    client.get(status_url(task))
    client.get(status_url(task))
    assert len(drawn) == 2
    # A kind whose drawing depends on more than the task is drawn every time.
    monkeypatch.setattr(Count, "result_html_cached", False)
    client.get(status_url(task))
    client.get(status_url(task))
    assert len(drawn) == 4


def test_kept_drawings_stay_within_their_budget_least_recently_used_first():
    kept = Drawings(budget=10, largest=6)
    now = timezone.now()
    keys = [(uuid.uuid4(), now, "k") for _ in range(4)]
    kept.put(keys[0], "aaaa")
    kept.put(keys[1], "bbbb")
    assert kept.get(keys[0]) == "aaaa"  # now the most recent
    kept.put(keys[2], "cccc")  # 12 > 10: the least recent (keys[1]) goes
    assert (kept.get(keys[1]), kept.get(keys[0]), kept.get(keys[2])) == (None, "aaaa", "cccc")
    kept.put(keys[3], "x" * 7)  # larger than the largest kept: not kept
    assert kept.get(keys[3]) is None and len(kept) == 2

"""The LongTask admin as a staff operator sees it: list, detail, actions."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

import longtask
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.helpers import claim, drain_queue

CHANGELIST = "admin:longtask_longtask_changelist"


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    test_kinds.FAILING.clear()
    yield from broker.emptied()  # Redis keeps jobs across tests; the counts must not see them
    test_kinds.FAILING.clear()


def staff_with(django_user_model, username: str, *codenames: str):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="longtask", codename__in=codenames)
    )
    return user


@pytest.fixture
def operator(django_user_model):
    return staff_with(
        django_user_model, "ops", "view_longtask", "change_longtask", "delete_longtask"
    )


@pytest.fixture
def ops_client(client, operator):
    client.force_login(operator)
    return client


def change_url(task: LongTask) -> str:
    return reverse("admin:longtask_longtask_change", args=[task.pk])


def row(status: str = Status.SUCCEEDED, seconds: float = 2, **fields) -> LongTask:
    """Save a task row in ``status`` directly, as the workers would have left it."""
    now = timezone.now()
    active = status in (Status.QUEUED, Status.RETRYING)
    fields.setdefault("kind", "test-count")
    return LongTask.objects.create(
        queue=fields.pop("queue", "default"),
        status=status,
        started_at=None if active else now - datetime.timedelta(seconds=seconds),
        finished_at=now if status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED) else None,
        **fields,
    )


def act(client, action: str, *tasks: LongTask, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(t.pk) for t in tasks], **extra}
    return client.post(reverse(CHANGELIST), data, follow=True)


# List ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_shows_progress_owner_and_duration_and_filters_and_searches(ops_client, user):
    done = row(last_progress={"current": 3, "total": 4}, owner=user, name="three-quarters")
    failed = row(Status.FAILED, kind="test-boom", queue="slow", error="bad")
    queued = row(Status.QUEUED)
    html = ops_client.get(reverse(CHANGELIST)).content.decode()
    assert "75%" in html and "2.0 s" in html and "alice" in html and "three-quarters" in html
    for task in (done, failed, queued):
        assert change_url(task) in html
    # Filters: status, kind, queue, date.
    for query in ("status__exact=FAILED", "kind__exact=test-boom", "queue__exact=slow"):
        html = ops_client.get(f"{reverse(CHANGELIST)}?{query}").content.decode()
        assert change_url(failed) in html and change_url(done) not in html, query
    since = (timezone.now() - datetime.timedelta(days=1)).isoformat()
    html = ops_client.get(reverse(CHANGELIST), {"created_at__gte": since}).content.decode()
    assert change_url(done) in html
    # Search: id, name, owner.
    for term, found in [(str(failed.pk), failed), ("three-quarters", done), ("alice", done)]:
        html = ops_client.get(reverse(CHANGELIST), {"q": term}).content.decode()
        assert change_url(found) in html and change_url(queued) not in html, term
    # Sorting by duration happens in the database.
    assert ops_client.get(reverse(CHANGELIST), {"o": "-8"}).status_code == 200


@pytest.mark.django_db
def test_tasks_are_not_added_through_the_admin(ops_client):
    assert ops_client.get(reverse("admin:longtask_longtask_add")).status_code == 403


@pytest.mark.django_db
def test_django_q_admin_pages_stay_available(client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("boss", password="pw")
    client.force_login(admin_user)
    assert client.get("/admin/django_q/").status_code == 200


# Detail ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_shows_json_error_history_and_the_status_page_escaped(ops_client):
    task = row(
        Status.FAILED,
        parameters={"n": 2, "message": "<b>bold</b>"},
        error="RuntimeError: <script>alert(1)</script>",
        traceback="Traceback (most recent call last):\n  File <x>",
        attempts=2,
        history=[{"event": "failed", "attempt": 1, "error": "first <try>", "at": "2026-11-01"}],
        worker="node-b:4242",
    )
    html = ops_client.get(change_url(task)).content.decode()
    assert "node-b:4242" in html  # which machine ran the latest attempt
    assert f'<a href="/tasks/{task.pk}/">/tasks/{task.pk}/</a>' in html
    assert "&quot;message&quot;: &quot;&lt;b&gt;bold&lt;/b&gt;&quot;" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "Traceback (most recent call last):\n  File &lt;x&gt;</pre>" in html
    assert "first &lt;try&gt;" in html


@pytest.mark.django_db
def test_detail_says_how_many_jobs_wait_ahead_of_a_queued_task(
    ops_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        longtask.start("test-count", {"n": 1})
        task = longtask.start("test-count", {"n": 1})
    html = ops_client.get(change_url(task)).content.decode()
    # ORM: the jobs queued before its own; Redis: the queue's whole list.
    assert ("Waiting: 1 job ahead." if broker.on_orm() else "Waiting: 2 jobs ahead.") in html
    claim(task)
    assert "Waiting:" not in ops_client.get(change_url(task)).content.decode()


@pytest.mark.django_db
def test_worker_owned_fields_are_read_only(ops_client):
    task = row(Status.RUNNING, name="before", attempts=1)
    data = {
        "name": "after",
        "owner": "",
        "status": "SUCCEEDED",
        "attempts": "9",
        "error": "x",
        "worker": "forged",
    }
    response = ops_client.post(change_url(task), data)
    assert response.status_code == 302
    task.refresh_from_db()
    assert (task.name, task.status, task.attempts, task.error) == ("after", "RUNNING", 1, "")
    assert task.worker == ""


@pytest.mark.django_db
def test_a_40000_subtask_task_opens_fast_with_failed_subtasks_paginated(
    ops_client, django_assert_max_num_queries
):
    total, failed = 40_000, list(range(0, 40_000, 333))  # 121 failed subtasks
    task = row(
        kind="test-squares-tolerant",
        parameters={"n": total},
        result=list(range(total)),
        subtasks_total=total,
        subtasks_done=total,
        subtasks_failed=len(failed),
        split_done=True,
    )
    failing = set(failed)
    SubTask.objects.bulk_create(
        (
            SubTask(
                parent=task,
                index=i,
                status=Status.FAILED if i in failing else Status.SUCCEEDED,
                error=f"ValueError: no square for {i}" if i in failing else "",
                attempts=1,
                finish_seq=i + 1,
            )
            for i in range(total)
        ),
        batch_size=5000,
    )
    with django_assert_max_num_queries(12):
        response = ops_client.get(change_url(task))
    html = response.content.decode()
    assert len(html) < 150_000  # neither 40,000 subtasks nor the whole result
    assert "<td>39879</td><td>121</td>" in html  # succeeded and failed counts
    assert "Failed subtasks (121)" in html and "page 1 of 3" in html
    assert "no square for 0<" in html and "no square for 16650<" not in html
    assert "characters, cut)" in html
    html = ops_client.get(change_url(task), {"failed_page": "3"}).content.decode()
    assert "no square for 39960<" in html and "no square for 0<" not in html
    assert "?failed_page=2#subtasks" in html


# Actions -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_action_reruns_only_the_failed_subtasks_of_a_fan_out(ops_client):
    test_kinds.FAILING.update({3, 7})
    task = longtask.start("test-squares-switchable", {"n": 12})
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED
    html = ops_client.get(change_url(task)).content.decode()
    assert "square 3 is switched off" in html
    kept = dict(
        SubTask.objects.filter(parent=task, status=Status.SUCCEEDED).values_list(
            "index", "finished_at"
        )
    )
    test_kinds.FAILING.clear()
    response = act(ops_client, "retry_tasks", task)
    assert "1 task(s) retried." in response.content.decode()
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED, task.error
    assert task.result == [i * i for i in range(12)]
    for index, finished_at in kept.items():  # succeeded subtasks were not run again
        assert SubTask.objects.get(parent=task, index=index).finished_at == finished_at
    html = ops_client.get(change_url(task)).content.decode()
    assert "subtask 3 failed: ValueError: square 3 is switched off" in html  # in the history
    assert "No failed subtasks." in html


def act_on_page(client, action: str, task: LongTask):
    data = {"CHANGE_FORM-action": action, ACTION_CHECKBOX_NAME: str(task.pk)}
    return client.post(change_url(task), data, follow=True)


@pytest.mark.django_db(transaction=True)
def test_retry_and_cancel_from_the_task_page(ops_client):
    task = longtask.start("test-boom", {})
    html = ops_client.get(change_url(task)).content.decode()
    assert '<option value="cancel_tasks">Cancel this task</option>' in html
    assert '<option value="retry_tasks">Retry this task (if failed or cancelled)</option>' in html
    assert "delete_finished_tasks" not in html  # the page has its own delete link
    assert "1 task(s) cancelled." in act_on_page(ops_client, "cancel_tasks", task).content.decode()
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    assert "1 task(s) retried." in act_on_page(ops_client, "retry_tasks", task).content.decode()
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 1
    assert [event["event"] for event in task.history] == ["retried", "failed"]
    act_on_page(ops_client, "retry_tasks", task)
    html = act_on_page(ops_client, "retry_tasks", task).content.decode()
    assert "1 task(s) skipped: only failed or cancelled tasks can be retried." in html
    task.refresh_from_db()
    assert task.status == Status.QUEUED


@pytest.mark.django_db
def test_cancel_action_cancels_queued_tasks_and_asks_running_ones_to_stop(ops_client):
    queued, running, done = row(Status.QUEUED), row(Status.RUNNING), row()
    html = act(ops_client, "cancel_tasks", queued, running, done).content.decode()
    assert "1 task(s) cancelled." in html
    assert "1 running task(s) asked to stop at their next progress report." in html
    assert "1 task(s) skipped: already finished." in html
    for task in (queued, running, done):
        task.refresh_from_db()
    assert (queued.status, running.status, done.status) == (
        Status.CANCELLED,
        Status.RUNNING,
        Status.SUCCEEDED,
    )
    assert running.cancel_requested_at is not None


@pytest.mark.django_db
def test_delete_action_asks_then_deletes_finished_tasks_and_their_subtasks_only(ops_client):
    finished, running = row(Status.FAILED), row(Status.RUNNING)
    SubTask.objects.bulk_create([SubTask(parent=finished, index=i) for i in range(5)])
    html = act(ops_client, "delete_finished_tasks", finished, running).content.decode()
    assert "1 finished task and 5 subtasks will be deleted." in html
    assert "1 selected task still queued or running will be kept." in html
    assert LongTask.objects.count() == 2
    html = act(ops_client, "delete_finished_tasks", finished, running, post="yes").content.decode()
    assert "Deleted 1 task(s) and 5 subtask(s)." in html
    assert list(LongTask.objects.all()) == [running]
    assert not SubTask.objects.exists()


@pytest.mark.django_db
def test_the_delete_page_counts_subtasks_and_refuses_active_tasks(ops_client):
    finished, running = row(), row(Status.RUNNING)
    SubTask.objects.bulk_create([SubTask(parent=finished, index=i) for i in range(3)])
    delete = "admin:longtask_longtask_delete"
    html = ops_client.get(reverse(delete, args=[finished.pk])).content.decode()
    assert "Sub tasks: 3" in html
    assert ops_client.get(reverse(delete, args=[running.pk])).status_code == 403
    assert ops_client.post(reverse(delete, args=[finished.pk]), {"post": "yes"}).status_code == 302
    assert list(LongTask.objects.all()) == [running]


@pytest.mark.django_db
def test_actions_need_the_model_permissions(client, django_user_model):
    viewer = staff_with(django_user_model, "viewer", "view_longtask")
    client.force_login(viewer)
    failed = row(Status.FAILED)
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert "retry_tasks" not in html and "delete_finished_tasks" not in html
    act(client, "retry_tasks", failed)
    failed.refresh_from_db()
    assert failed.status == Status.FAILED
    assert "retry_tasks" not in client.get(change_url(failed)).content.decode()
    act_on_page(client, "retry_tasks", failed)
    failed.refresh_from_db()
    assert failed.status == Status.FAILED

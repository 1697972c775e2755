"""Your tasks (/tasks/ and /tasks/live.json): whose tasks, pages, filters, cost, refresh."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longtask import progress
from longtask.conf import settings as longtask_settings
from longtask.guards.access import can_view, own_tasks, visible_tasks
from longtask.models import LongTask, Status
from longtask.web import yours
from tests.conftest import user_with

pytestmark = pytest.mark.django_db

REPORT = {"month": "2026-10", "work_ms": "0"}
REFRESH = re.compile(r'<noscript><meta http-equiv="refresh" content="\d+"></noscript>')


def row(kind: str = "report", status: str = Status.SUCCEEDED, **fields: Any) -> LongTask:
    """A task row as a worker would have left it (no worker runs here)."""
    now = timezone.now()
    values: dict[str, Any] = {"kind": kind, "status": status}
    if status != Status.QUEUED:
        values["started_at"] = now - datetime.timedelta(seconds=30)
    if status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
        values["finished_at"] = now
    if status == Status.SUCCEEDED:
        values["last_progress"] = {"current": 3, "total": 3, "message": "Done", "updated_at": 0}
    return LongTask.objects.create(**{**values, **fields})


def listed(response: Any) -> list[str]:
    """The task ids of the rows on a page, in order."""
    return re.findall(r'<tr data-task-id="([0-9a-f-]{36})"', response.content.decode())


def start_report(client: Any) -> str:
    response = client.post("/tasks/new/report/", REPORT)
    assert response.status_code == 303
    return response["Location"].split("/")[2]


# Whose tasks ---------------------------------------------------------------------------


def test_a_signed_in_user_sees_only_their_own_tasks(client, user, other_user):
    mine = [row(owner=user), row(owner=user, status=Status.RUNNING)]
    theirs = row(owner=other_user)
    anonymous = row()
    client.force_login(user)
    response = client.get("/tasks/")
    assert response.status_code == 200
    assert set(listed(response)) == {str(task.pk) for task in mine}
    html = response.content.decode()
    assert str(theirs.pk) not in html and str(anonymous.pk) not in html


def test_staff_who_may_read_every_task_still_list_only_their_own(client, django_user_model):
    viewer = user_with(django_user_model, "viewer", "view_longtask", is_staff=True)
    admin = django_user_model.objects.create_superuser("boss", password="pw-boss")
    someone = django_user_model.objects.create_user("someone", password="pw")
    theirs = row(owner=someone, status=Status.RUNNING)
    for staff in (viewer, admin):
        own = row(owner=staff)
        client.force_login(staff)
        assert listed(client.get("/tasks/")) == [str(own.pk)]
        assert client.get(f"/tasks/live.json?ids={theirs.pk}").json()["tasks"] == []
        # ...though the status page is theirs to read: the list is "yours", not "visible".
        assert client.get(theirs.get_absolute_url()).status_code == 200


def test_an_anonymous_session_sees_only_the_tasks_it_started(client):
    elsewhere = Client()  # another browser
    mine = [start_report(client), start_report(client)]
    theirs = start_report(elsewhere)
    not_started_here = row()  # anonymous, open by URL, but never started by this session
    assert listed(client.get("/tasks/")) == mine[::-1]  # newest first
    assert listed(elsewhere.get("/tasks/")) == [theirs]
    assert listed(Client().get("/tasks/")) == []
    assert str(not_started_here.pk) not in client.get("/tasks/").content.decode()


def test_a_remembered_id_that_is_not_open_by_url_is_never_listed(client, user):
    task_id = start_report(client)
    owned = row(owner=user)
    django_task = row(kind="task:tests.tasks_sample.noop_task")
    session = client.session
    session[yours.STARTED_SESSION_KEY] = [task_id, str(owned.pk), str(django_task.pk), "junk", 7]
    session.save()
    assert listed(client.get("/tasks/")) == [task_id]
    ids = f"{task_id},{owned.pk},{django_task.pk}"
    assert [r["id"] for r in client.get(f"/tasks/live.json?ids={ids}").json()["tasks"]] == [task_id]


def test_signing_in_shows_the_account_s_tasks_and_signing_out_forgets_the_session_s(client, user):
    anonymous_id = start_report(client)
    owned = row(owner=user)
    client.force_login(user)
    assert listed(client.get("/tasks/")) == [str(owned.pk)]
    client.post("/accounts/logout/")
    assert listed(client.get("/tasks/")) == []
    assert client.get(f"/tasks/{anonymous_id}/").status_code == 200  # still open by its URL


def test_a_session_remembers_its_last_hundred_starts():
    request = mock.Mock(session={})
    tasks = [mock.Mock(pk=uuid.uuid4(), owner_id=None) for _ in range(yours.REMEMBER_AT_MOST + 5)]
    for task in tasks:
        yours.remember(request, task)
    yours.remember(request, tasks[10])  # started again (a named task): moves to the end
    remembered = request.session[yours.STARTED_SESSION_KEY]
    assert len(remembered) == yours.REMEMBER_AT_MOST
    assert remembered[-1] == str(tasks[10].pk) and remembered.count(str(tasks[10].pk)) == 1
    assert str(tasks[0].pk) not in remembered and str(tasks[-1].pk) in remembered
    owned = mock.Mock(pk=uuid.uuid4(), owner_id=1)
    yours.remember(request, owned)
    assert str(owned.pk) not in request.session[yours.STARTED_SESSION_KEY]


def test_your_tasks_are_always_a_part_of_what_the_access_rule_lets_you_see(
    user, other_user, django_user_model
):
    viewer = user_with(django_user_model, "viewer", "view_longtask")
    tasks = [row(owner=user), row(owner=other_user), row(owner=viewer), row()]
    ids = [task.pk for task in tasks]
    for who in (user, other_user, viewer, AnonymousUser()):
        own = set(own_tasks(who, ids))
        assert all(can_view(who, task) for task in own)
        if who.is_authenticated:
            assert own <= set(visible_tasks(who))
            assert {task.owner_id for task in own} == {who.pk}
        else:
            assert own == {tasks[3]}


# Rows, pages and filters ---------------------------------------------------------------


def test_a_row_shows_name_kind_status_progress_time_and_links_to_its_page(client, user):
    running = row(owner=user, status=Status.RUNNING, name="october")
    record = {"current": 5, "total": 20, "message": "Handling 2026-10-05", "rate": 1.0}
    progress.write_progress(running.pk, {**record, "updated_at": timezone.now().timestamp()})
    client.force_login(user)
    html = client.get("/tasks/").content.decode()
    cells = html.split(f'data-task-id="{running.pk}"')[1].split("</tr>")[0]
    assert f'<a href="/tasks/{running.pk}/">october</a>' in cells
    assert "Monthly report" in cells and ">Running<" in cells
    assert '<progress max="100" value="25">' in cells and "Handling 2026-10-05" in cells
    assert re.search(r"running for 3\d s, about 1\d s left", cells)  # 30 s, 15 s, if quick


def test_fan_out_rows_count_their_subtasks_and_finished_rows_their_last_progress(client, user):
    counters = {"subtasks_total": 64, "subtasks_done": 16, "split_done": True}
    quilt = row(kind="quilt", owner=user, status=Status.RUNNING, **counters)
    done = row(owner=user)
    failed = row(owner=user, status=Status.FAILED, error="boom")
    client.force_login(user)
    data = client.get(f"/tasks/live.json?ids={quilt.pk},{done.pk},{failed.pk}").json()
    by_id = {task["id"]: task for task in data["tasks"]}
    assert by_id[str(quilt.pk)]["percent"] == 25
    assert by_id[str(quilt.pk)]["message"] == "16 of 64 subtasks done"
    assert by_id[str(done.pk)]["percent"] == 100 and by_id[str(done.pk)]["final"] is True
    assert by_id[str(failed.pk)]["status_label"] == "Failed"
    assert by_id[str(failed.pk)]["timing"] == "took 30 s"


def test_pages_of_twenty_newest_first_keep_the_filters(client, user):
    now = timezone.now()
    tasks = [row(owner=user, created_at=now - datetime.timedelta(minutes=n)) for n in range(45)]
    client.force_login(user)
    first = client.get("/tasks/?status=SUCCEEDED&utm=x")
    assert listed(first) == [str(task.pk) for task in tasks[:20]]
    assert 'href="?status=SUCCEEDED&amp;page=2"' in first.content.decode()
    assert "Page 1 of 3" in first.content.decode()
    assert listed(client.get("/tasks/?page=3")) == [str(task.pk) for task in tasks[40:]]
    # Not a page number, or past the end: the first or the last page, never an error.
    for page, expected in [("x", tasks[:20]), ("0", tasks[40:]), ("999", tasks[40:])]:
        response = client.get(f"/tasks/?page={page}")
        assert response.status_code == 200
        assert listed(response) == [str(task.pk) for task in expected]


def test_filters_by_status_and_kind(client, user):
    report = row(owner=user)
    running = row(owner=user, status=Status.RUNNING)
    quilt = row(kind="quilt", owner=user, status=Status.FAILED)
    client.force_login(user)
    assert listed(client.get("/tasks/?status=RUNNING")) == [str(running.pk)]
    assert listed(client.get("/tasks/?kind=quilt")) == [str(quilt.pk)]
    assert listed(client.get("/tasks/?kind=report&status=SUCCEEDED")) == [str(report.pk)]
    assert listed(client.get("/tasks/?kind=report&status=")) == [str(running.pk), str(report.pk)]
    assert "No tasks match these filters" in client.get("/tasks/?status=CANCELLED").content.decode()


@pytest.mark.parametrize(
    "query",
    [
        "status=BOGUS",
        "status=running",
        "kind=nope",
        "kind=task:os.system",
        "status=%00",
        "kind=" + "x" * 5000,
        "status=RUNNING&status=<script>",
    ],
)
def test_a_bad_filter_answers_400_with_the_reason(client, user, query):
    row(owner=user)
    client.force_login(user)
    response = client.get(f"/tasks/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    assert "is not one of the available choices" in html
    assert listed(response) == [] and "<script>" not in html.split("</head>")[1]


# Cost ---------------------------------------------------------------------------------


def many_rows(owner: Any, n: int) -> None:
    """n tasks of ``owner``: a third running plain tasks with live progress, a third
    running fan-outs, a third finished."""
    now = timezone.now()
    kinds = [
        ("report", Status.RUNNING, {}),
        ("quilt", Status.RUNNING, {"subtasks_total": 10, "subtasks_done": 3, "split_done": True}),
        ("report", Status.SUCCEEDED, {"finished_at": now, "last_progress": {"current": 1}}),
    ]
    tasks = [
        LongTask(
            kind=kind,
            status=status,
            owner=owner,
            started_at=now,
            created_at=now - datetime.timedelta(seconds=i),
            **fields,
        )
        for i, (kind, status, fields) in ((i, kinds[i % 3]) for i in range(n))
    ]
    LongTask.objects.bulk_create(tasks)
    for task in tasks:
        if task.kind == "report" and task.status == Status.RUNNING:
            progress.write_progress(task.pk, {"current": 1, "total": 4, "updated_at": 0})


def cost(client: Any, url: str) -> tuple[int, int, int]:
    """(queries, cache get_many calls, one-task progress reads) of one GET of ``url``."""
    cache = caches[longtask_settings.CACHE_ALIAS]
    with (
        CaptureQueriesContext(connection) as queries,
        mock.patch.object(cache, "get_many", wraps=cache.get_many) as get_many,
        mock.patch.object(progress, "read_progress", wraps=progress.read_progress) as get,
    ):
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), get_many.call_count, get.call_count


@pytest.mark.parametrize("n", [10, 200])
def test_a_page_costs_a_bounded_number_of_queries_and_one_cache_read(
    client, user, django_assert_max_num_queries, n
):
    many_rows(user, n)
    client.force_login(user)
    with django_assert_max_num_queries(4):  # session, user, count, the page's rows
        response = client.get("/tasks/")
    assert len(listed(response)) == min(n, yours.PAGE_SIZE)
    assert cost(client, "/tasks/")[1:] == (1, 0)  # one get_many, no one-task read
    ids = ",".join(listed(response))
    with django_assert_max_num_queries(3):  # session, user, the listed rows
        data = client.get(f"/tasks/live.json?ids={ids}").json()
    assert len(data["tasks"]) == min(n, yours.PAGE_SIZE)
    assert cost(client, f"/tasks/live.json?ids={ids}")[1:] == (1, 0)


def test_the_cost_does_not_grow_with_the_number_of_tasks(client, user):
    client.force_login(user)
    many_rows(user, 10)
    small = cost(client, "/tasks/"), cost(client, "/")
    many_rows(user, 190)
    assert (cost(client, "/tasks/"), cost(client, "/")) == small


def test_an_anonymous_page_costs_the_same_with_many_remembered_tasks(client):
    ids = [start_report(client) for _ in range(3)]
    small = cost(client, "/tasks/")
    session = client.session
    tasks = [row(status=Status.RUNNING) for _ in range(yours.REMEMBER_AT_MOST)]
    session[yours.STARTED_SESSION_KEY] = [str(task.pk) for task in tasks] + ids
    session.save()
    assert cost(client, "/tasks/") == small


# Live updates -------------------------------------------------------------------------


def test_the_meta_refresh_and_the_script_are_there_only_while_a_row_runs(client, user):
    client.force_login(user)
    running = row(owner=user, status=Status.RUNNING)
    html = client.get("/tasks/").content.decode()
    assert REFRESH.search(html) and "longtask/yours.js" in html
    LongTask.objects.filter(pk=running.pk).update(
        status=Status.SUCCEEDED, finished_at=timezone.now()
    )
    html = client.get("/tasks/").content.decode()
    assert not REFRESH.search(html) and "longtask/yours.js" not in html
    assert listed(client.get("/tasks/")) == [str(running.pk)]
    # Only this page's rows count: a running task on another page does not refresh this one.
    row(owner=user, status=Status.QUEUED, created_at=timezone.now() - datetime.timedelta(days=1))
    for _ in range(yours.PAGE_SIZE):
        row(owner=user)
    assert not REFRESH.search(client.get("/tasks/").content.decode())
    assert REFRESH.search(client.get("/tasks/?page=2").content.decode())


def test_the_page_has_no_inline_script_or_style(client, user):
    client.force_login(user)
    row(owner=user, status=Status.RUNNING, name="<script>alert(1)</script>")
    response = client.get("/tasks/")
    html = response.content.decode()
    assert "style=" not in html and "&lt;script&gt;alert(1)" in html
    for attributes in re.findall(r"<script\b([^>]*)>", html):
        assert "src=" in attributes
    assert "unsafe-inline" not in response["Content-Security-Policy"]


def test_the_json_shows_the_listed_rows_that_are_yours(client, user, other_user):
    mine = row(owner=user, status=Status.RUNNING)
    theirs = row(owner=other_user, status=Status.RUNNING)
    anonymous = row(status=Status.RUNNING)  # open by URL, but not started by this session
    missing = uuid.uuid4()
    ids = f"{mine.pk},{theirs.pk},{anonymous.pk},{missing}"
    assert client.get(f"/tasks/live.json?ids={ids}").json()["tasks"] == []
    client.force_login(user)
    response = client.get(f"/tasks/live.json?ids={ids}")
    assert response["Cache-Control"].startswith("max-age=0")
    data = response.json()
    assert [task["id"] for task in data["tasks"]] == [str(mine.pk)]
    assert data["tasks"][0]["status"] == "RUNNING" and data["tasks"][0]["final"] is False
    assert data["interval"] == longtask_settings.REFRESH_SECONDS
    assert client.get("/tasks/live.json").json()["tasks"] == []


@pytest.mark.parametrize(
    "ids",
    ["nope", "1,2", f"{uuid.uuid4()},x", ",".join(str(uuid.uuid4()) for _ in range(51)), "%00"],
)
def test_the_json_refuses_malformed_ids_with_400(client, ids):
    response = client.get("/tasks/live.json", {"ids": ids})
    assert response.status_code == 400 and "error" in response.json()


def test_the_json_answers_get_only(client):
    assert client.post("/tasks/live.json").status_code == 405


# The home page ------------------------------------------------------------------------


def test_the_home_page_shows_your_latest_tasks_and_links_to_all(client, user, other_user):
    now = timezone.now()
    mine = [row(owner=user, created_at=now - datetime.timedelta(minutes=n)) for n in range(8)]
    theirs = row(owner=other_user)
    assert "Your latest tasks" not in client.get("/").content.decode()  # none yet
    client.force_login(user)
    response = client.get("/")
    html = response.content.decode()
    assert listed(response) == [str(task.pk) for task in mine[: yours.RECENT_ON_HOME]]
    assert str(theirs.pk) not in html
    assert 'href="/tasks/">All your tasks</a>' in html
    assert not REFRESH.search(html)  # the start forms are never reloaded under the user


def test_an_anonymous_home_page_shows_the_session_s_tasks(client):
    task_id = start_report(client)
    response = client.get("/")
    assert listed(response) == [task_id]
    assert 'href="/tasks/">Your tasks</a>' in response.content.decode()

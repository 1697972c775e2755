"""Security: the one access rule on every surface, start permissions, abuse and size
limits, security headers, escaping, and the settings' safe defaults (see SECURITY.md)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

import longtask
from longtask import progress
from longtask.engine import run as runner
from longtask.guards.access import visible_tasks
from longtask.kinds import FanOutKind, Kind, RetryPolicy, registry
from longtask.models import LongTask, Status, SubTask
from quiltsite.asgi import application
from tests.kinds import CountForm
from tests.processes import ROOT

pytestmark = pytest.mark.django_db

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


class LoginKind(Kind):
    name = "test-login"
    form_class = CountForm
    login_required = True

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        return None


class PermissionKind(LoginKind):
    name = "test-permission"
    login_required = False
    permission = "longtask.change_longtask"


class BigResult(Kind):
    name = "test-big-result"
    retry = RetryPolicy(max_attempts=3)

    def run(self, task: Any, params: dict[str, Any]) -> Any:
        return {"text": "x" * 2000}


class BigSubtask(FanOutKind):
    name = "test-big-subtask"
    failure_policy = FanOutKind.TOLERATE
    subtask_retry = RetryPolicy(max_attempts=3, min_backoff=0.01)

    def split(self, params: dict[str, Any]) -> Any:
        yield from ({"size": size} for size in (10, 2000))

    def run_subtask(self, params: dict[str, Any]) -> Any:
        return "x" * params["size"]


EXTRA_KINDS = [LoginKind, PermissionKind, BigResult, BigSubtask]


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    for kind in EXTRA_KINDS:
        registry.register(kind)
    yield
    for kind in EXTRA_KINDS:
        registry.unregister(kind.name)


def report_row(**fields: Any) -> LongTask:
    now = timezone.now()
    result = {"month": "2026-10", "header": ["date"], "rows": [["2026-10-01"]]}
    defaults = {"status": Status.SUCCEEDED, "started_at": now, "finished_at": now}
    return LongTask.objects.create(kind="report", result=result, **{**defaults, **fields})


# Access ------------------------------------------------------------------------------

SURFACES = [
    ("get", "/tasks/{}/"),
    ("get", "/tasks/{}.json"),
    ("get", "/tasks/{}/subtasks.json?since=0"),
    ("get", "/tasks/{}/download/"),
    ("post", "/tasks/{}/cancel/"),
]


@pytest.mark.parametrize(("method", "url"), SURFACES)
def test_every_surface_hides_an_owned_task_from_others(client, user, other_user, method, url):
    task = report_row(owner=user)
    for who in (None, other_user):
        client.logout()
        if who:
            client.force_login(who)
        assert getattr(client, method)(url.format(task.pk)).status_code == 404
    client.force_login(user)
    assert getattr(client, method)(url.format(task.pk)).status_code in (200, 303)


@pytest.mark.parametrize(("method", "url"), SURFACES)
def test_is_staff_alone_grants_nothing_on_any_surface(client, user, staff, method, url):
    task = report_row(owner=user)
    client.force_login(staff)
    assert getattr(client, method)(url.format(task.pk)).status_code == 404


READS = [(method, url) for method, url in SURFACES if method == "get"]


@pytest.mark.parametrize(("method", "url"), READS)
def test_view_permission_reads_others_tasks_and_anyone_reads_anonymous_ones(
    client, user, viewer, method, url
):
    owned, anonymous = report_row(owner=user), report_row()
    client.force_login(viewer)
    assert getattr(client, method)(url.format(owned.pk)).status_code == 200
    client.logout()
    assert getattr(client, method)(url.format(anonymous.pk)).status_code == 200


def test_cancelling_others_tasks_needs_the_change_permission(client, user, viewer, changer):
    task = longtask.start("test-count", {"n": 1}, owner=user)
    client.force_login(viewer)
    assert 'action="/tasks/' not in client.get(f"/tasks/{task.pk}/").content.decode()
    assert client.post(f"/tasks/{task.pk}/cancel/").status_code == 403
    task.refresh_from_db()
    assert task.cancel_requested_at is None
    client.force_login(changer)
    assert f'action="/tasks/{task.pk}/cancel/"' in client.get(f"/tasks/{task.pk}/").content.decode()
    assert client.post(f"/tasks/{task.pk}/cancel/").status_code == 303
    task.refresh_from_db()
    assert task.status == Status.CANCELLED


def test_owners_superusers_and_anonymous_urls_may_cancel(client, user, django_user_model):
    root = django_user_model.objects.create_superuser("boss", password="pw-boss")
    own, other, anonymous = (
        longtask.start("test-count", {"n": 1}, owner=o) for o in (user, user, None)
    )
    client.force_login(user)
    assert client.post(f"/tasks/{own.pk}/cancel/").status_code == 303
    client.force_login(root)
    assert client.post(f"/tasks/{other.pk}/cancel/").status_code == 303
    client.logout()
    assert client.post(f"/tasks/{anonymous.pk}/cancel/").status_code == 303
    assert set(LongTask.objects.values_list("status", flat=True)) == {Status.CANCELLED}


def test_visible_to_lists_what_the_access_rule_shows(user, other_user, staff, viewer, changer):
    mine, theirs = report_row(owner=user), report_row(owner=other_user)
    report_row()  # anonymous: reachable by URL, never listed to others
    listed = {who: set(visible_tasks(who)) for who in (user, staff, viewer)}
    assert listed[user] == {mine}
    assert listed[staff] == set()  # is_staff alone: only their own (none)
    assert {mine, theirs} < listed[viewer] and len(listed[viewer]) == 3
    assert set(visible_tasks(changer)) == listed[viewer]
    assert not visible_tasks(AnonymousUser()).exists()


def test_cancel_by_another_user_changes_nothing(client, user, other_user):
    task = longtask.start("test-count", {"n": 1}, owner=user)
    client.force_login(other_user)
    assert client.post(f"/tasks/{task.pk}/cancel/").status_code == 404
    task.refresh_from_db()
    assert task.status == Status.QUEUED and task.cancel_requested_at is None


def ws_close_code(path: str, cookie: str = "", origin: str = "http://127.0.0.1") -> int | None:
    """Connect to the websocket; return the close code, or None if the handshake failed."""

    async def scenario() -> int | None:
        headers = [(b"host", b"127.0.0.1"), (b"origin", origin.encode())]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        ws = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await ws.connect(20)
        if not connected:
            return None
        while (message := await ws.receive_output(20))["type"] != "websocket.close":
            pass
        await ws.wait()
        return message.get("code", 1000)

    return asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_the_websocket_hides_an_owned_task_from_others(client, user, other_user, staff):
    task = report_row(owner=user)
    client.force_login(other_user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    assert ws_close_code(f"/ws/tasks/{task.pk}/", cookie) == 4404
    assert ws_close_code(f"/ws/tasks/{task.pk}/") == 4404
    client.force_login(staff)  # is_staff without view_longtask
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    assert ws_close_code(f"/ws/tasks/{task.pk}/", cookie) == 4404
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    assert ws_close_code(f"/ws/tasks/{task.pk}/", cookie) == 1000  # finished: snapshot, close


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example", "https://[::2]"]
)
def test_the_websocket_refuses_foreign_origins(origin):
    task = report_row()
    assert ws_close_code(f"/ws/tasks/{task.pk}/", origin=origin) is None


# Start permissions -------------------------------------------------------------------


def test_a_login_required_kind_sends_visitors_to_the_login_page(client, user):
    for response in (
        client.get("/tasks/new/test-login/"),
        client.post("/tasks/new/test-login/", {"n": 1}),
    ):
        assert response.status_code == 302
        assert response["Location"] == "/accounts/login/?next=/tasks/new/test-login/"
    assert "Log in</a> to start" in client.get("/").content.decode()
    client.force_login(user)
    assert client.post("/tasks/new/test-login/", {"n": 1}).status_code == 303
    assert LongTask.objects.get().owner == user


def test_a_kind_with_a_permission_refuses_users_without_it(client, user):
    client.force_login(user)
    response = client.post("/tasks/new/test-permission/", {"n": 1})
    assert response.status_code == 403 and b"You may not start" in response.content
    assert not LongTask.objects.exists()
    user.user_permissions.add(Permission.objects.get(codename="change_longtask"))
    client.force_login(type(user).objects.get(pk=user.pk))  # a fresh permission cache
    assert client.post("/tasks/new/test-permission/", {"n": 1}).status_code == 303


def run_cli(*args: str) -> str:
    out = io.StringIO()
    call_command("longtask", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def cli_fails(*args: str) -> CommandError:
    with pytest.raises(CommandError) as caught:
        run_cli(*args)
    return caught.value


def test_the_cli_checks_the_permission_of_the_owner_only(user):
    error = cli_fails("start", "test-permission", "n=1", "--owner", "alice")
    assert error.returncode == 1 and "may not start" in str(error)
    run_cli("start", "test-permission", "n=1")  # the operator alone is trusted
    assert LongTask.objects.get().owner is None


def test_admin_actions_need_the_model_permissions(client, staff, user):
    task = longtask.start("test-count", {"n": 1}, owner=user)
    staff.user_permissions.add(Permission.objects.get(codename="view_longtask"))
    client.force_login(staff)
    page = client.get("/admin/longtask/longtask/")
    assert page.status_code == 200 and b"cancel_tasks" not in page.content
    data = {"action": "cancel_tasks", "_selected_action": [str(task.pk)]}
    client.post("/admin/longtask/longtask/", data)
    task.refresh_from_db()
    assert task.status == Status.QUEUED


def test_the_admin_follows_the_same_rule(client, staff, user, django_user_model):
    task = longtask.start("test-count", {"n": 1}, owner=user)
    client.force_login(staff)  # is_staff alone: the admin shows no task
    assert client.get("/admin/longtask/longtask/").status_code == 403
    assert client.get(f"/admin/longtask/longtask/{task.pk}/change/").status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="change_longtask"))
    client.force_login(type(staff).objects.get(pk=staff.pk))
    data = {"action": "cancel_tasks", "_selected_action": [str(task.pk)]}
    client.post("/admin/longtask/longtask/", data)
    task.refresh_from_db()
    assert task.status == Status.CANCELLED


# Abuse limits ------------------------------------------------------------------------


@pytest.fixture
def strict(settings):
    settings.LONGTASK_STARTS_PER_MINUTE = 2
    settings.LONGTASK_MAX_ACTIVE_TASKS = None
    settings.LONGTASK_MAX_QUEUED_SUBTASKS = None
    return settings


def post_count(client: Any, **extra: Any) -> Any:
    return client.post("/tasks/new/test-count/", {"n": 1}, **extra)


def test_starts_per_minute_per_user_answer_429_with_the_reason(client, user, strict):
    client.force_login(user)
    assert [post_count(client).status_code for _ in range(2)] == [303, 303]
    refused = post_count(client)
    assert refused.status_code == 429 and refused["Retry-After"] == "60"
    assert b"at most 2 a minute" in refused.content
    assert LongTask.objects.count() == 2


def test_anonymous_starts_count_per_remote_addr_not_forwarded_for(client, strict):
    one = {"REMOTE_ADDR": "203.0.113.1"}
    assert [post_count(client, **one).status_code for _ in range(2)] == [303, 303]
    forged = {**one, "HTTP_X_FORWARDED_FOR": "198.51.100.9"}
    assert post_count(client, **forged).status_code == 429
    assert post_count(client, REMOTE_ADDR="203.0.113.2").status_code == 303


def test_anonymous_starts_are_limited_in_a_moving_window_across_a_minute_boundary(
    client, settings, monkeypatch
):
    settings.LONGTASK_STARTS_PER_MINUTE = 20
    settings.LONGTASK_MAX_ACTIVE_TASKS = None
    now = [(time.time() // 60 + 1) * 60 - 10]  # 10 s before a minute's boundary
    monkeypatch.setattr(time, "time", lambda: now[0])
    statuses = [post_count(client).status_code for _ in range(21)]
    assert statuses == [303] * 20 + [429]
    now[0] += 15  # 5 s into the next minute: a fixed window would start counting afresh
    refused = post_count(client)
    assert refused.status_code == 429
    assert 40 <= int(refused["Retry-After"]) <= 46  # when the first start leaves the window
    now[0] += 46  # 61 s after the first start: the window has room again
    assert post_count(client).status_code == 303
    assert LongTask.objects.count() == 21


def test_active_tasks_are_limited_per_user_and_per_ip(client, user, strict):
    strict.LONGTASK_STARTS_PER_MINUTE = None
    strict.LONGTASK_MAX_ACTIVE_TASKS = 1
    for login in (False, True):
        if login:
            client.force_login(user)
        assert post_count(client).status_code == 303
        refused = post_count(client)
        assert refused.status_code == 429 and b"at most 1 at once" in refused.content
        cancel_all()
        assert post_count(client).status_code == 303  # the finished one no longer counts
        cancel_all()


def cancel_all() -> None:
    LongTask.objects.update(status=Status.CANCELLED, finished_at=timezone.now())


def test_staff_are_exempt_unless_the_setting_says_otherwise(client, staff, strict):
    client.force_login(staff)
    assert {post_count(client).status_code for _ in range(3)} == {303}
    strict.LONGTASK_LIMITS_EXEMPT_STAFF = False
    assert post_count(client).status_code == 429


def test_queued_subtasks_cap_refuses_fan_out_starts_only(client, strict):
    strict.LONGTASK_STARTS_PER_MINUTE = None
    strict.LONGTASK_MAX_ACTIVE_TASKS = None
    strict.LONGTASK_MAX_QUEUED_SUBTASKS = 2
    assert client.post("/tasks/new/test-squares/", {"n": 3}).status_code == 303
    LongTask.objects.update(status=Status.RUNNING, started_at=timezone.now(), subtasks_total=3)
    refused = client.post("/tasks/new/test-squares/", {"n": 3})
    assert refused.status_code == 429 and b"Too many subtasks of yours" in refused.content
    assert post_count(client).status_code == 303


def test_one_visitors_backlog_refuses_nobody_else(client, user, strict):
    strict.LONGTASK_STARTS_PER_MINUTE = None
    strict.LONGTASK_MAX_ACTIVE_TASKS = None
    strict.LONGTASK_MAX_QUEUED_SUBTASKS = 2
    big = LongTask.objects.create(
        kind="test-squares", status=Status.RUNNING, started_at=timezone.now(), owner=user
    )
    LongTask.objects.filter(pk=big.pk).update(subtasks_total=40_000)
    client.force_login(user)
    assert client.post("/tasks/new/test-squares/", {"n": 3}).status_code == 429
    client.logout()
    assert client.post("/tasks/new/test-squares/", {"n": 3}).status_code == 303  # others start


def test_python_callers_are_not_limited(strict):
    strict.LONGTASK_STARTS_PER_MINUTE = 0
    for _ in range(3):
        longtask.start("test-count", {"n": 1, "message": "x" * 100_000})
    assert LongTask.objects.count() == 3


def test_the_cli_limits_non_staff_owners_with_exit_code_1(user, staff, strict):
    run_cli("start", "test-count", "n=1", "--owner", "alice")
    run_cli("start", "test-count", "n=1", "--owner", "alice")
    error = cli_fails("start", "test-count", "n=1", "--owner", "alice")
    assert error.returncode == 1 and "\n" not in str(error) and "a minute" in str(error)
    for _ in range(3):
        run_cli("start", "test-count", "n=1", "--owner", "root")
        run_cli("start", "test-count", "n=1")
    assert LongTask.objects.filter(owner=user).count() == 2


def test_a_cli_batch_over_the_limit_starts_nothing(user, strict, tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3)))
    error = cli_fails("batch", "test-count", str(path), "--owner", "alice")
    assert error.returncode == 1 and str(error).startswith("line 3: refused")
    assert not LongTask.objects.exists()


# Sizes -------------------------------------------------------------------------------


def test_parameters_over_the_limit_are_refused(client, settings, user):
    settings.LONGTASK_MAX_PARAMETERS_BYTES = 1024
    response = client.post("/tasks/new/test-count/", {"n": 1, "message": "é" * 300})
    assert response.status_code == 413 and b"over the 1 KiB limit" in response.content
    huge = client.post("/tasks/new/test-count/", {"n": 1, "message": "x" * 5000})
    assert huge.status_code == 413  # refused on Content-Length, before the form
    error = cli_fails("start", "test-count", "n=1", "message=" + "x" * 2000, "--owner", "alice")
    assert error.returncode == 2 and "over the 1 KiB limit" in str(error)
    assert not LongTask.objects.exists()


def test_a_result_over_the_limit_fails_at_once_with_a_clear_error(settings):
    settings.LONGTASK_MAX_RESULT_BYTES = 1024
    task = longtask.start("test-big-result")
    runner.run(str(task.pk))
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.attempts == 1
    assert task.error == "ResultTooLarge: result is 2012 bytes, over the 1 KiB limit"


@pytest.mark.django_db(transaction=True)
def test_a_subtask_or_gather_result_over_the_limit_fails(settings):
    from tests.helpers import drain_queue

    settings.LONGTASK_MAX_RESULT_BYTES = 1024
    task = longtask.start("test-big-subtask")
    drain_queue()
    big = SubTask.objects.get(parent=task, index=1)
    assert (big.status, big.attempts, big.result) == (Status.FAILED, 1, None)
    assert big.error.startswith("ResultTooLarge: result is 2002 bytes")
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.result == ["x" * 10, None]
    settings.LONGTASK_MAX_RESULT_BYTES = 2010  # each subtask fits, the gathered list not
    task = longtask.start("test-big-subtask")
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.error.startswith("gather: ResultTooLarge")


def test_progress_messages_are_truncated():
    task = longtask.start("test-count", {"n": 1})
    task.progress(1, 2, "x" * 100_000)
    assert len(task.progress_reporter.flush()["message"]) == progress.MESSAGE_MAX_LENGTH


# Headers, escaping and settings --------------------------------------------------------


def csp_of(response: Any) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";") if part.strip())


@pytest.mark.parametrize(
    "path", ["/", "/tasks/new/report/", "/nope/", "/admin/login/", "/admin/nope/"]
)
def test_security_headers_on_every_page(client, path):
    response = client.get(path)
    policy = csp_of(response)
    assert policy["script-src"] == "'self'"
    # Inline styles only on the admin's own pages.
    admin = path.startswith("/admin/")
    assert policy["style-src"] == ("'self' 'unsafe-inline'" if admin else "'self'")
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_admin_pages_render_under_the_csp_without_inline_script(client, staff):
    staff.is_superuser = True
    staff.save()
    client.force_login(staff)
    task = report_row(error=HOSTILE, parameters={"p": HOSTILE})
    change = f"/admin/longtask/longtask/{task.pk}/change/"
    for path in ("/admin/", "/admin/longtask/longtask/", change):
        response = client.get(path)
        assert response.status_code == 200 and "Content-Security-Policy" in response
        assert_no_inline_script(response.content.decode())


def assert_no_inline_script(html: str) -> None:
    for attributes in re.findall(r"<script\b([^>]*)>", html):
        assert "src=" in attributes or "application/json" in attributes, attributes
    assert not re.search(r"<[^>]+\son\w+\s*=", html), "inline event handler"
    assert "<script>alert" not in html and "<img src=x" not in html


@pytest.mark.parametrize("status", [Status.RUNNING, Status.SUCCEEDED, Status.FAILED])
def test_hostile_text_is_escaped_on_the_status_page(client, status):
    now = timezone.now()
    finished = now if status != Status.RUNNING else None
    task = LongTask.objects.create(
        kind="test-count",
        name=HOSTILE,
        status=status,
        started_at=now,
        finished_at=finished,
        parameters={"message": HOSTILE},
        result={"message": HOSTILE} if status == Status.SUCCEEDED else None,
        error=HOSTILE,
        last_progress={"current": 1, "total": 2, "message": HOSTILE, "updated_at": 0},
    )
    response = client.get(f"/tasks/{task.pk}/")
    html = response.content.decode()
    assert_no_inline_script(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "style=" not in html and "unsafe-inline" not in response["Content-Security-Policy"]


def test_status_js_inserts_text_never_html():
    source = (ROOT / "longtask" / "static" / "longtask" / "status.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink
    assert "textContent" in source


def settings_in_subprocess(tmp_path: Any, **env: str) -> dict[str, Any]:
    """Import the site's settings with a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LONGTASK_"))}
    code = (
        "import json, quiltsite.settings as s; "
        "print(json.dumps([s.DEBUG, s.SECRET_KEY, s.ALLOWED_HOSTS]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "LONGTASK_DATA_DIR": str(tmp_path), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    debug, key, hosts = json.loads(out)
    return {"debug": debug, "key": key, "hosts": hosts}


def test_settings_are_safe_by_default_and_read_from_the_environment(tmp_path):
    default = settings_in_subprocess(tmp_path)
    assert default["debug"] is False and len(default["key"]) >= 50
    assert default["hosts"] == ["127.0.0.1", "localhost", "[::1]"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert settings_in_subprocess(tmp_path)["key"] == default["key"]  # kept per install
    chosen = settings_in_subprocess(
        tmp_path, DJANGO_DEBUG="1", DJANGO_SECRET_KEY="k" * 60, DJANGO_ALLOWED_HOSTS="a.example"
    )
    assert chosen == {"debug": True, "key": "k" * 60, "hosts": ["a.example"]}
    assert "var/" in (ROOT / ".gitignore").read_text().split()  # the key stays out of git


#: What .env.example sets for a site behind a TLS-terminating proxy.
PRODUCTION = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "tasks.example.com",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto,https",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SESSION_COOKIE_SECURE": "1",
    "DJANGO_CSRF_COOKIE_SECURE": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
}


def check_deploy(tmp_path: Any, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "LONGTASK_")) and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={**base, "DJANGO_SETTINGS_MODULE": "quiltsite.settings"}
        | {"LONGTASK_DATA_DIR": str(tmp_path), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_deploy_is_clean_under_the_production_variables(tmp_path):
    done = check_deploy(tmp_path, **PRODUCTION)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
    documented = (ROOT / ".env.example").read_text()
    for name in PRODUCTION:
        assert f"# {name}=" in documented, name
    bare = check_deploy(tmp_path, DJANGO_ALLOWED_HOSTS="tasks.example.com")
    for warning in ("W004", "W008", "W012", "W016"):  # what the variables answer
        assert f"security.{warning}" in bare.stderr


def test_the_proxy_header_is_read_as_django_wants_it(tmp_path):
    code = "import quiltsite.settings as s; print(s.SECURE_PROXY_SSL_HEADER)"
    env = {
        "LONGTASK_DATA_DIR": str(tmp_path),
        "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto,https",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_a_culled_progress_cache_keeps_the_anonymous_limits(client, strict, tmp_path, settings):
    # Django's file cache drops entries when full; progress fills it, the limits must stay.
    strict.LONGTASK_STARTS_PER_MINUTE = None
    strict.LONGTASK_MAX_ACTIVE_TASKS = 1
    settings.CACHES = {
        "default": {
            "BACKEND": "longtask.jsoncache.JSONFileBasedCache",
            "LOCATION": tmp_path / "progress",
            "OPTIONS": {"MAX_ENTRIES": 5, "CULL_FREQUENCY": 1},  # a full cache empties
        },
        "limits": {
            "BACKEND": "longtask.jsoncache.JSONFileBasedCache",
            "LOCATION": tmp_path / "limits",
        },
    }
    settings.LONGTASK_LIMITS_CACHE_ALIAS = "limits"
    assert post_count(client).status_code == 303
    for n in range(20):
        progress.write_progress(f"00000000-0000-0000-0000-{n:012d}", {"current": n})
    assert post_count(client).status_code == 429  # still one active task of this visitor

"""Sign-in for people (/accounts/: login, logout, password change) and its abuse limits
(django-axes: failed sign-ins per account and per client address)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from axes.models import AccessAttempt
from axes.utils import reset as axes_reset
from django.conf import settings
from django.db.models import F

from quiltsite.report import ReportForm, last_month

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
LIMIT = settings.AXES_FAILURE_LIMIT
LOCKED = "Too many failed sign-ins"


def sign_in(client: Any, username: str, password: str, ip: str = "10.0.0.1", **extra: Any) -> Any:
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip, **extra)


def assert_locked(response: Any) -> None:
    assert response.status_code == 429, response.status_code
    html = response.content.decode()
    assert LOCKED in html and f"after {LIMIT} failed attempts" in html
    assert "Try again in 15 min" in html
    assert "_auth_user_id" not in response.wsgi_request.session


def assert_signed_in(response: Any, username: str) -> None:
    assert response.status_code == 302 and response["Location"] == "/", response.status_code
    assert response.wsgi_request.user.get_username() == username


# The pages ----------------------------------------------------------------------------


def test_the_login_page_is_in_the_site_s_style(client):
    response = client.get(LOGIN + "?next=/tasks/")
    html = response.content.decode()
    assert response.status_code == 200
    assert '<header class="site">' in html and "longtask/longtask.css" in html
    assert 'name="username"' in html and 'name="password"' in html
    assert 'name="next" value="/tasks/"' in html
    assert "style=" not in html and "<script>" not in html
    assert "unsafe-inline" not in response["Content-Security-Policy"]


def test_signing_in_goes_home_or_to_next_and_the_header_shows_the_user(client, user):
    assert_signed_in(sign_in(client, "alice", "pw-alice"), "alice")
    html = client.get("/").content.decode()
    assert '<span class="user">alice</span>' in html
    assert 'action="/accounts/logout/"' in html and ">Sign out</button>" in html
    assert 'href="/accounts/password_change/"' in html and "Sign in</a>" not in html
    client.post("/accounts/logout/")
    response = client.post(LOGIN, {"username": "alice", "password": "pw-alice", "next": "/tasks/"})
    assert response.status_code == 302 and response["Location"] == "/tasks/"
    # An outside "next" is ignored: no open redirect.
    client.post("/accounts/logout/")
    response = client.post(
        LOGIN, {"username": "alice", "password": "pw-alice", "next": "https://evil.example/"}
    )
    assert response["Location"] == "/"


def test_a_visitor_sees_a_sign_in_link_that_comes_back(client):
    html = client.get("/tasks/?status=RUNNING").content.decode()
    assert 'href="/accounts/login/?next=/tasks/%3Fstatus%3DRUNNING">Sign in</a>' in html
    assert "Sign out" not in html


def test_a_wrong_password_says_so_without_telling_which_part(client, user):
    response = sign_in(client, "alice", "wrong")
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_signing_out_takes_a_post(client, user):
    client.force_login(user)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.get("/").wsgi_request.user.is_authenticated
    response = client.post("/accounts/logout/")
    assert response.status_code == 200 and "You have signed out" in response.content.decode()
    assert not client.get("/").wsgi_request.user.is_authenticated


def test_changing_the_password(client, user):
    page = client.get("/accounts/password_change/")
    assert page.status_code == 302
    assert page["Location"] == "/accounts/login/?next=/accounts/password_change/"
    client.force_login(user)
    page = client.get("/accounts/password_change/")
    assert page.status_code == 200 and '<header class="site">' in page.content.decode()
    response = client.post(
        "/accounts/password_change/",
        {"old_password": "pw-alice", "new_password1": "a-new-long-pw-7", "new_password2": "x"},
    )
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    response = client.post(
        "/accounts/password_change/",
        {
            "old_password": "pw-alice",
            "new_password1": "a-new-long-pw-7",
            "new_password2": "a-new-long-pw-7",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/password_change/done/"
    assert "Password changed" in client.get(response["Location"]).content.decode()
    client.post("/accounts/logout/")
    assert sign_in(client, "alice", "pw-alice").status_code == 200  # the old one: refused
    assert_signed_in(sign_in(client, "alice", "a-new-long-pw-7"), "alice")


def test_the_admin_keeps_its_own_password_and_logout_pages(admin_client):
    html = admin_client.get("/admin/password_change/").content.decode()
    assert 'id="site-name"' in html  # the admin's template, not the site's
    assert 'id="site-name"' in admin_client.post("/admin/logout/").content.decode()


def test_the_report_form_defaults_to_last_month(client, monkeypatch):
    monkeypatch.setattr("quiltsite.report.timezone.localdate", lambda: datetime.date(2026, 1, 15))
    assert last_month() == "2025-12"
    assert ReportForm()["month"].value() == "2025-12"
    html = client.get("/").content.decode()
    assert re.search(r'name="month" value="2025-12"', html)


# Limits on failed sign-ins ------------------------------------------------------------


def test_failures_for_one_account_from_many_addresses_lock_that_account(client, user):
    for n in range(LIMIT - 1):
        assert sign_in(client, "alice", f"guess-{n}", ip=f"10.0.1.{n}").status_code == 200
    assert_locked(sign_in(client, "alice", "last-guess", ip="10.0.1.99"))
    # Locked: the right password is refused too, from any address...
    assert_locked(sign_in(client, "alice", "pw-alice", ip="10.0.9.9"))
    assert_locked(sign_in(client, "alice", "pw-alice", ip="192.0.2.1"))


def test_the_lock_of_one_account_leaves_the_others_alone(client, user, other_user):
    for n in range(LIMIT):
        sign_in(client, "alice", f"guess-{n}", ip=f"10.0.1.{n}")
    assert_signed_in(sign_in(client, "mallory", "pw-mallory", ip="10.0.2.1"), "mallory")


def test_failures_from_one_address_across_accounts_lock_that_address(client, user, other_user):
    for n in range(LIMIT - 1):
        assert sign_in(client, f"nobody-{n}", "guess", ip="10.0.3.3").status_code == 200
    assert_locked(sign_in(client, "mallory", "guess", ip="10.0.3.3"))
    assert_locked(sign_in(client, "alice", "pw-alice", ip="10.0.3.3"))
    # alice herself, from elsewhere, is not locked: only 1 failure was hers.
    assert_signed_in(sign_in(client, "alice", "pw-alice", ip="10.0.4.4"), "alice")


def test_a_success_in_between_does_not_clear_the_failures(client, user, other_user):
    # An attacker with an account of their own signs in between guesses at alice's.
    for n in range(LIMIT - 1):
        assert sign_in(client, "alice", f"guess-{n}", ip="10.0.5.5").status_code == 200
        assert_signed_in(sign_in(client, "mallory", "pw-mallory", ip="10.0.5.5"), "mallory")
        client.post("/accounts/logout/", REMOTE_ADDR="10.0.5.5")
    assert_locked(sign_in(client, "alice", "guess-last", ip="10.0.5.6"))


def test_the_lock_ends_after_the_cool_off(client, user):
    for n in range(LIMIT):
        sign_in(client, "alice", f"guess-{n}")
    assert_locked(sign_in(client, "alice", "pw-alice"))
    # Each refused attempt starts the cool-off again: age every attempt past it.
    cool_off = settings.AXES_COOLOFF_TIME
    AccessAttempt.objects.update(
        attempt_time=F("attempt_time") - cool_off + datetime.timedelta(seconds=5)
    )
    assert_locked(sign_in(client, "alice", "pw-alice"))  # 5 s short
    AccessAttempt.objects.update(
        attempt_time=F("attempt_time") - cool_off - datetime.timedelta(seconds=1)
    )
    assert_signed_in(sign_in(client, "alice", "pw-alice"), "alice")


def test_an_operator_can_lift_a_lock(client, user):
    for n in range(LIMIT):
        sign_in(client, "alice", f"guess-{n}", ip="10.0.6.6")
    assert_locked(sign_in(client, "alice", "pw-alice", ip="10.0.6.7"))
    assert axes_reset(username="alice") >= 1  # what `manage.py axes_reset_username alice` does
    assert_signed_in(sign_in(client, "alice", "pw-alice", ip="10.0.6.7"), "alice")


def test_the_admin_login_works_and_is_limited_too(client, django_user_model):
    django_user_model.objects.create_superuser("boss", password="pw-boss")
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "boss", "password": "pw-boss"}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
    client.post("/admin/logout/")
    for n in range(LIMIT - 1):
        response = client.post("/admin/login/", {"username": "boss", "password": f"guess-{n}"})
        assert response.status_code == 200
    response = client.post("/admin/login/", {"username": "boss", "password": "guess"})
    assert response.status_code == 429 and LOCKED in response.content.decode()
    response = client.post("/admin/login/", {"username": "boss", "password": "pw-boss"})
    assert response.status_code == 429

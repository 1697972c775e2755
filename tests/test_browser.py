"""The status page in a real browser (Debian's chromium, driven by Playwright).

The browser is never downloaded: `make test` installs Debian's chromium where it is
missing under CI (or LONGTASK_INSTALL_BROWSER=1). Without it these tests skip, unless
LONGTASK_REQUIRE_BROWSER=1 or CI=true, which make them fail.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from longtask.models import LongTask, Status
from tests.processes import ROOT
from tests.test_live import daphne, workers

# No ORM call while Playwright runs: its event loop lives in this thread, and Django
# refuses synchronous queries beside a running loop. Everything is checked through pages.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds; generous, for a small shared machine.
DEADLINE_MS = 60_000
ARTIFACTS = ROOT / "artifacts"
ROWS, COLS = 8, 8

# Records, from inside the page, what the live page showed before the final swap.
OBSERVER = """() => {
  const seen = (window.__seen = {maxPercent: 0, counts: [], maxShown: 0});
  const main = document.querySelector("main");
  const record = () => {
    const bar = main.querySelector(".progress progress");
    if (bar && bar.position >= 0) {
      seen.maxPercent = Math.max(seen.maxPercent, Math.floor((100 * bar.value) / bar.max));
    }
    const squares = main.querySelectorAll(".live .quilt > rect[fill]").length;
    if (seen.counts[seen.counts.length - 1] !== squares) seen.counts.push(squares);
    const shown = main.querySelector(".live .quilt-count .done");  // the quilt's caption
    if (shown) seen.maxShown = Math.max(seen.maxShown, parseInt(shown.textContent, 10));
  };
  new MutationObserver(record).observe(main, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
  record();
}"""


def browser_required() -> bool:
    return os.environ.get("LONGTASK_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true"


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Yield a headless Debian chromium under Playwright, or skip with the reason."""
    reason = None
    if not CHROMIUM.exists():
        reason = (
            "Debian's chromium is missing (/usr/bin/chromium): as root, run "
            "`LONGTASK_INSTALL_BROWSER=1 make test` "
            "or `apt-get install -y chromium chromium-driver`"
        )
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright is not installed (pip install -r requirements-dev.txt)"
    if reason:
        if browser_required():
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_until(page: Any, expression: str, timeout_ms: int = DEADLINE_MS) -> None:
    """Poll a JavaScript expression in the page until it is truthy, or fail at the deadline.

    Not ``page.wait_for_function``: Playwright evaluates its predicate with ``eval()`` inside
    the page, which the site's policy (``script-src 'self'``, no ``'unsafe-eval'``) refuses.
    ``page.evaluate`` goes through the DevTools protocol, which the policy does not govern.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_ms} ms: {expression}")
        page.wait_for_timeout(50)


def start_quilt(page: Any, base: str, work_ms: int) -> None:
    """Fill the quilt's start form on the index page and submit it."""
    page.goto(base + "/")
    form = page.locator('form[action="/tasks/new/quilt/"]')
    form.locator('[name="rows"]').fill(str(ROWS))
    form.locator('[name="cols"]').fill(str(COLS))
    form.locator('[name="work_ms"]').fill(str(work_ms))
    form.locator('button[type="submit"]').click()
    page.wait_for_url("**/tasks/*/")


def test_live_page_fills_the_quilt_and_shows_the_result_without_reload(tmp_path, chromium):
    errors: list[str] = []
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_page(viewport={"width": 900, "height": 1000})
        page.on("pageerror", lambda error: errors.append(str(error)))
        start_quilt(page, base, work_ms=60)
        assert page.locator("main .live .quilt > rect").count() == ROWS * COLS
        page.evaluate("window.__marker = 'still here'")
        page.evaluate(OBSERVER)
        with workers(tmp_path):  # only now: the page watches the whole run
            page.wait_for_selector("main .result .quilt", timeout=DEADLINE_MS)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-quilt.png"), full_page=True)
        seen = page.evaluate("window.__seen")
        assert page.evaluate("window.__marker") == "still here", "the page was reloaded"
        assert seen["maxPercent"] == 100, seen
        assert max(seen["counts"]) == ROWS * COLS, seen  # every square, live
        assert any(0 < n < ROWS * COLS for n in seen["counts"]), f"never partly filled: {seen}"
        assert seen["maxShown"] == ROWS * COLS, seen  # quilt.js counted them too
        assert page.locator("main .result .quilt > rect[fill]").count() == ROWS * COLS
        assert page.locator("main .task-status").inner_text().startswith("Succeeded")
        assert "Succeeded" in page.title()
        assert page.locator("noscript").count() == 1  # the head was not replaced
        assert page.locator("main").get_attribute("data-live") == "socket"
    assert errors == []


def test_without_websockets_the_page_polls_the_json_to_the_result(tmp_path, chromium):
    with daphne(tmp_path / "daphne.log") as base, workers(tmp_path):
        page = chromium.new_page()
        page.add_init_script("window.WebSocket = undefined;")  # as behind a proxy that drops them
        start_quilt(page, base, work_ms=80)
        page.evaluate("window.__marker = 'still here'")
        page.wait_for_selector("main .result .quilt", timeout=DEADLINE_MS)
        assert page.evaluate("window.__marker") == "still here", "the page was reloaded"
        assert page.locator("main").get_attribute("data-live") == "polling"
        assert page.locator("main .result .quilt > rect[fill]").count() == ROWS * COLS


def test_without_javascript_the_meta_refresh_reaches_the_result(tmp_path, chromium):
    with daphne(tmp_path / "daphne.log") as base, workers(tmp_path):
        context = chromium.new_context(java_script_enabled=False)
        page = context.new_page()
        loads: list[str] = []
        page.on("load", lambda: loads.append(page.url))
        start_quilt(page, base, work_ms=100)
        first = page.content()
        page.wait_for_selector("main .result .quilt", timeout=DEADLINE_MS)
        assert 'http-equiv="refresh"' in first or "Succeeded" in first
        assert page.locator("main .result .quilt > rect[fill]").count() == ROWS * COLS
        assert page.locator("main .task-status").inner_text().startswith("Succeeded")
        assert len(loads) >= 3, loads  # the form, the status page, at least one refresh
        context.close()


# Every CSP violation the page sees, recorded from inside it before any script runs.
CSP_RECORDER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__csp.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""


def test_the_live_quilt_needs_no_inline_style(tmp_path, chromium):
    console: list[str] = []
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_page()
        page.add_init_script(CSP_RECORDER)
        page.on("console", lambda message: console.append(message.text))
        start_quilt(page, base, work_ms=60)
        policy = page.evaluate(
            "fetch(location.href).then(r => r.headers.get('content-security-policy'))"
        )
        assert "unsafe-inline" not in policy and "style-src 'self'" in policy
        # quiltsite's quilt.css (the kind's stylesheet) whitens the squares not yet coloured.
        blank = "getComputedStyle(document.querySelector('main .live .quilt > rect')).fill"
        assert page.evaluate(blank) == "rgb(255, 255, 255)"
        with workers(tmp_path):
            # Running: some squares painted live, by quilt.js, before the end.
            page.wait_for_selector("main .live .quilt > rect[fill]", timeout=DEADLINE_MS)
            page.wait_for_selector("main .result .quilt", timeout=DEADLINE_MS)
        assert page.locator("main .result .quilt > rect[fill]").count() == ROWS * COLS
        assert page.evaluate("window.__csp") == []
    assert not [text for text in console if "Content Security Policy" in text], console


@pytest.fixture
def signed_in_user(django_user_model) -> tuple[str, str]:
    """A user who can log in through the admin's login page (created before Playwright runs)."""
    django_user_model.objects.create_user("walker", password="pw-walker-1", is_staff=True)
    return "walker", "pw-walker-1"


def test_after_a_logout_the_live_page_says_signed_out_and_stops(tmp_path, signed_in_user, chromium):
    username, password = signed_in_user
    with daphne(tmp_path / "daphne.log") as base:  # no workers: the task stays queued
        context = chromium.new_context()
        page = context.new_page()
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(base + "/admin/login/?next=/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url(base + "/")
        start_quilt(page, base, work_ms=0)
        page.wait_for_selector("main[data-live=socket]", timeout=DEADLINE_MS)
        other = context.new_page()  # another tab of the same browser logs out
        other.goto(base + "/admin/")
        other.click("#logout-form button")
        other.wait_for_url("**/logout/")
        page.wait_for_selector("main[data-live=signed-out] .signed-out", timeout=DEADLINE_MS)
        assert "Signed out" in page.locator("main .signed-out").inner_text()
        assert len(sockets) == 1, sockets  # the 4403 close was not followed by a reconnect
        context.close()


def test_a_kind_with_its_own_live_script_gets_every_frame(tmp_path, chromium, monkeypatch):
    # daphne and the workers install the tests app: they know tests.kinds.Framed, and find
    # its template and static files under tests/.
    monkeypatch.setenv("LONGTASK_TEST_APP", "1")
    errors: list[str] = []
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_page()
        page.add_init_script(CSP_RECORDER)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base + "/tasks/new/test-framed/")
        page.locator('[name="n"]').fill("4")
        page.locator('[name="work_ms"]').fill("100")
        page.locator('button[type="submit"]').click()
        page.wait_for_url("**/tasks/*/")
        assert page.locator("main .live ol.framed[data-status=QUEUED][data-total]").count() == 1
        style = "getComputedStyle(document.querySelector('main .live ol.framed')).listStyleType"
        assert page.evaluate(style) == "decimal-leading-zero"  # the kind's stylesheet
        assert page.locator("script[src*=quilt]").count() == 0
        wait_until(page, "window.framed && window.framed.types.includes('snapshot')")
        with workers(tmp_path):
            page.wait_for_selector("main .result", timeout=DEADLINE_MS)
        framed = page.evaluate("window.framed")
        assert framed["types"][0] == "snapshot", framed
        assert sorted(framed["indexes"]) == [0, 1, 2, 3], framed
        assert framed["statuses"][-1] == "SUCCEEDED", framed
        assert "swapped" in framed["types"], framed  # told when <main> was replaced
        assert '"framed": 4' in page.locator("main .result").inner_text()
        assert page.evaluate("window.__csp") == []
    assert errors == []


# Your tasks and sign-in ---------------------------------------------------------------
# Rows are made before Playwright starts: no ORM call while its event loop runs here.

WALKER_PASSWORD = "pw-walker-1"

# Records, from inside the page, every state the rows of the table went through.
ROWS_OBSERVER = """() => {
  const seen = (window.__rows = {});
  const table = document.querySelector("table.tasks");
  const record = () => {
    for (const row of table.querySelectorAll("tr[data-task-id]")) {
      const states = (seen[row.dataset.taskId] ??= []);
      const bar = row.querySelector("progress");
      const state = row.dataset.status + " " + (bar.hasAttribute("value") ? bar.value : "-");
      if (states[states.length - 1] !== state) states.push(state);
    }
  };
  new MutationObserver(record).observe(table, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
  record();
}"""


@pytest.fixture
def walker(django_user_model) -> tuple[str, Any]:
    """A user to sign in as, and another user's running task that must never show."""
    django_user_model.objects.create_user("walker", password=WALKER_PASSWORD)
    other = django_user_model.objects.create_user("stranger", password="pw-stranger-1")
    now = timezone.now()
    theirs = LongTask.objects.create(
        kind="report",
        owner=other,
        status=Status.RUNNING,
        started_at=now - datetime.timedelta(seconds=5),
        heartbeat_at=now,
        parameters={"month": "2026-10", "work_ms": 0},
    )
    return "walker", str(theirs.pk)


def sign_in_through_the_header(page: Any, base: str, username: str, password: str) -> None:
    """Sign in through the header's link and the login form, as a person would."""
    page.goto(base + "/")
    page.click("header.site a.sign-in")
    page.wait_for_url("**/accounts/login/**")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.sign-in button[type=submit]")
    page.wait_for_url(base + "/")


def start_own_quilt(page: Any, base: str, work_ms: int, rows: int = 8, cols: int = 8) -> str:
    """Start a quilt from the home page's form; return its id."""
    page.goto(base + "/")
    form = page.locator('form[action="/tasks/new/quilt/"]')
    form.locator('[name="rows"]').fill(str(rows))
    form.locator('[name="cols"]').fill(str(cols))
    form.locator('[name="work_ms"]').fill(str(work_ms))
    form.locator('button[type="submit"]').click()
    page.wait_for_url("**/tasks/*/")
    return page.url.rstrip("/").rsplit("/", 1)[1]


def row_selector(task_id: str, status: str | None = None) -> str:
    selector = f'table.tasks tr[data-task-id="{task_id}"]'
    return selector + (f'[data-status="{status}"]' if status else "")


def test_your_tasks_rows_update_live_with_one_poll_and_never_show_others(
    tmp_path, walker, chromium
):
    username, theirs = walker
    errors: list[str] = []
    with daphne(tmp_path / "daphne.log") as base:
        # Another browser, anonymous, starts a quilt of its own.
        stranger = chromium.new_context().new_page()
        anonymous_task = start_own_quilt(stranger, base, work_ms=0, rows=1, cols=1)

        context = chromium.new_context()
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        sign_in_through_the_header(page, base, username, WALKER_PASSWORD)
        slow = start_own_quilt(page, base, work_ms=250)
        quick = start_own_quilt(page, base, work_ms=100, rows=2, cols=2)

        polls: list[str] = []
        page.on(
            "request",
            lambda request: "/tasks/live.json" in request.url and polls.append(request.url),
        )
        page.goto(base + "/tasks/")
        sockets: list[str] = []  # from here on: the status pages opened one each
        page.on("websocket", lambda socket: sockets.append(socket.url))
        assert page.locator("table.tasks tr[data-task-id]").count() == 2
        assert page.locator(row_selector(slow, "QUEUED")).count() == 1  # no workers yet
        html = page.content()
        assert theirs not in html and anonymous_task not in html
        page.evaluate("window.__marker = 'still here'")
        page.evaluate(ROWS_OBSERVER)
        with workers(tmp_path):
            page.wait_for_selector(row_selector(quick, "SUCCEEDED"), timeout=DEADLINE_MS)
            page.wait_for_selector(row_selector(slow, "SUCCEEDED"), timeout=DEADLINE_MS)
        seen = page.evaluate("window.__rows")
        assert page.evaluate("window.__marker") == "still here", "the page was reloaded"
        # The slow quilt's row went through its states in place, its bar moving on the way.
        states = seen[slow]
        assert states[0] == "QUEUED -" and states[-1] == "SUCCEEDED 100", states
        assert any(state.startswith("RUNNING") for state in states), states
        assert page.locator(row_selector(slow) + " .timing").inner_text().startswith("took ")
        # One connection for the page: no websocket, and each poll asks about both rows.
        assert sockets == []
        assert polls and all(slow in url and quick in url for url in polls[:1]), polls
        assert all(theirs not in url and anonymous_task not in url for url in polls)
        # Finished: the polling stops.
        page.wait_for_selector("table.tasks[data-live=done]", timeout=DEADLINE_MS)
        assert theirs not in page.content()

        # The anonymous browser sees its own quilt only.
        stranger.goto(base + "/tasks/")
        assert stranger.locator("table.tasks tr[data-task-id]").count() == 1
        assert stranger.locator(row_selector(anonymous_task)).count() == 1
        context.close()
    assert errors == []


def test_your_tasks_without_javascript_refresh_until_the_end(tmp_path, walker, chromium):
    username, theirs = walker
    with daphne(tmp_path / "daphne.log") as base:
        context = chromium.new_context(java_script_enabled=False)
        page = context.new_page()
        sign_in_through_the_header(page, base, username, WALKER_PASSWORD)
        task_id = start_own_quilt(page, base, work_ms=150)
        loads: list[str] = []
        page.on("load", lambda: loads.append(page.url))
        page.goto(base + "/tasks/")
        assert 'http-equiv="refresh"' in page.content()
        assert page.locator(row_selector(task_id, "QUEUED")).count() == 1
        with workers(tmp_path):
            page.wait_for_selector(row_selector(task_id, "SUCCEEDED"), timeout=DEADLINE_MS)
        assert len(loads) >= 2, loads  # the list, then at least one refresh
        assert set(loads) == {base + "/tasks/"}
        assert 'http-equiv="refresh"' not in page.content()  # nothing runs: no more reloads
        assert theirs not in page.content()
        context.close()


def test_sign_in_and_sign_out_through_the_header(tmp_path, walker, chromium):
    username, _ = walker
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_page()
        page.goto(base + "/tasks/")
        page.click("header.site a.sign-in")
        page.wait_for_url("**/accounts/login/?next=/tasks/")
        page.fill("#id_username", username)
        page.fill("#id_password", "not-the-password")
        page.click("form.sign-in button[type=submit]")
        page.wait_for_selector("form.sign-in .errorlist", timeout=DEADLINE_MS)
        page.fill("#id_password", WALKER_PASSWORD)
        page.click("form.sign-in button[type=submit]")
        page.wait_for_url(base + "/tasks/")  # back where the link was followed
        assert page.locator("header.site .user").inner_text() == username
        page.click("header.site form.logout button")
        page.wait_for_url("**/accounts/logout/")
        assert "You have signed out" in page.locator("main").inner_text()
        assert page.locator("header.site a.sign-in").count() == 1
        assert page.locator("header.site .user").count() == 0

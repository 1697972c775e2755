"""The status page in a real browser (Debian's chromium, driven by Playwright).

The browser is never downloaded: `make test` installs Debian's chromium where it is
missing under CI (or LONGTASK_INSTALL_BROWSER=1). Without it these tests skip, unless
LONGTASK_REQUIRE_BROWSER=1 or CI=true, which make them fail.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
        page.wait_for_function("window.framed.types.includes('snapshot')", timeout=DEADLINE_MS)
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

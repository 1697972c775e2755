"""`make run` as a user runs it: serve, start a report, Ctrl-C, run again, see the result."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers import wait_for
from tests.processes import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A tiny cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect
        )

    def request(
        self, path: str, data: dict | None = None
    ) -> tuple[int, http.client.HTTPMessage, str]:
        """Status, headers (names in any case: uvicorn sends them lower-case) and body."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base})
        try:
            with self.opener.open(req, timeout=10) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()

    def up(self) -> bool:
        try:
            return self.request("/")[0] == 200
        except OSError:
            return False


def make_run(port: int, data_dir: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(PORT=str(port), LONGTASK_DATA_DIR=str(data_dir))
    if env.get("DATABASE_URL"):
        # The service pass: `make run` on PostgreSQL and Redis, in the test database
        # (REDIS_URL already names the tests' Redis database).
        from django.conf import settings

        url = urlsplit(env["DATABASE_URL"])
        name = settings.DATABASES["default"]["NAME"]
        env["DATABASE_URL"] = urlunsplit(url._replace(path=f"/{name}"))
    # A session of its own stands for the terminal: Ctrl-C signals its whole group.
    return subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def ctrl_c(process: subprocess.Popen, timeout: float = 15) -> float:
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return time.monotonic() - began


def server_processes(port: int, data_dir: Path) -> list[int]:
    """PIDs of the web server's and the workers' processes belonging to this test's run."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and f"LONGTASK_DATA_DIR={data_dir}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def kill_leftovers(port: int, data_dir: Path) -> None:
    """After a failure, kill what the run started: gunicorn and the workers leave honcho's
    process group, so killing the group left them serving (and restarting clusters)."""
    for pid in server_processes(port, data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def websocket_extensions(base: str, status_path: str) -> tuple[str, str | None]:
    """Follow a task's websocket as a browser would (offering compression); return the
    snapshot's status and the extensions the server agreed to."""
    from websockets.asyncio.client import connect

    async def follow() -> tuple[str, str | None]:
        task_id = status_path.strip("/").split("/")[-1]
        url = base.replace("http://", "ws://") + f"/ws/tasks/{task_id}/"
        async with connect(url, origin=base, proxy=None) as ws:
            snapshot = json.loads(await ws.recv())
            return snapshot["document"]["status"], ws.response.headers.get(
                "Sec-WebSocket-Extensions"
            )

    return asyncio.run(follow())


def test_make_run_serves_stops_on_ctrl_c_and_keeps_results(tmp_path):
    port = free_port()
    data_dir = tmp_path / "var"
    log = tmp_path / "make-run.log"
    browser = Browser(f"http://127.0.0.1:{port}")

    run = make_run(port, data_dir, log)
    try:
        wait_for(browser.up, 120, "`make run` to serve the site")
        status, _, html = browser.request("/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        status, headers, _ = browser.request(
            "/tasks/new/report/",
            {"csrfmiddlewaretoken": token, "month": "2026-10", "work_ms": "20"},
        )
        assert status == 303
        status_path = urllib.parse.urlparse(headers["Location"]).path
        json_path = status_path.rstrip("/") + ".json"

        def succeeded():
            return json.loads(browser.request(json_path)[2])["status"] == "SUCCEEDED"

        wait_for(succeeded, 60, "the report to succeed")
        # gunicorn and its uvicorn workers (one at least), 2 worker wrappers, 2 clusters.
        assert len(server_processes(port, data_dir)) >= 6
        took = ctrl_c(run)
    except BaseException:
        kill_leftovers(port, data_dir)
        raise
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    wait_for(lambda: not server_processes(port, data_dir), 15, "every server process to exit")
    output = log.read_text()
    assert took < 15, output[-2000:]
    assert "SIGKILL" not in output, output[-2000:]
    assert "did not stop" not in output

    # Run it again: the same database, the bookmark still shows the result.
    run = make_run(port, data_dir, log)
    try:
        wait_for(browser.up, 60, "the second `make run` to serve the site")
        status, _, html = browser.request(status_path)
        assert status == 200 and "2026-10-31" in html
        status, headers, csv = browser.request(status_path + "download/")
        assert status == 200 and csv.startswith("date,invoices,net,vat,gross")
        # Live frames go uncompressed: with a thousand watchers, compressing each frame
        # once per socket was the web process's biggest cost (docs/deployment.md).
        assert websocket_extensions(browser.base, status_path) == ("SUCCEEDED", None)
        ctrl_c(run)
    except BaseException:
        kill_leftovers(port, data_dir)
        raise
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    wait_for(lambda: not server_processes(port, data_dir), 15, "the second run to exit")

"""The pictures in the docs, taken by a real browser from a real site; the dashboard at work.

Each run takes them again into a temporary folder and checks they are real pictures of
the page they name; ``LONGTASK_SCREENSHOTS=1`` writes them into ``docs/_static/screenshots``
instead, where the docs show them (operating.md, status-pages.md).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from longtask.models import LongTask, Status
from tests.processes import ROOT
from tests.test_browser import (  # noqa: F401  (chromium: the fixture)
    DEADLINE_MS,
    chromium,
    sign_in_through_the_header,
    start_own_quilt,
    wait_until,
)
from tests.test_live import daphne, workers

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DOCS = ROOT / "docs" / "_static" / "screenshots"
PASSWORD = "pw-screens-1"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def operator(django_user_model) -> str:
    django_user_model.objects.create_superuser("operator", password=PASSWORD)
    return "operator"


def _shoot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_docs_pictures(tmp_path, operator, chromium):  # noqa: F811
    folder = DOCS if os.environ.get("LONGTASK_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_context(viewport={"width": 1000, "height": 800}).new_page()
        sign_in_through_the_header(page, base, operator, PASSWORD)
        start_own_quilt(page, base, work_ms=60, rows=12, cols=16)
        with workers(tmp_path):
            # Running: some squares coloured, not all.
            wait_until(page, "document.querySelectorAll('.live .quilt > rect[fill]').length > 40")
            shots.append(_shoot(page, folder, "quilt-running"))
            page.wait_for_selector(".task-status[data-status=SUCCEEDED]", timeout=DEADLINE_MS)
            shots.append(_shoot(page, folder, "quilt-done"))
            start_own_quilt(page, base, work_ms=40, rows=30, cols=30)
            page.goto(base + "/tasks/")
            page.wait_for_selector("table.tasks tr[data-status=RUNNING]", timeout=DEADLINE_MS)
            shots.append(_shoot(page, folder, "your-tasks"))
            page.goto(base + "/tasks/ops/")
            page.wait_for_selector("svg", timeout=DEADLINE_MS)
            shots.append(_shoot(page, folder, "dashboard"))
    for path in shots:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, path


@pytest.fixture
def stuck_task(operator) -> str:
    """A report whose worker died: RUNNING, its heartbeat far older than STALE_AFTER."""
    old = timezone.now() - datetime.timedelta(hours=1)
    task = LongTask.objects.create(
        kind="report",
        queue="default",
        parameters={"month": "2026-10", "work_ms": 0},
        status=Status.RUNNING,
        token="dead-worker",
        started_at=old,
        heartbeat_at=old,
        attempts=1,
    )
    return str(task.pk)


def test_the_dashboard_lists_a_stuck_task_and_its_retry_takes_it_up(
    tmp_path,
    stuck_task,
    chromium,  # noqa: F811
):
    row = f'tr.stuck-task[data-task="{stuck_task}"]'
    with daphne(tmp_path / "daphne.log") as base:
        page = chromium.new_context().new_page()
        sign_in_through_the_header(page, base, "operator", PASSWORD)
        page.goto(base + "/tasks/ops/")
        assert page.locator("svg polyline, svg path").count() >= 3  # the sparklines
        assert page.locator(row).count() == 1
        with workers(tmp_path):
            page.locator(row + ' form[action$="/retry/"] button').click()
            page.wait_for_url("**/tasks/ops/**")
            assert page.locator(row).count() == 0  # taken up: no longer stuck
            page.goto(f"{base}/tasks/{stuck_task}/")
            page.wait_for_selector(".task-status[data-status=SUCCEEDED]", timeout=DEADLINE_MS)

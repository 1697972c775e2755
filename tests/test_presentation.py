"""Kinds own their presentation: the status page's hook, and a library that paints no demo.

The browser side (frames reaching a kind's script, the quilt coloured live) is in
tests/test_browser.py; here the server side: what the status page includes for a kind
that sets ``stylesheet``, ``live_template`` and ``live_script``, and for one that doesn't.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.template.loader import get_template

import longtask
from longtask.engine import run as runner
from longtask.kinds import Kind, registry
from tests import kinds as test_kinds
from tests.helpers import drain_queue
from tests.processes import ROOT

LIBRARY = ROOT / "longtask"

#: The demo's vocabulary: its kinds, and the fields of the quilt's subtask results read as
#: properties (a table's rows are anybody's: "your tasks" has rows too).
DEMO_WORDS = re.compile(r"\b(quilts?|squares?|colou?rs?|report)\b|\.(row|col)\b", re.IGNORECASE)
#: CSS's own ``color`` property is no mention of the demo.
CSS_COLOR_PROPERTY = re.compile(r"(?<![\w-])color\s*:", re.IGNORECASE)


def library_presentation_files() -> list:
    files = [
        path
        for folder in ("static", "templates")
        for path in sorted((LIBRARY / folder).rglob("*"))
        if path.is_file()
    ]
    assert any(path.name == "status.js" for path in files)
    return files


def test_the_library_static_files_and_templates_know_no_demo():
    found = []
    for path in library_presentation_files():
        text = path.read_text()
        if path.suffix == ".css":
            text = CSS_COLOR_PROPERTY.sub("", text)
        for number, line in enumerate(text.splitlines(), 1):
            if DEMO_WORDS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    "path",
    [ROOT / "quiltsite/static/quiltsite/quilt.js", ROOT / "tests/static/tests/framed.js"],
    ids=["quilt.js", "framed.js"],
)
def test_kind_scripts_insert_text_never_html(path):
    source = path.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink
    assert "longtask:frame" in source


def test_status_js_hands_frames_on_after_every_deferred_script():
    source = (LIBRARY / "static/longtask/status.js").read_text()
    assert 'new CustomEvent("longtask:frame"' in source
    assert 'addEventListener("DOMContentLoaded", connect)' in source


def test_hooks_default_to_none():
    assert (Kind.stylesheet, Kind.live_template, Kind.live_script) == (None, None, None)


@pytest.mark.parametrize("name", ["quilt", "report", "recount"])
def test_each_site_kind_hook_names_files_that_exist(name):
    kind = registry.get(name)
    for path in (kind.stylesheet, kind.live_script):
        if path:
            assert finders.find(path), f"{name}: no static file {path}"
    if kind.live_template:
        get_template(kind.live_template)


def test_collectstatic_gathers_the_site_kinds_files(tmp_path, settings):
    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", interactive=False, verbosity=0)
    for path in ("longtask/status.js", "quiltsite/quilt.js", "quiltsite/quilt.css"):
        assert (tmp_path / path).is_file(), path


# The status page ----------------------------------------------------------------------------


def head(html: str) -> str:
    return html.split("</head>", 1)[0]


def scripts(html: str) -> list[str]:
    return re.findall(r'<script src="([^"]+)" defer></script>', html)


def stylesheets(html: str) -> list[str]:
    return re.findall(r'<link rel="stylesheet" href="([^"]+)">', html)


@pytest.fixture
def framed(settings) -> Iterator[type[Kind]]:
    """Register the test kind Framed, its template found under tests/templates."""
    engine = settings.TEMPLATES[0]
    settings.TEMPLATES = [{**engine, "DIRS": [*engine["DIRS"], ROOT / "tests" / "templates"]}]
    registry.register(test_kinds.Framed)
    yield test_kinds.Framed
    registry.unregister(test_kinds.Framed.name)


@pytest.mark.django_db
def test_a_running_kind_with_hooks_gets_its_template_script_and_stylesheet(client, framed):
    task = longtask.start("test-framed", {"n": 3})
    html = client.get(task.get_absolute_url()).content.decode()
    # Its script comes after status.js, so it listens before status.js follows the task.
    assert scripts(html) == ["/static/longtask/status.js", "/static/tests/framed.js"]
    assert stylesheets(html) == ["/static/longtask/longtask.css", "/static/tests/framed.css"]
    # The template is in the live area, rendered with the kind and the status document.
    live = html.split('<div class="live">', 1)[1]
    assert live.startswith(
        '<ol class="framed" data-kind="test-framed" data-status="QUEUED" data-total="0"></ol>'
    )


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_a_finished_kind_keeps_its_stylesheet_only(client, framed):
    task = longtask.start("test-framed", {"n": 2})
    runner.run(str(task.pk))
    drain_queue()
    html = client.get(task.get_absolute_url()).content.decode()
    assert "Succeeded" in html
    assert scripts(html) == []
    assert stylesheets(html) == ["/static/longtask/longtask.css", "/static/tests/framed.css"]
    assert 'class="live"' not in html and "framed.js" not in html


@pytest.mark.django_db
def test_a_kind_without_hooks_gets_the_library_alone(client, test_kinds_registered):
    task = longtask.start("test-count", {"n": 3})
    html = client.get(task.get_absolute_url()).content.decode()
    assert scripts(html) == ["/static/longtask/status.js"]
    assert stylesheets(html) == ["/static/longtask/longtask.css"]
    assert 'class="live"' not in html


@pytest.mark.django_db(transaction=True)  # Redis pushes jobs on commit
def test_the_quilt_plugs_its_renderer_in_through_the_hook(client):
    task = longtask.start("quilt", {"rows": 2, "cols": 3})
    runner.run(str(task.pk))  # split: six squares queued
    html = client.get(task.get_absolute_url()).content.decode()
    assert scripts(head(html)) == ["/static/longtask/status.js", "/static/quiltsite/quilt.js"]
    assert "/static/quiltsite/quilt.css" in stylesheets(html)
    live = html.split('<div class="live">', 1)[1]
    assert '<div class="quilt-live">' in live and '<svg class="quilt" data-rows="2"' in live
    assert '<span class="done">0</span> of the 2 &times; 3 squares coloured.' in live
    drain_queue()
    html = client.get(task.get_absolute_url()).content.decode()
    assert scripts(html) == [] and "/static/quiltsite/quilt.css" in stylesheets(html)
    assert 'class="live"' not in html and '<div class="result"><svg class="quilt"' in html

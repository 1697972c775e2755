"""Keep the README and the docs (docs/, a Sphinx project) true.

The code blocks compile, the tutorial's kinds run, the links lead somewhere, and the
tables that restate the code (settings, variables, transitions, checks, URLs, the public
API) match it. The Sphinx build itself, with warnings as errors, is a step of `make test`.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ROOT

DOCS = ROOT / "docs"
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [README_PATH, *PAGES]
#: The tutorial's code: included in docs/tutorial.md, imported and run below.
EXAMPLE = DOCS / "examples" / "primes.py"

FENCE = re.compile(r"^(```+)\s*([^\n]*)\n(.*?)^\1\s*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def page(name: str) -> str:
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line), up to the next heading of its level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = text.find(f"\n{level} ", start)
    return text[start:] if end == -1 else text[start:end]


def first_column(table: str) -> list[str]:
    """The `NAME`s in the first column of a Markdown table."""
    return re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE)


def fenced(text: str) -> Iterator[tuple[str, str]]:
    """(info string, content) of each fenced block of a Markdown text."""
    for match in FENCE.finditer(text):
        yield match[2].strip(), match[3]


def prose(text: str) -> str:
    """The text without its fenced blocks and inline code, where links are not links."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


# The README ---------------------------------------------------------------------------


def test_the_two_commands_come_first():
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 150


def test_the_readme_links_every_page():
    linked = {Path(target).name for target in LINK.findall(prose(README))}
    assert {path.name for path in PAGES if path.name != "index.md"} <= linked


# Code blocks and links ---------------------------------------------------------------


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_python_block_compiles(path):
    blocks = [code for info, code in fenced(path.read_text()) if info == "python"]
    for number, code in enumerate(blocks, 1):
        compile(code, f"{path.name}, python block {number}", "exec")


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub (and MyST, with myst_heading_anchors) give a page's headings."""
    anchors = set()
    for title in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    text = path.read_text()
    targets = LINK.findall(prose(text))
    # Files that MyST directives include (the tutorial's code).
    targets += re.findall(r"^```\{(?:literalinclude|include)\} (\S+)", text, re.MULTILINE)
    for target in targets:
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: {target} leads nowhere"
        if anchor and resolved.suffix == ".md":
            assert anchor in heading_anchors(resolved), f"{path.name}: no heading for {target}"


# The tutorial -------------------------------------------------------------------------


def test_the_tutorial_shows_its_tested_example():
    tutorial = page("tutorial.md")
    assert tutorial.count("```{literalinclude} examples/primes.py") >= 2
    assert ":pyobject: CountPrimesFannedOut" in tutorial


@pytest.fixture
def primes() -> Iterator[object]:
    """docs/examples/primes.py, imported as an app's longtasks.py is: its kinds registered."""
    from longtask.kinds import registry

    module = types.ModuleType("docs_example_primes")
    module.__file__ = str(EXAMPLE)
    # Run as an import would, without leaving a __pycache__ in docs/.
    exec(compile(EXAMPLE.read_text(), EXAMPLE, "exec"), module.__dict__)  # noqa: S102
    yield module
    registry.unregister(module.CountPrimes.name)
    registry.unregister(module.CountPrimesFannedOut.name)


@pytest.fixture
def no_jobs_left() -> Iterator[None]:
    from tests import broker

    yield from broker.emptied()


def test_the_example_counts_primes(primes):
    assert primes.count_primes(0, 100) == 25
    assert primes.count_primes(90, 110) == 5  # 97, 101, 103, 107, 109
    assert primes.count_primes(0, 2) == primes.count_primes(5, 5) == 0
    assert sum(primes.count_primes(n, n + 7) for n in range(0, 1001, 7)) == 168


@pytest.mark.django_db(transaction=True)
def test_the_tutorial_kinds_run(primes, no_jobs_left):
    import longtask
    from longtask.models import LongTask, Status
    from tests.helpers import drain_queue

    with pytest.raises(longtask.InvalidParameters):
        longtask.start("primes", {"limit": 1})
    plain = longtask.start("primes", {"limit": 250_000})
    fanned = longtask.start("primes-fanout", {"limit": 250_000})
    drain_queue()
    plain, fanned = (LongTask.objects.get(pk=task.pk) for task in (plain, fanned))
    assert plain.status == fanned.status == Status.SUCCEEDED
    assert plain.result == fanned.result == {"limit": 250_000, "primes": 22_044}
    assert plain.last_progress["current"] == plain.last_progress["total"] == 250_000
    assert plain.last_progress["message"] == "22,044 primes below 250,000"
    assert (fanned.subtasks_total, fanned.subtasks_done, fanned.subtasks_failed) == (3, 3, 0)


# Tables that restate the code ---------------------------------------------------------


def test_every_documented_variable_is_read():
    sources = "".join(
        (ROOT / name).read_text()
        for name in (
            "quiltsite/settings.py",
            "quiltsite/environment.py",
            "quiltsite/gunicorn.py",
            "Makefile",
        )
    )
    variables = first_column(section(page("configuration.md"), "## Environment variables"))
    assert len(variables) >= 8
    for name in variables:
        assert name in sources, name


def test_every_documented_test_variable_is_read():
    files = [ROOT / "Makefile", ROOT / ".ci" / "run", *(ROOT / "scripts").iterdir()]
    files += (ROOT / "tests").glob("*.py")
    sources = "".join(path.read_text() for path in files if path.is_file())
    variables = first_column(section(page("configuration.md"), "## Testing on the services"))
    assert len(variables) >= 4
    for name in variables:
        assert name in sources, name


def test_the_library_settings_are_the_code_s():
    from longtask.conf import Settings

    documented = first_column(section(page("configuration.md"), "## Library settings"))
    assert len(documented) == len(set(documented))
    assert set(documented) == {name for name in dir(Settings) if name.isupper()}


def transitions(table: str) -> dict[str, tuple[set[str], str, str]]:
    rows = re.findall(r"^\| `(\w+)` \| ([A-Z, ]+) \| ([A-Z]+) \| (.+?) \|$", table, re.MULTILINE)
    return {name: ({s.strip() for s in froms.split(",")}, to, by) for name, froms, to, by in rows}


def test_the_transition_tables_are_the_engine_s():
    from longtask.engine import states

    text = page("guarantees.md")
    tasks = transitions(text.split("| task transition |")[1].split("| subtask transition |")[0])
    subtasks = transitions(text.split("| subtask transition |")[1])
    pairs = [(tasks, states.TASK_TRANSITIONS), (subtasks, states.SUBTASK_TRANSITIONS)]
    for documented, code in pairs:
        assert documented == {
            name: ({str(s) for s in t.sources}, str(t.target), t.by) for name, t in code.items()
        }


def test_the_tests_that_prove_the_guarantees_exist():
    table = page("guarantees.md").split("| promise |")[1].split("\n\n")[0]
    references = re.findall(r"`(test_\w+)(?:::(test_\w+)(\*?))?`", table)
    assert len(references) >= 10
    for module, function, wildcard in references:
        path = ROOT / "tests" / f"{module}.py"
        assert path.exists(), module
        if function:
            pattern = rf"^(async )?def {function}{r'\w*' if wildcard else ''}\("
            assert re.search(pattern, path.read_text(), re.MULTILINE), f"{module}::{function}"


@pytest.mark.parametrize("text", [README, page("django-tasks.md")], ids=["README", "docs"])
def test_the_django_tasks_status_table_is_the_backend_s(text):
    from longtask.backends import STATUS_MAP

    table = text.split("| LongTask status |")[1].split("\n\n")[0]
    documented = {}
    for statuses, mapped in re.findall(r"^\| (`[A-Z`, ]+`) \| `([A-Z]+)` \|", table, re.M):
        for status in re.findall(r"`([A-Z]+)`", statuses):
            documented[status] = mapped
    assert documented == {status.value: mapped.value for status, mapped in STATUS_MAP.items()}


def test_every_system_check_is_documented():
    code = "".join(path.read_text() for path in (ROOT / "longtask").rglob("*.py"))
    ids = set(re.findall(r'id="(longtask\.[EW]\d+)"', code))
    documented = set(re.findall(r"^\| `(longtask\.[EW]\d+)` \|", page("operating.md"), re.M))
    assert ids and documented == ids


def _routes(patterns, prefix=""):
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):  # an include()
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern)


def test_every_url_is_documented():
    from longtask.urls import urlpatterns

    table = page("status-pages.md").split("| URL |")[1].split("\n\n")[0]
    routes = list(_routes(urlpatterns))
    assert len(routes) >= 10
    for route in routes:
        route = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route)
        route = route.replace("<task_id>", "<uuid>")
        assert f"/{route}`" in table or f"/{route}?" in table, route


def test_every_public_name_is_documented():
    import longtask

    reference = page("kinds.md")
    for name in longtask.__all__:
        assert f"longtask.{name}" in reference, name

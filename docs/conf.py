"""Sphinx configuration of longtask's docs (Markdown pages through MyST, the furo theme).

Built by `make test` with warnings as errors:

    .venv/bin/python -m sphinx -W --keep-going -b html docs var/docs-html

No autodoc: the pages describe the public API by hand, so building them needs neither
Django set up nor a database, and moving modules inside longtask cannot break them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "longtask"
author = "the longtask developers"
copyright = "2026, the longtask developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links to headings, written as GitHub renders them (`guarantees.md#the-transitions`),
# so that the same Markdown works on GitHub and here.
myst_heading_anchors = 3

html_theme = "furo"
html_title = "longtask"
html_show_sourcelink = False

#: A link from a page to a Markdown file outside docs/ (`../SECURITY.md`).
_OUTSIDE_MARKDOWN = re.compile(r"\]\((\.\./[^)#\s]+\.md)\)")


def _outside_markdown_as_files(app: Sphinx, docname: str, source: list[str]) -> None:
    """Link Markdown files outside docs/ as files (GitHub shows them; Sphinx would look
    for a page of the docs and warn)."""
    source[0] = _OUTSIDE_MARKDOWN.sub(r"](path:\1)", source[0])


def setup(app: Sphinx) -> None:
    app.connect("source-read", _outside_markdown_as_files)

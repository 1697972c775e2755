"""Kind: a named piece of work a LongTask can run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

from django import forms
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from longtask.exceptions import InvalidParameters
from longtask.kinds.retry import RetryPolicy
from longtask.serialize import JSON, JSONObject, to_json

if TYPE_CHECKING:
    from longtask.models import LongTask


#: Kind names of django.tasks functions start with this, then the function's module path.
TASK_KIND_PREFIX = "task:"


@dataclass(frozen=True)
class Download:
    """A result offered as a file."""

    filename: str
    content_type: str
    content: bytes | str


class Kind:
    """Base class of a kind of long task; subclass it and decorate with ``@register``.

    A kind may own how its status page looks, without touching the library's templates
    or scripts:

    - ``display_progress`` and ``display_result`` return HTML for the page while the
      task runs and once it succeeded;
    - ``stylesheet`` is a static path linked from the page's head, running or finished;
    - ``live_template`` is a template rendered in the page's live area while the task
      runs, with the page's context: ``task``, ``kind``, ``document`` (the JSON status
      document, as ``/tasks/<id>.json`` serves it), ``progress`` and ``progress_html``
      (``display_progress``'s HTML, which the area shows alone without a template);
    - ``live_script`` is a static path loaded, deferred, after ``longtask/status.js``
      while the task runs. ``status.js`` dispatches a ``longtask:frame`` event, bubbling
      from ``<main>``, for every frame it receives (``event.detail``: the websocket's
      ``snapshot``, ``subtasks``, ``progress`` and ``status`` frames; when it polls the
      JSON endpoints instead, each document as a ``snapshot`` and each page of subtasks
      as ``subtasks``; and ``{"type": "swapped", "status": S}`` after it replaced
      ``<main>``'s content with a fresh server rendering, which a script draws on
      again). It follows the task once every deferred script has run, so no frame
      comes before the kind's script listens. Scripts and styles are files: the
      site's Content-Security-Policy allows nothing inline.
    """

    #: Registry name, used in URLs, the CLI and the ``kind`` column.
    name: ClassVar[str] = ""
    #: Human title on the start page.
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Validates the parameters: at start, and again in the worker before each run (a row
    #: written around start() fails then), so it must accept its own cleaned output.
    form_class: ClassVar[type[forms.Form]] = forms.Form
    #: Position on the start page (lowest first).
    order: ClassVar[int] = 100
    #: Queue this kind runs on; ``None`` means the default queue.
    queue: ClassVar[str | None] = None
    #: Retries of a failed run; None means the LONGTASK_RETRY setting.
    retry: ClassVar[RetryPolicy | None] = None
    #: Exceptions that fail the task at once, like ``longtask.FatalError``.
    fatal_exceptions: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Seconds a run may take before it is stopped and counted as a failed attempt;
    #: None means the worker cluster's own timeout (django-q2's ``Q_CLUSTER["timeout"]``).
    time_limit: ClassVar[int | None] = None
    #: Only logged-in users may start this kind (on the web, and as a CLI ``--owner``).
    login_required: ClassVar[bool] = False
    #: Permission ("app_label.codename") needed to start this kind; implies a login.
    permission: ClassVar[str | None] = None
    #: Static stylesheet for the status page (the result's look too); see the class docstring.
    stylesheet: ClassVar[str | None] = None
    #: Template of the status page's live area while the task runs; see the class docstring.
    live_template: ClassVar[str | None] = None
    #: Static script that follows the task's frames on the status page; see the class docstring.
    live_script: ClassVar[str | None] = None
    #: Keep each attempt's worker and start in the row's ``runs`` (django.tasks' worker_ids).
    #: Off by default: an iterative kind's every batch is a run, and the list would grow.
    keeps_runs: ClassVar[bool] = False
    #: The status page keeps ``display_result``'s HTML per process, by task and finish
    #: time; False for a drawing that depends on more than the task (the time, the user).
    result_html_cached: ClassVar[bool] = True

    def retry_policy(self) -> RetryPolicy:
        return self.retry or RetryPolicy.default()

    def clean_parameters(self, data: Mapping[str, JSON]) -> JSONObject:
        """Validate ``data`` with the kind's form and return JSON-able parameters."""
        form = self.form_class(data=data)
        if not form.is_valid():
            raise InvalidParameters(form)
        return cast("JSONObject", to_json(form.cleaned_data))  # a dict's JSON is an object

    def run(self, task: LongTask, params: JSONObject) -> JSON:
        """Do the work, calling ``task.progress(...)`` as it goes; return a JSON-able result."""
        raise NotImplementedError

    def on_finished(self, task: LongTask) -> None:
        """Called once a run or the sweeper has finished the task for good (any outcome)."""

    def display_progress(self, task: LongTask) -> SafeString | str:
        """Render extra HTML for the status page while the task runs (e.g. partial results)."""
        return ""

    def display_result(self, task: LongTask) -> SafeString:
        """Render the result as HTML for the status page."""
        return render_to_string("longtask/result_default.html", {"task": task})

    def download(self, task: LongTask) -> Download | None:
        """Offer the result as a file, or return None for no download."""
        return None

    def offers_download(self, task: LongTask) -> bool:
        """Say whether ``download`` is overridden, without building the file."""
        return type(self).download is not Kind.download

    def __repr__(self) -> str:
        return f"<Kind {self.name}>"

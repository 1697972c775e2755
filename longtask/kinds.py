"""Kinds: the named pieces of work a LongTask can run, and their registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from longtask.conf import settings
from longtask.exceptions import InvalidParameters, KindConfigurationError, UnknownKind
from longtask.retry_policy import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    """Base class of a kind of long task; subclass it and decorate with ``@register``."""

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
    #: None means django-q2's cluster timeout (LONGTASK_JOB_TIMEOUT in the demo).
    time_limit: ClassVar[int | None] = None
    #: Only logged-in users may start this kind (on the web, and as a CLI ``--owner``).
    login_required: ClassVar[bool] = False
    #: Permission ("app_label.codename") needed to start this kind; implies a login.
    permission: ClassVar[str | None] = None
    #: Keep each attempt's worker and start in the row's ``runs`` (django.tasks' worker_ids).
    #: Off by default: an iterative kind's every batch is a run, and the list would grow.
    keeps_runs: ClassVar[bool] = False

    def retry_policy(self) -> RetryPolicy:
        return self.retry or RetryPolicy.default()

    def clean_parameters(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``data`` with the kind's form and return JSON-able parameters."""
        form = self.form_class(data=data)
        if not form.is_valid():
            raise InvalidParameters(form)
        return json.loads(json.dumps(form.cleaned_data, cls=DjangoJSONEncoder))

    def run(self, task: LongTask, params: dict[str, Any]) -> Any:
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


class FanOutKind(Kind):
    """A kind whose work is spread over many subtasks and gathered back once.

    ``run_subtask`` may run more than once for one subtask (a worker can die after
    the work and before the bookkeeping): it must be idempotent. Its result is
    counted exactly once.
    """

    #: FAIL_FAST: the first subtask that fails for good fails the parent and skips the
    #: rest. TOLERATE: the parent completes; failed subtasks have a null result.
    FAIL_FAST: ClassVar[str] = "fail_fast"
    TOLERATE: ClassVar[str] = "tolerate"
    failure_policy: ClassVar[str] = FAIL_FAST
    #: Queue of the subtasks (their rate and concurrency limits apply per subtask
    #: and per chunk); None means LONGTASK_SUBTASK_QUEUE.
    subtask_queue: ClassVar[str | None] = None
    #: Subtasks per django-q2 job; None picks it from the observed subtask duration.
    chunk_size: ClassVar[int | None] = None
    #: Retries of one subtask (backoff from the last failure of that subtask).
    subtask_retry: ClassVar[RetryPolicy] = RetryPolicy(
        max_attempts=3, min_backoff=0.2, max_backoff=10.0, max_doublings=4
    )

    def subtask_queue_name(self) -> str:
        return self.subtask_queue or settings.SUBTASK_QUEUE

    def split(self, params: dict[str, Any]) -> Iterable[dict[str, Any]]:
        """Yield the parameters of each subtask, in index order (a generator is best)."""
        raise NotImplementedError

    def run_subtask(self, params: dict[str, Any]) -> Any:
        """Do one subtask and return its JSON-able result."""
        raise NotImplementedError

    def gather(self, task: LongTask, results: Iterable[Any]) -> Any:
        """Combine the subtasks' results (iterated in index order) into the parent's result."""
        return list(results)

    def run(self, task: LongTask, params: dict[str, Any]) -> Any:
        raise TypeError("a fan-out kind runs through split/run_subtask/gather, not run")


class IterativeKind(Kind):
    """A kind that processes every row of a queryset, one batch per job."""

    #: Rows per batch (the fetch asks for one more, to know whether more remain).
    batch_size: ClassVar[int] = 1000
    #: Stop a batch early after this many seconds and continue in the next job.
    soft_deadline: ClassVar[float | None] = None
    #: A unique, ordered field to walk by (the keyset cursor).
    cursor_field: ClassVar[str] = "pk"

    def queryset(self, params: dict[str, Any]) -> QuerySet:
        """Return the rows to walk (ordering is applied by the walker)."""
        raise NotImplementedError

    def process(self, task: LongTask, rows: Sequence[Any], params: dict[str, Any]) -> None:
        """Process some rows; runs inside the transaction that moves the cursor."""
        raise NotImplementedError

    def finish(self, task: LongTask, params: dict[str, Any]) -> Any:
        """Return the task's result once every row is done."""
        return {"rows": task.rows_done}

    def run(self, task: LongTask, params: dict[str, Any]) -> Any:
        raise TypeError("an iterative kind runs batch by batch, not through run")


class KindRegistry:
    """The kinds known to this process, by name.

    A resolver answers for every name under its prefix (``task:`` runs any
    django.tasks function), so such kinds need no registration; they are found by
    ``find`` (the engine, pages) but never started by name (``get``: the web, the CLI).
    """

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}
        self._resolvers: dict[str, Callable[[str], Kind | None]] = {}

    def add_resolver(self, prefix: str, resolve: Callable[[str], Kind | None]) -> None:
        """Let ``resolve(name)`` answer for the kind names starting with ``prefix``."""
        self._resolvers[prefix] = resolve

    def register(self, kind_class: type[Kind]) -> type[Kind]:
        name = kind_class.name
        if not name:
            raise KindConfigurationError(f"{kind_class.__qualname__} has no name")
        existing = self._kinds.get(name)
        if existing is not None and type(existing).__qualname__ != kind_class.__qualname__:
            raise KindConfigurationError(f"kind name {name!r} is used twice")
        self._kinds[name] = kind_class()
        return kind_class

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(name) from None

    def find(self, name: str) -> Kind | None:
        """Return the kind registered (or resolved) as ``name``, or None (e.g. since removed)."""
        kind = self._kinds.get(name)
        if kind is None:
            for prefix, resolve in self._resolvers.items():
                if name.startswith(prefix):
                    return resolve(name)
        return kind

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[Kind]:
        return iter(sorted(self._kinds.values(), key=lambda kind: (kind.order, kind.name)))


registry = KindRegistry()


def register(kind_class: type[Kind]) -> type[Kind]:
    """Register a kind under its ``name`` (use as a class decorator)."""
    return registry.register(kind_class)

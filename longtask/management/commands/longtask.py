"""``manage.py longtask``: start, follow and manage long tasks from a terminal.

A thin layer over the Python API the web uses. Exit codes: 0 done; 1 the task
failed or was cancelled, the request was refused, or batch lines were rejected;
2 bad input (unknown kind, bad parameters, unknown id, malformed JSONL), in which
case one line goes to stderr and nothing has been started.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from longtask import api, display
from longtask.conf import settings as longtask_settings
from longtask.dispatch import queues
from longtask.documents import status_document
from longtask.exceptions import (
    InvalidParameters,
    LimitExceeded,
    NotAllowed,
    ParametersTooLarge,
    UnknownKind,
)
from longtask.guards import abuse, sizes
from longtask.kinds import Kind, registry
from longtask.management import cli
from longtask.management.operate import OperateCommands
from longtask.management.ops import OpsCommands
from longtask.models import LongTask, Status
from longtask.serialize import JSON, JSONObject

if TYPE_CHECKING:
    from longtask.guards.access import User

logger = logging.getLogger("longtask")

BATCH_HELP = """\
Start one task of KIND per line of FILE, a JSONL file of parameter objects ("-": stdin).
Every line is read first: a line that is not a JSON object stops the command with exit
code 2 before anything starts. Lines whose parameters the kind's form rejects are
reported with their line number and error while the valid lines start (exit code 1).
With --name-field F, the value of field F names each task, so running the same file
again starts nothing twice: lines whose task exists are reported as skipped.
"""


class Command(OperateCommands, OpsCommands, BaseCommand):
    help = (
        "Start, follow, list, show, retry, cancel and purge long tasks; watch them (top, "
        "stats). Exit codes: 0 done; "
        "1 failed, cancelled, refused or lines rejected; 2 bad input (nothing started)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        start = sub.add_parser("start", help="Start one task and print its status URL.")
        start.add_argument("kind", help="The kind of task, e.g. report.")
        start.add_argument("params", nargs="*", metavar="key=value", help="Its parameters.")
        start.add_argument("--name", help="Unique name: if a task has it, nothing starts.")
        self._common_start_options(start)
        start.add_argument(
            "--json", dest="as_json", action="store_true", help="Print the JSON status document."
        )

        batch = sub.add_parser("batch", help="Start one task per line of a JSONL file.")
        batch.description = BATCH_HELP
        batch.add_argument("kind")
        batch.add_argument("file", help='JSONL file of parameters, or "-" for stdin.')
        batch.add_argument("--name-field", metavar="F", help="Field whose value names a task.")
        self._common_start_options(batch)

        listing = sub.add_parser("list", help="List recent tasks, newest first.")
        listing.add_argument("--status", type=str.upper, choices=Status.values)
        listing.add_argument("--kind")
        listing.add_argument("--limit", type=int, default=20)

        show = sub.add_parser("show", help="Show one task (by id or name).")
        show.add_argument("ident", metavar="ID")
        show.add_argument("--json", dest="as_json", action="store_true")

        retry = sub.add_parser("retry", help="Run a failed or cancelled task again.")
        retry.add_argument("ident", metavar="ID")
        cancel = sub.add_parser("cancel", help="Cancel a task that has not finished.")
        cancel.add_argument("ident", metavar="ID")

        purge = sub.add_parser("purge", help="Delete finished tasks and their subtasks.")
        purge.add_argument(
            "--older-than", type=float, required=True, metavar="DAYS", help="Finished before."
        )
        purge.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")
        self.add_ops_arguments(sub)

    def _common_start_options(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", help="Queue name (default: the kind's).")
        parser.add_argument("--owner", metavar="USERNAME", help="User who owns the task(s).")
        parser.add_argument(
            "--wait", action="store_true", help="Follow with a progress bar until finished."
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"handle_{subcommand}")(**options)

    # Starting ---------------------------------------------------------------------

    def _kind(self, name: str) -> Kind:
        try:
            return registry.get(name)
        except UnknownKind as exc:
            known = ", ".join(kind.name for kind in registry)
            raise cli.bad_input(f"{exc} (known kinds: {known})") from None

    def _queue(self, name: str | None) -> None:
        try:
            queues.get(name)
        except queues.UnknownQueue as exc:
            known = ", ".join(sorted(longtask_settings.QUEUES))
            raise cli.bad_input(f"{exc} (known queues: {known})") from None

    def handle_start(
        self,
        *,
        kind: str,
        params: list[str],
        name: str | None,
        queue: str | None,
        owner: str | None,
        wait: bool,
        as_json: bool,
        **options: object,
    ) -> None:
        kind_obj = self._kind(kind)
        self._queue(queue)
        parameters = cli.parse_assignments(params)
        owner_obj = cli.find_owner(owner) if owner else None
        try:
            task, created = self._start_task(
                kind_obj, parameters, name=name, queue=queue, owner=owner_obj
            )
        except (InvalidParameters, ParametersTooLarge) as exc:
            raise cli.bad_input(str(exc)) from None
        except (NotAllowed, LimitExceeded) as exc:
            raise refused(exc) from None
        if not created:
            self.stderr.write(f"LongTask {task.pk} already exists under name {name!r}.")
        if not as_json:
            self.stdout.write(cli.status_url(task))
        if wait:
            with self._interruptible(cli.status_url(task)):
                task = cli.follow(task, self._progress_stream())
        if as_json:
            document = status_document(
                task, task.progress_record(), status_url=cli.status_url(task)
            )
            self.stdout.write(json.dumps(document, indent=2))
        if wait:
            self._exit_for(task, quiet=as_json)

    def _start_task(
        self,
        kind: Kind,
        params: Mapping[str, JSON],
        *,
        name: str | None,
        queue: str | None,
        owner: User | None,
    ) -> tuple[LongTask, bool]:
        """Start a task; the limits apply to an ``--owner`` (the operator alone is trusted)."""
        actor = abuse.Actor(user=owner, trusted=owner is None)
        task = api.start(kind, params, name=name, queue=queue, owner=owner, actor=actor)
        return task, not task.deduplicated

    def _exit_for(self, task: LongTask, *, quiet: bool) -> None:
        if task.status == Status.SUCCEEDED:
            if not quiet:  # with --json, stdout holds the document and nothing else
                seconds = display.duration_text(display.run_seconds(task), decimals=1)
                self.stdout.write(f"LongTask {task.pk} succeeded in {seconds}.")
            return
        error = f": {task.error}" if task.error else ""
        raise CommandError(f"LongTask {task.pk} {task.status.lower()}{error}", returncode=1)

    @contextlib.contextmanager
    def _interruptible(self, what: str) -> Iterator[None]:
        """Turn Ctrl-C while following into a one-line note: the work goes on."""
        try:
            yield
        except KeyboardInterrupt:
            raise CommandError(f"stopped following; {what} keeps running", returncode=130) from None

    def _progress_stream(self) -> cli.Stream:
        # tqdm writes "\r" updates; Django's OutputWrapper would end each with a newline.
        return getattr(self.stderr, "_out", self.stderr)

    def handle_batch(
        self,
        *,
        kind: str,
        file: str,
        name_field: str | None,
        queue: str | None,
        owner: str | None,
        wait: bool,
        **options: object,
    ) -> None:
        kind_obj = self._kind(kind)
        self._queue(queue)
        owner_obj = cli.find_owner(owner) if owner else None
        lines = cli.read_jsonl(file)
        max_name = LongTask._meta.get_field("name").max_length or 0
        valid: list[tuple[int, JSONObject, str | None]] = []
        rejected: list[tuple[int, str]] = []
        for number, data in lines:
            name = None
            if name_field:
                value = data.get(name_field)
                if value is None or value == "":
                    rejected.append((number, f"no {name_field!r} field to name the task"))
                    continue
                name = str(value)
                if len(name) > max_name:
                    rejected.append((number, f"name longer than {max_name} characters"))
                    continue
            try:
                sizes.check_parameters_size(kind_obj.clean_parameters(data))
            except (InvalidParameters, ParametersTooLarge) as exc:
                rejected.append((number, str(exc)))
                continue
            valid.append((number, data, name))
        started: list[tuple[int, LongTask]] = []
        skipped: list[tuple[int, LongTask]] = []
        # One transaction: the valid lines start together or not at all, and are
        # queued only once they have all been saved.
        try:
            with transaction.atomic():
                for number, data, name in valid:
                    task, created = self._start_task(
                        kind_obj, data, name=name, queue=queue, owner=owner_obj
                    )
                    (started if created else skipped).append((number, task))
        except (NotAllowed, LimitExceeded) as exc:
            raise refused(exc, f"line {number}: ") from None
        report = [(n, f"started {cli.status_url(task)}") for n, task in started]
        report += [(n, f"already exists {cli.status_url(task)}") for n, task in skipped]
        report += [(n, f"rejected: {error}") for n, error in rejected]
        for number, text in sorted(report):
            self.stdout.write(f"line {number}: {text}")
        self.stdout.write(
            f"{len(started)} started, {len(skipped)} skipped as duplicates, "
            f"{len(rejected)} rejected"
        )
        problems = []
        if rejected:
            problems.append(f"{len(rejected)} line(s) rejected")
        if wait and (started or skipped):
            tasks = [task for _, task in started + skipped]
            with self._interruptible("the batch"):
                counts = cli.follow_many(tasks, self._progress_stream())
            self.stdout.write(", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n))
            unsuccessful = len(tasks) - counts[Status.SUCCEEDED]
            if unsuccessful:
                problems.append(f"{unsuccessful} task(s) did not succeed")
        if problems:
            raise CommandError("; ".join(problems), returncode=1)

    # Looking ----------------------------------------------------------------------


def refused(exc: LimitExceeded | NotAllowed, where: str = "") -> CommandError:
    """Exit 1 with the reason: the input was fine, the start was refused (nothing started)."""
    return CommandError(f"{where}refused, nothing started: {exc}", returncode=1)

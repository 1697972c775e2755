"""Helpers of ``manage.py longtask`` (and the admin): input parsing, lookups, deletion, following.

Bad input raises ``CommandError(..., returncode=2)``: Django prints it as one line on
stderr and exits 2, and the caller has started nothing yet.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Never, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import close_old_connections, connection
from django.utils import timezone
from tqdm import tqdm

from longtask import display, progress
from longtask.models import FINISHED_STATUSES, LongTask, Status
from longtask.serialize import JSONObject

if TYPE_CHECKING:
    from longtask.guards.access import User

logger = logging.getLogger("longtask")

#: Where progress is shown: a text stream, or a command's OutputWrapper (an io.TextIOBase).
type Stream = TextIO | io.TextIOBase

BAD_INPUT = 2
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: Seconds between two polls of the followed tasks.
POLL_SECONDS = 0.5
#: Without a terminal, a progress line is printed at most this often (and on each status change).
PLAIN_EVERY = 5.0
BAR_MESSAGE = 40
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def bad_input(message: str) -> CommandError:
    return CommandError(message, returncode=BAD_INPUT)


# Input --------------------------------------------------------------------------


def parse_assignments(tokens: Iterable[str]) -> dict[str, str]:
    """Turn ``key=value`` tokens into parameters; values stay strings for the kind's form."""
    params: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.strip():
            raise bad_input(f"expected key=value, got {token!r}")
        params[key.strip()] = value
    return params


def read_jsonl(path: str) -> list[tuple[int, JSONObject]]:
    """Read every non-blank line of a JSONL file (``-``: stdin) as a parameters object."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_input(f"cannot read {path}: {exc}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise bad_input(f"{path}:{number}: not valid JSON: {exc}") from None
        except RecursionError:  # hostile nesting, deeper than the parser's stack
            raise bad_input(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise bad_input(f"{path}:{number}: expected a JSON object of parameters, got {kind}")
        lines.append((number, data))
    return lines


def find_task(ident: str) -> LongTask:
    """Return the task with this id (or, failing that, this name)."""
    task = None
    with contextlib.suppress(ValueError):
        task = LongTask.objects.filter(pk=uuid.UUID(ident)).first()
    if task is None:
        task = LongTask.objects.filter(name=ident).first()
    if task is None:
        raise bad_input(f"no task with id or name {ident!r}")
    return task


def find_owner(username: str) -> User:
    user_model = get_user_model()
    user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
    if user is None:
        raise bad_input(f"no user {username!r}")
    return user


def status_url(task: LongTask) -> str:
    """Return the absolute status page URL (base: LONGTASK_BASE_URL, else the dev server)."""
    base = getattr(settings, "LONGTASK_BASE_URL", None) or DEFAULT_BASE_URL
    return base.rstrip("/") + task.get_absolute_url()


# Following -----------------------------------------------------------------------------


def pause(seconds: float) -> None:
    """Wait between two polls (a module function so tests can run the queue instead)."""
    time.sleep(seconds)


@dataclass
class Snapshot:
    current: float
    total: float | None
    message: str
    eta: int | None
    status: str


class Display:
    """Shows snapshots: a tqdm bar on a terminal, else a plain line now and then."""

    def __init__(self, stream: Stream, label: str, *, every: float = PLAIN_EVERY) -> None:
        self.stream = stream
        self.label = label
        self.every = every
        self.bar: tqdm[Never] | None = None
        self._last_line = -math.inf
        self._last_status = ""
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            self.bar = tqdm(
                total=None, desc=label, file=stream, bar_format=BAR_FORMAT, dynamic_ncols=True
            )

    def show(self, snap: Snapshot) -> None:
        eta = display.eta_text(snap.eta)
        if self.bar is not None:
            self.bar.total = snap.total
            self.bar.n = snap.current
            # A short message keeps the bar from jumping about as messages change length.
            message = snap.message[:BAR_MESSAGE] + ("…" if len(snap.message) > BAR_MESSAGE else "")
            detail = ", ".join(part for part in (snap.status.lower(), eta, message) if part)
            self.bar.set_postfix_str(detail, refresh=False)
            self.bar.refresh()
            return
        now = time.monotonic()
        if snap.status == self._last_status and now - self._last_line < self.every:
            return
        self._last_line, self._last_status = now, snap.status
        done = f"{snap.current:g}/{snap.total:g}" if snap.total else f"{snap.current:g}"
        parts = [self.label, snap.status, done, eta, snap.message]
        self.stream.write(" ".join(part for part in parts if part) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _refresh(task: LongTask) -> None:
    # A connection a long wait has held may be stale; never close one inside a transaction.
    if not connection.in_atomic_block:
        close_old_connections()
    try:
        task.refresh_from_db()
    except LongTask.DoesNotExist:
        raise CommandError(f"LongTask {task.pk} was deleted while being followed") from None


def retry_message(task: LongTask) -> str:
    """Say which attempt failed, how, and when the next one runs."""
    message = f"attempt {task.attempts} failed: {task.error}"
    if task.next_attempt_at is not None:
        seconds = max(0, round((task.next_attempt_at - timezone.now()).total_seconds()))
        message += f"; next try in {seconds} s"
    return message


def follow(task: LongTask, stream: Stream, *, interval: float = POLL_SECONDS) -> LongTask:
    """Poll ``task`` until it finishes, showing its progress, message and ETA."""
    display = Display(stream, f"{task.kind} {str(task.pk)[:8]}")
    try:
        while True:
            _refresh(task)
            record = task.progress_record()
            payload = progress.payload(record)
            eta = None if task.is_finished else progress.eta_seconds(record)
            current, total = payload["current"], payload["total"]
            if task.status == Status.SUCCEEDED and not total:
                current = total = 1  # nothing was reported: show it complete
            message = payload["message"]
            if task.status == Status.RETRYING:
                message = retry_message(task)
            display.show(Snapshot(current, total, message, eta, task.status))
            if task.is_finished:
                return task
            pause(interval)
    finally:
        display.close()


def follow_many(
    tasks: list[LongTask], stream: Stream, *, interval: float = POLL_SECONDS
) -> dict[str, int]:
    """Poll ``tasks`` until all have finished, with one bar; return the count per status."""
    ids = [task.pk for task in tasks]
    display = Display(stream, "batch")
    began = time.monotonic()
    try:
        while True:
            if not connection.in_atomic_block:
                close_old_connections()
            statuses = dict(LongTask.objects.filter(pk__in=ids).values_list("pk", "status"))
            counts = dict.fromkeys(Status.values, 0)
            for status in statuses.values():
                counts[status] += 1
            counts["DELETED"] = len(ids) - len(statuses)
            done = counts["DELETED"] + sum(counts[s] for s in FINISHED_STATUSES)
            summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
            status = "FINISHED" if done == len(ids) else "RUNNING"
            elapsed = time.monotonic() - began
            # The batch's ETA: tasks left at the rate tasks have finished so far.
            eta = None
            if 0 < done < len(ids) and elapsed > 0:
                eta = round((len(ids) - done) * elapsed / done)
            display.show(Snapshot(done, len(ids), summary, eta, status))
            if done == len(ids):
                return counts
            pause(interval)
    finally:
        display.close()

"""Workers tell the web processes of their machine that a task changed: one datagram.

The embedded default has no channel layer that crosses processes, but all its processes
share one machine and one SQLite file. Each web process that watches a task binds a Unix
datagram socket in a directory beside the database (``<database>.live/<pid>``, mode
0700: only the user that runs the site can send to it). After a change commits, a
worker sends the task's id (32 hex digits, no data) to every socket there, without
waiting: a full socket buffer drops the message, a socket left by a killed process is
removed. The watcher of that task then reads it at once (at most every
LONGTASK_LIVE_PUSH_INTERVAL), instead of every LONGTASK_LIVE_INTERVAL; it still reads
every LONGTASK_LIVE_FALLBACK seconds in case a message was lost, as with Redis.

Only on SQLite: with PostgreSQL, workers may run on other machines, whose changes would
wait for the fallback read; there the web process polls unless Redis carries pushes.
LONGTASK_LIVE_LOCAL_PUSH = False turns it off.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import stat
import time
from functools import cache
from pathlib import Path
from uuid import UUID

from django.db import connections

from longtask.conf import settings

logger = logging.getLogger("longtask")

#: The longest path a Unix socket may have (sun_path, less its final NUL).
MAX_PATH = 107
#: A directory listing made this soon after the directory changed may miss a change made
#: within the file system's timestamp granularity; such a listing is made again next time.
RACY = 0.05


def directory() -> Path | None:
    """Where the web processes' sockets are, or None when changes are not sent this way."""
    database = connections["default"]
    return _directory(
        bool(settings.LIVE_LOCAL_PUSH), database.vendor, str(database.settings_dict.get("NAME"))
    )


@cache
def _directory(on: bool, vendor: str, name: str) -> Path | None:
    in_memory = name == ":memory:" or (name.startswith("file:") and "mode=memory" in name)
    if not on or vendor != "sqlite" or name in {"", "None"} or in_memory:
        return None
    path = Path(name).resolve()
    where = path.with_name(path.name + ".live")
    if len(os.fsencode(where / "4194304")) > MAX_PATH:
        logger.info("live pushes off: %s is too long a path for a socket; polling", where)
        return None
    return where


def enabled() -> bool:
    """Say whether this machine's workers push changes to its web processes."""
    return directory() is not None


# The workers' side.

_sender: socket.socket | None = None
_sender_pid = 0
#: The last listing: its directory, the directory's mtime then, when it was made, the sockets.
_listing: tuple[Path | None, int, int, list[str]] = (None, -1, 0, [])


def _targets(where: Path) -> list[str]:
    """The web processes' sockets: listed again only when the directory changed."""
    global _listing
    try:
        changed = os.stat(where).st_mtime_ns
    except FileNotFoundError:
        return []
    listed, mtime, listed_at, paths = _listing
    if listed == where and changed == mtime and listed_at - mtime > RACY * 1e9:
        return paths
    now = time.time_ns()
    with os.scandir(where) as entries:
        paths = [entry.path for entry in entries if entry.name.isdigit()]
    _listing = (where, changed, now, paths)
    return paths


def notify(task_id: UUID | str) -> None:
    """Send ``task_id`` to this machine's web processes; never raises, never waits."""
    global _sender, _sender_pid
    where = directory()
    if where is None:
        return
    try:
        message = UUID(str(task_id)).hex.encode()
    except ValueError:
        return  # not a task's id: no web process watches it
    try:
        if _sender is None or _sender_pid != os.getpid():  # none yet, or a fork's copy
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
            _sender_pid = os.getpid()
        for path in _targets(where):
            try:
                _sender.sendto(message, path)
            except BlockingIOError:
                pass  # that process is behind: a hint less, its fallback read still comes
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # left by a process that was killed
                    os.unlink(path)
    except OSError:
        logger.warning("could not push a change of LongTask id=%s", task_id, exc_info=True)


# The web processes' side.


class Receiver:
    """This process's socket: sets the events of the watchers of each task it is sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: Path) -> None:
        self.loop = loop
        self.interest: dict[str, set[asyncio.Event]] = {}
        where.mkdir(mode=0o700, exist_ok=True)
        info = where.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(f"{where} must belong to this user alone (mode 0700)")
        self.path = str(where / str(os.getpid()))
        with contextlib.suppress(FileNotFoundError):  # this pid's, from a killed process
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(self.path)
        loop.add_reader(self.sock.fileno(), self._readable)
        atexit.register(self.close)

    def _readable(self) -> None:
        while True:
            try:
                message = self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logger.warning("live pushes: the socket failed; polling", exc_info=True)
                self.close()
                return
            for event in self.interest.get(message.decode("ascii", "replace"), ()):
                event.set()

    def add(self, task_id: UUID, changed: asyncio.Event) -> None:
        self.interest.setdefault(task_id.hex, set()).add(changed)

    def discard(self, task_id: UUID, changed: asyncio.Event) -> None:
        events = self.interest.get(task_id.hex)
        if events is not None:
            events.discard(changed)
            if not events:
                del self.interest[task_id.hex]

    @property
    def open(self) -> bool:
        return self.sock.fileno() >= 0

    def close(self) -> None:
        if not self.open:
            return
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


_receivers: dict[int, Receiver] = {}


def receiver() -> Receiver | None:
    """This process's receiver on the running loop (bound at the first call), or None."""
    where = directory()
    if where is None:
        return None
    loop = asyncio.get_running_loop()
    found = _receivers.get(os.getpid())
    if found is not None and found.loop is loop and found.open:
        return found
    if found is not None:
        found.close()  # a loop that ended (tests run one per test), or a fork's copy
    try:
        made = _receivers[os.getpid()] = Receiver(loop, where)
    except OSError:
        logger.warning("live pushes off: could not listen in %s; polling", where, exc_info=True)
        return None
    return made

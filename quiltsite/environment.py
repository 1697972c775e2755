"""Reading the demo site's settings from environment variables (see docs/configuration.md)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def secret_key_file(path: Path) -> str:
    """A per-install key, generated once and kept beside the database (mode 0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


def queues_from_env(spec: str) -> dict[str, dict[str, object]]:
    """Named queues: `default` runs tasks and splits fan-outs, `subtasks` runs subtasks.

    LONGTASK_QUEUES adds queues or changes them, e.g.
    "subtasks:rate=20/s,burst=20,max_concurrency=4;reports:workers=1".
    Each queue is served by a django-q2 cluster of its own (`manage.py longtask_worker
    --queue NAME`), so a flood on one never starves another.
    """
    queues: dict[str, dict[str, object]] = {
        "default": {"cluster": None, "workers": env_int("LONGTASK_WORKERS", 2)},
        "subtasks": {"workers": env_int("LONGTASK_SUBTASK_WORKERS", 2)},
    }
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, options = entry.partition(":")
        queue = queues.setdefault(name.strip(), {})
        for option in filter(None, (part.strip() for part in options.split(","))):
            key, _, value = option.partition("=")
            key, value = key.strip(), value.strip()
            queue[key] = int(value) if key in {"workers", "burst", "max_concurrency"} else value
    for name, queue in queues.items():
        queue.setdefault("cluster", f"longtask-{name}")
        queue.setdefault("workers", 2)
    return queues

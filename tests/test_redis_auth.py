"""A Redis that refuses the site's password stops commands at once, in one line.

Service pass only: it starts a Redis server of its own, with a password, on a free
port (never the shared one), and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import services
from tests.helpers import wait_for
from tests.processes import ROOT

pytestmark = [services, pytest.mark.integration]

PASSWORD = "right-horse-battery"
#: Generous: the machine is shared and small; a loop would run until this kills it.
COMMAND_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """Run a redis-server with a password on a free port; yield the port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    import redis

    port = free_port()
    options = ["--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [server, "--port", str(port), *options, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(answers, 30, f"redis-server on port {port}")
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def manage(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py with the demo site's settings on SQLite and ``redis_url``."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="quiltsite.settings",
        LONGTASK_DATA_DIR=str(tmp_path),
        REDIS_URL=redis_url,
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("password", ["wrong-password", None])
@pytest.mark.parametrize("command", [["check"], ["longtask_worker", "--queue", "default"]])
def test_a_refused_password_stops_the_command_with_one_line(
    tmp_path, private_redis, command, password
):
    auth = f":{password}@" if password else ""
    done = manage(tmp_path, f"redis://{auth}127.0.0.1:{private_redis}/0", *command)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if "longtask.E010" in line]
    assert f"127.0.0.1:{private_redis}/0 refused the credentials" in line
    assert "wrong-password" not in output and PASSWORD not in output


def test_the_right_password_passes_the_check(tmp_path, private_redis):
    done = manage(tmp_path, f"redis://:{PASSWORD}@127.0.0.1:{private_redis}/0", "check")
    assert done.returncode == 0, done.stdout + done.stderr

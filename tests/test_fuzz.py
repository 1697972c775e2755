"""Hostile input, generated: never a 500, never an unhandled exception (see SECURITY.md)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import longtask
from longtask.kinds import registry
from longtask.management import cli
from quiltsite.asgi import application

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Values a form field may be sent: any text, numbers as text, and the usual troublemakers.
NASTY = st.sampled_from(
    ["", " ", "nan", "inf", "-inf", "1e309", "-0", "9" * 5000, "\x00", "<script>", "'\"", "٣"]
)
FIELD_VALUES = st.one_of(
    st.text(max_size=50),
    st.integers().map(str),
    st.floats().map(str),
    NASTY,
    st.text(min_size=1000, max_size=3000),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@pytest.fixture(autouse=True)
def _no_limits(settings, test_kinds_registered):
    # The forms are under test here; the limits have tests of their own.
    settings.LONGTASK_STARTS_PER_MINUTE = None
    settings.LONGTASK_MAX_ACTIVE_TASKS = None
    settings.LONGTASK_MAX_QUEUED_SUBTASKS = None


def form_data(kind_name: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = [*registry.get(kind_name).form_class.base_fields, "extra", "n", "rows"]
    return st.dictionaries(
        st.sampled_from(fields) | st.text(max_size=10), FIELD_VALUES | st.lists(FIELD_VALUES)
    )


@pytest.mark.parametrize("kind", ["report", "quilt", "recount", "test-count", "test-squares"])
def test_start_forms_answer_303_or_400_whatever_is_posted(client, kind):
    @FUZZ
    @given(data=form_data(kind))
    def check(data: dict[str, Any]) -> None:
        response = client.post(f"/tasks/new/{kind}/", data)
        assert response.status_code in (303, 400, 413), response.status_code

    check()


def test_json_endpoints_and_the_since_cursor_never_fail(client):
    task = longtask.start("test-squares", {"n": 2})

    @FUZZ
    @given(since=st.text() | st.integers().map(str) | NASTY, other=st.uuids())
    def check(since: str, other: uuid.UUID) -> None:
        response = client.get(f"/tasks/{task.pk}/subtasks.json", {"since": since})
        assert response.status_code in (200, 400)
        body = response.json()
        assert ("cursor" in body) == (response.status_code == 200)
        assert client.get(f"/tasks/{task.pk}.json", {"x": since}).status_code == 200
        assert client.get(f"/tasks/{task.pk}/", {"since": since}).status_code == 200
        for path in (f"/tasks/{other}.json", f"/tasks/{other}/subtasks.json"):
            assert client.get(path, {"since": since}).status_code == 404

    check()


@FUZZ
@given(tokens=st.lists(st.text(max_size=30) | NASTY, max_size=6))
def test_key_value_parsing_returns_strings_or_exits_2(tokens):
    try:
        params = cli.parse_assignments(tokens)
    except CommandError as exc:
        assert exc.returncode == 2
    else:
        assert all(isinstance(v, str) for v in params.values())


def test_the_cli_start_never_crashes(user):
    @FUZZ
    @given(values=st.lists(FIELD_VALUES, max_size=3), owner=st.booleans())
    def check(values: list[str], owner: bool) -> None:
        args = [f"{key}={value}" for key, value in zip(["n", "message", "x"], values, strict=False)]
        args += ["--owner", "alice"] if owner else []
        try:
            call_command("longtask", "start", "test-count", *args, stdout=io.StringIO())
        except CommandError as exc:
            assert exc.returncode in (1, 2), str(exc)

    check()


def test_jsonl_parsing_and_batch_never_crash(tmp_path):
    path = tmp_path / "lines.jsonl"

    @FUZZ
    @given(lines=st.lists(JSON.map(json.dumps) | st.text(max_size=40), max_size=5))
    def check(lines: list[str]) -> None:
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            parsed = cli.read_jsonl(str(path))
        except CommandError as exc:
            assert exc.returncode == 2
            return
        assert all(isinstance(data, dict) for _, data in parsed)
        try:
            call_command("longtask", "batch", "test-count", str(path), stdout=io.StringIO())
        except CommandError as exc:
            assert exc.returncode in (1, 2), str(exc)

    check()


def test_deeply_nested_jsonl_is_bad_input(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CommandError):
        cli.read_jsonl(str(path))


FRAMES = st.one_of(
    JSON.map(json.dumps),
    st.dictionaries(st.just("type"), JSON | st.text()).map(json.dumps),
    st.text(max_size=200),
    st.just("[" * 50_000),
    st.just("[" * 4000 + "]" * 4000),  # deep, under the length cap
    st.just(json.dumps({"type": "ping", "pad": "x" * 10_000})),
    st.binary(max_size=50),
)


@pytest.mark.django_db(transaction=True)
def test_the_websocket_survives_any_frame(settings):
    settings.LONGTASK_LIVE_INTERVAL = 0.02
    task = longtask.start("test-count", {"n": 1})

    @FUZZ
    @given(frames=st.lists(FRAMES, min_size=1, max_size=3), since=st.text(max_size=12))
    def check(frames: list[str | bytes], since: str) -> None:
        asyncio.run(talk(f"/ws/tasks/{task.pk}/?since={since}", frames))

    check()


async def talk(path: str, frames: list[str | bytes]) -> None:
    """Send ``frames``; every answer is a pong, an error frame or a 4400/4404 close."""
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
    ws = WebsocketCommunicator(application, path, headers=headers)
    assert (await ws.connect(20))[0]
    first = await ws.receive_output(20)
    if first["type"] == "websocket.close":
        assert first["code"] == 4400
        await ws.disconnect(timeout=5)  # re-raises whatever the consumer raised
        return
    assert json.loads(first["text"])["type"] == "snapshot"
    for frame in frames:
        # send_input, not send_to: an empty frame is hostile input too.
        key = "bytes" if isinstance(frame, bytes) else "text"
        await ws.send_input({"type": "websocket.receive", key: frame})
        answer = await ws.receive_output(20)
        if answer["type"] == "websocket.close":
            assert answer["code"] == 4400
            break
        assert json.loads(answer["text"])["type"] in ("pong", "error")
    await ws.disconnect(timeout=5)  # re-raises whatever the consumer raised

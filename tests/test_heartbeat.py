"""The process's heartbeat thread: each running block is beaten every interval, and
blocks that start and end do not wake the thread each (engine/heartbeat.py)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from longtask.engine import heartbeat
from tests.helpers import wait_for


@pytest.fixture
def beater(monkeypatch: pytest.MonkeyPatch, settings: Any) -> heartbeat._Beater:
    """A heartbeat thread of the test's own (the process's may hold other tests' state),
    which sleeps 60 s at a time while it has nothing to beat."""
    settings.LONGTASK_HEARTBEAT_INTERVAL = 60
    fresh = heartbeat._Beater()
    monkeypatch.setitem(heartbeat._instance, os.getpid(), fresh)
    return fresh


def _counting() -> tuple[list[int], heartbeat.Heartbeat]:
    beats: list[int] = []

    def beat() -> bool:
        beats.append(1)
        return True

    return beats, heartbeat.Heartbeat(beat, interval=0.05)


def test_a_block_is_beaten_every_interval(beater):
    beats, block = _counting()
    with block:
        wait_for(lambda: len(beats) >= 3, 5, "three beats")


def test_a_shorter_interval_added_while_the_thread_sleeps_is_beaten_on_time(beater):
    """The thread sleeps until the 60 s block's beat: the 50 ms block must wake it."""
    with heartbeat.Heartbeat(lambda: True, interval=60):
        wait_for(lambda: beater._wake_at > time.monotonic() + 30, 5, "the thread asleep")
        beats, block = _counting()
        with block:
            wait_for(lambda: len(beats) >= 2, 5, "two beats of the 50 ms block")


def test_runs_that_start_and_end_do_not_wake_the_thread_each(beater, monkeypatch):
    """A quick task's run adds its block and removes it within a millisecond: its beat
    is due after the thread wakes anyway, so nothing wakes it (one wake-up per run, two
    switches of the GIL, cost quick tasks a few percent)."""
    with heartbeat.Heartbeat(lambda: True, interval=60):  # the thread now sleeps ~60 s
        wait_for(lambda: beater._wake_at > time.monotonic() + 30, 5, "the thread asleep")
        woken: list[int] = []
        notify = beater._changed.notify
        monkeypatch.setattr(beater._changed, "notify", lambda n=1: woken.append(n) or notify(n))
        for _ in range(300):
            with heartbeat.Heartbeat(lambda: True, interval=60):
                pass
        assert woken == []


def test_the_thread_outlives_a_failure_to_tidy_its_connection(beater, monkeypatch):
    """With the database away, Django's check of the connection raises: the thread went
    with it, and no run of the process beat again."""
    failures: list[int] = []

    def away() -> None:
        failures.append(1)
        raise RuntimeError("the database is away")

    monkeypatch.setattr(heartbeat, "close_old_connections", away)
    beats, block = _counting()
    with block:
        wait_for(lambda: len(beats) >= 3, 5, "three beats, each followed by a failed tidy")
    assert len(failures) >= 2

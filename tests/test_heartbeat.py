"""The process's heartbeat thread: each running block is beaten every interval, and
blocks that start and end do not wake the thread each (engine/heartbeat.py)."""

from __future__ import annotations

import time

from django.test import override_settings

from longtask.engine import heartbeat
from tests.helpers import wait_for


def _counting() -> tuple[list[int], heartbeat.Heartbeat]:
    beats: list[int] = []

    def beat() -> bool:
        beats.append(1)
        return True

    return beats, heartbeat.Heartbeat(beat, interval=0.05)


def test_a_block_is_beaten_every_interval():
    beats, block = _counting()
    with block:
        wait_for(lambda: len(beats) >= 3, 5, "three beats")


@override_settings(LONGTASK_HEARTBEAT_INTERVAL=60)
def test_a_shorter_interval_added_while_the_thread_sleeps_is_beaten_on_time():
    """The thread sleeps until the 60 s block's beat: the 50 ms block must wake it."""
    beater = heartbeat._beater()
    with heartbeat.Heartbeat(lambda: True, interval=60):
        wait_for(lambda: beater._wake_at > time.monotonic() + 30, 5, "the thread asleep")
        beats, block = _counting()
        with block:
            wait_for(lambda: len(beats) >= 2, 5, "two beats of the 50 ms block")


@override_settings(LONGTASK_HEARTBEAT_INTERVAL=60)
def test_runs_that_start_and_end_do_not_wake_the_thread_each(monkeypatch):
    """A quick task's run adds its block and removes it within a millisecond: its beat
    is due after the thread wakes anyway, so nothing wakes it (one wake-up per run, two
    switches of the GIL, cost quick tasks a few percent)."""
    beater = heartbeat._beater()
    with heartbeat.Heartbeat(lambda: True, interval=60):  # the thread now sleeps ~60 s
        wait_for(lambda: beater._wake_at > time.monotonic() + 30, 5, "the thread asleep")
        woken: list[int] = []
        notify = beater._changed.notify
        monkeypatch.setattr(beater._changed, "notify", lambda n=1: woken.append(n) or notify(n))
        for _ in range(300):
            with heartbeat.Heartbeat(lambda: True, interval=60):
                pass
        assert woken == []

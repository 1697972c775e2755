from __future__ import annotations

import datetime
import os
import signal

import pytest
from django.db import close_old_connections

import longtask
from longtask.engine import run as runner
from longtask.models import LongTask, Status
from quiltsite.models import Invoice
from quiltsite.recount import Recount
from tests import broker
from tests.helpers import claim, drain_queue, wait_for
from tests.processes import group_alive, qcluster

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_queues():
    yield from broker.emptied()


def seed(n: int) -> None:
    """n invoices whose stored total is wrong (0)."""
    day = datetime.date(2020, 1, 1)
    Invoice.objects.bulk_create(
        Invoice(
            date=day + datetime.timedelta(days=i // 100),
            number=i % 100 + 1,
            customer="c",
            amount_cents=i + 1,
            vat_cents=1,
            total_cents=0,
        )
        for i in range(n)
    )


def wrong_totals() -> int:
    from django.db.models import F

    return Invoice.objects.exclude(total_cents=F("amount_cents") + F("vat_cents")).count()


def test_recount_walks_every_row_in_batches(monkeypatch):
    seed(2500)
    monkeypatch.setattr(Recount, "batch_size", 1000)
    task = longtask.start("recount", {})
    jobs = drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert jobs == 3  # one job per batch
    assert task.result == {"rows": 2500}
    assert (task.rows_done, task.rows_total) == (2500, 2500)
    assert task.last_progress["current"] == 2500 and task.last_progress["total"] == 2500
    assert task.attempts == 1  # counted per batch
    assert wrong_totals() == 0


def test_recount_resumes_from_the_cursor_after_a_lost_batch(monkeypatch):
    seed(300)
    monkeypatch.setattr(Recount, "batch_size", 100)
    task = longtask.start("recount", {})
    broker.clear()
    runner.run(str(task.pk))  # batch 1 commits, batch 2 is queued
    task.refresh_from_db()
    assert task.rows_done == 100 and task.status == Status.QUEUED
    # A worker claims batch 2 and dies without committing it.
    claim(task)
    LongTask.objects.filter(pk=task.pk).update(
        heartbeat_at=task.heartbeat_at - datetime.timedelta(minutes=10)
    )
    from longtask.engine.recovery import sweep

    broker.clear()
    assert sweep()["tasks"] == 1
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.rows_done == 300
    assert wrong_totals() == 0


def test_soft_deadline_continues_in_the_next_job(monkeypatch):
    seed(50)
    monkeypatch.setattr(Recount, "batch_size", 50)
    monkeypatch.setattr(Recount, "soft_deadline", 0.000001)
    task = longtask.start("recount", {})
    jobs = drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED and task.rows_done == 50
    assert jobs == 10  # a tenth of a batch per job once past the deadline


@pytest.mark.integration
def test_recount_killed_mid_way_finishes_every_row(tmp_path):
    seed(6000)
    fast = {
        "LONGTASK_HEARTBEAT_INTERVAL": "0.3",
        "LONGTASK_STALE_AFTER": "2",
        "LONGTASK_SWEEP_INTERVAL": "0.5",
    }
    task = longtask.start("recount", {"work_ms": 300})
    log = tmp_path / "workers.log"

    def rows_done() -> int:
        close_old_connections()
        task.refresh_from_db()
        return task.rows_done

    with qcluster(log, **fast) as doomed:
        wait_for(lambda: rows_done() >= 2000, 60, "two batches to commit")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        wait_for(lambda: not group_alive(doomed.pid), 10, "the killed cluster to vanish")
    assert rows_done() < 6000
    with qcluster(log, command=("longtask_worker", "--queue", "default"), **fast):
        wait_for(lambda: rows_done() == 6000 and task.is_finished, 120, "the recount to finish")
    assert task.status == Status.SUCCEEDED, (task.error, log.read_text()[-3000:])
    assert wrong_totals() == 0


def test_recount_form_rejects_bad_years():
    with pytest.raises(longtask.InvalidParameters):
        longtask.start("recount", {"year": "1066"})
    assert not LongTask.objects.exists()

"""longtask as a django.tasks backend: enqueue, results, execution, signals (in-process)."""

from __future__ import annotations

import datetime
import io
import json
import re
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection, transaction
from django.tasks import TaskResultStatus, default_task_backend, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.exceptions import TimeoutException

import longtask
from longtask import api
from longtask.backends import STATUS_MAP, LongTaskBackend, LongTaskTask, dedup_name
from longtask.engine import recovery, states
from longtask.engine.heartbeat import node_name
from longtask.exceptions import Cancelled, TimeLimitExceeded
from longtask.models import TOTALS, LongTask, Status, TaskMinute
from tests import broker
from tests import tasks_sample as sample
from tests.helpers import drain_queue
from tests.processes import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    sample.FLAKY.update(fail=0, calls=0)
    yield from broker.emptied()


def test_the_default_backend_is_longtask_with_truthful_flags():
    assert isinstance(task_backends["default"], LongTaskBackend)
    assert isinstance(sample.noop_task, LongTaskTask)
    backend = task_backends["default"]
    assert backend.supports_defer and backend.supports_get_result
    assert backend.supports_async_task
    assert not backend.supports_priority


def test_enqueue_stores_a_longtask_and_returns_a_ready_result():
    result = sample.noop_task.enqueue(1, (2, 3), key={"a": (4,)})
    row = LongTask.objects.get(pk=result.id)
    assert row.kind == "task:tests.tasks_sample.noop_task"
    assert row.parameters == {"args": [1, [2, 3]], "kwargs": {"key": {"a": [4]}}}
    assert row.queue == "default" and row.owner is None
    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert result.args == [1, [2, 3]] and result.kwargs == {"key": {"a": [4]}}
    assert result.enqueued_at == row.created_at
    assert result.started_at is result.finished_at is result.last_attempted_at is None
    assert result.errors == [] and result.worker_ids == [] and result.attempts == 0
    assert result.backend == "default" and result.task == sample.noop_task
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    assert broker.count() == 1


def test_enqueue_refuses_arguments_that_are_not_json():
    with pytest.raises(TypeError):
        sample.noop_task.enqueue(object())
    assert not LongTask.objects.exists()


def test_get_result_and_refresh_follow_the_row():
    result = sample.calculate_meaning_of_life.enqueue()
    fetched = default_task_backend.get_result(result.id)
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY
    assert sample.calculate_meaning_of_life.get_result(result.id).id == result.id
    drain_queue()
    assert result.status == TaskResultStatus.READY  # a snapshot until refreshed
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    async_result = async_to_sync(sample.calculate_meaning_of_life.aget_result)(result.id)
    assert async_result.return_value == 42


def test_unknown_and_foreign_ids_do_not_exist(test_kinds_registered):
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(missing)
    kind_task = longtask.start("test-count", {"n": 1})  # a kind's task is no task result
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(kind_task.pk))


def test_a_result_of_another_function_is_a_mismatch():
    result = sample.noop_task.enqueue()
    with pytest.raises(TaskResultMismatch):
        sample.calculate_meaning_of_life.get_result(result.id)


def test_a_successful_run_records_times_worker_and_return_value():
    result = sample.echo.enqueue(1, "two", three=[3])
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"args": [1, "two"], "kwargs": {"three": [3]}}
    assert result.enqueued_at <= result.started_at <= result.last_attempted_at
    assert result.last_attempted_at <= result.finished_at
    assert result.worker_ids == [node_name()] and result.attempts == 1
    assert result.errors == []


def _statements(queries: list[dict[str, str]]) -> list[str]:
    """The statements among captured queries (not BEGIN, COMMIT or savepoints)."""
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")
    return [q["sql"] for q in queries if not q["sql"].lstrip().upper().startswith(control)]


def test_a_run_costs_four_statements_in_two_transactions():
    """Claim: move the row, add its runs entry and return it (one UPDATE ... RETURNING),
    count the start; finish: move it, count the end. A queue with limits adds a read first.

    On PostgreSQL each count joins its move's statement (a WITH query), and each of the
    two statements is a transaction of its own: no BEGIN or COMMIT round trips."""
    result = sample.noop_task.enqueue()
    (job,) = broker.jobs()
    broker.clear()
    with CaptureQueriesContext(connection) as captured:
        broker.run(job.package)
    statements = _statements(captured.captured_queries)
    begun = sum(q["sql"].startswith("BEGIN") for q in captured.captured_queries)
    if connection.vendor == "postgresql":
        assert (len(statements), begun) == (2, 0), "\n".join(statements)
    else:
        assert (len(statements), begun) == (4, 2), "\n".join(statements)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.worker_ids == [node_name()]
    row = TaskMinute.objects.get(minute=TOTALS, kind=f"task:{sample.noop_task.module_path}")
    assert (row.started, row.succeeded, row.runs, row.runs_le_1) == (1, 1, 1, 1)


@pytest.mark.parametrize(
    ("func", "exception", "message"),
    [
        (sample.failing_task_value_error, ValueError, "This task failed due to ValueError"),
        (sample.complex_exception, ValueError, "This task failed"),
        (sample.failing_task_system_exit, SystemExit, "This task failed due to SystemExit"),
        (sample.exit_task, SystemExit, "exit_task"),
    ],
)
def test_an_exception_fails_the_task_once_with_its_class_and_traceback(func, exception, message):
    result = func.enqueue()
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.finished_at is not None
    assert len(result.errors) == 1 and result.attempts == 1  # one attempt, as in Django
    error = result.errors[0]
    assert error.exception_class is exception
    assert error.traceback.startswith("Traceback (most recent call last)")
    assert message in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value


def test_a_return_value_that_is_not_json_fails_with_type_error():
    result = sample.not_json_return.enqueue()
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError


def test_context_tasks_get_their_result_and_attempt():
    first = sample.get_task_id.enqueue()
    second = sample.check_context.enqueue(attempt=1)
    drain_queue()
    first.refresh()
    second.refresh()
    assert first.return_value == first.id
    assert second.status == TaskResultStatus.SUCCESSFUL and second.return_value == 1


def test_async_tasks_run_to_completion():
    added = sample.add_async.enqueue(2, 3)
    noop = sample.noop_task_async.enqueue()
    drain_queue()
    added.refresh()
    noop.refresh()
    assert added.return_value == 5
    assert noop.status == TaskResultStatus.SUCCESSFUL and noop.return_value is None


def test_aenqueue_works():
    result = async_to_sync(sample.calculate_meaning_of_life.aenqueue)()
    drain_queue()
    async_to_sync(result.arefresh)()
    assert result.return_value == 42


def test_signals_are_sent_with_djangos_arguments():
    seen: list[tuple[str, Any, str]] = []

    def receiver(name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, sender, task_result.status))

        return receive

    receivers = {
        signal: receiver(name)
        for signal, name in (
            (task_enqueued, "enqueued"),
            (task_started, "started"),
            (task_finished, "finished"),
        )
    }
    for signal, receive in receivers.items():
        signal.connect(receive)
    try:
        sample.noop_task.enqueue()
        sample.failing_task_value_error.enqueue()
        drain_queue()
    finally:
        for signal, receive in receivers.items():
            signal.disconnect(receive)
    assert seen == [
        ("enqueued", LongTaskBackend, TaskResultStatus.READY),
        ("enqueued", LongTaskBackend, TaskResultStatus.READY),
        ("started", LongTaskBackend, TaskResultStatus.RUNNING),
        ("finished", LongTaskBackend, TaskResultStatus.SUCCESSFUL),
        ("started", LongTaskBackend, TaskResultStatus.RUNNING),
        ("finished", LongTaskBackend, TaskResultStatus.FAILED),
    ]


def test_run_after_delays_the_job_and_the_row():
    later = timezone.now() + datetime.timedelta(hours=1)
    result = sample.noop_task.using(run_after=later).enqueue()
    row = LongTask.objects.get(pk=result.id)
    assert row.due_at == later
    [job] = broker.jobs()
    assert job.eta is not None and abs((job.eta - later).total_seconds()) < 1
    assert recovery.sweep()["requeued"] == 0  # a deferred task is not a lost one


def test_invalid_tasks_are_refused():
    with pytest.raises(InvalidTask, match="priority"):
        sample.noop_task.using(priority=10)
    with pytest.raises(InvalidTask, match="Queue"):
        sample.noop_task.using(queue_name="nowhere")
    with pytest.raises(InvalidTask, match="aware"):
        sample.noop_task.using(run_after=datetime.datetime(2030, 1, 1))


def test_the_check_names_queues_longtask_does_not_have():
    assert default_task_backend.check() == []
    backend = LongTaskBackend("other", {"QUEUES": ["default", "elsewhere"]})
    [error] = backend.check()
    assert error.id == "longtask.E020" and "elsewhere" in error.msg


def test_subtasks_queue_is_a_valid_queue_name():
    result = sample.noop_task.using(queue_name="subtasks").enqueue()
    assert LongTask.objects.get(pk=result.id).queue == "subtasks"
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL


def test_retries_are_opt_in_and_keep_one_error_and_worker_per_attempt():
    sample.FLAKY["fail"] = 2
    result = sample.flaky_task.enqueue()
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert result.attempts == 3 and result.worker_ids == [node_name()] * 3
    assert [e.exception_class for e in result.errors] == [ConnectionError, ConnectionError]
    assert result.errors[0].traceback == "ConnectionError: not yet"  # earlier: the error line
    assert result.errors[1].traceback.startswith("Traceback (most recent call last)")


def test_a_retrying_task_is_ready():
    sample.FLAKY["fail"] = 1
    result = sample.flaky_task.enqueue()
    broker.run_next()
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert LongTask.objects.get(pk=result.id).status == Status.RETRYING
    assert len(result.errors) == 1 and result.attempts == 1


def test_fatal_exceptions_fail_at_once():
    result = sample.fatal_task.enqueue()
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 1
    assert result.errors[0].exception_class is KeyError


def test_a_time_limit_goes_with_the_job_and_fails_the_attempt():
    result = sample.over_time.enqueue()
    [job] = broker.jobs()
    assert job.package["timeout"] == 7
    with pytest.raises(TimeoutException):  # django-q2 then replaces the worker process
        drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 1
    assert result.errors[0].exception_class is TimeLimitExceeded


def test_progress_reaches_the_row():
    result = sample.with_progress.enqueue(4)
    drain_queue()
    row = LongTask.objects.get(pk=result.id)
    assert row.status == Status.SUCCEEDED
    assert row.last_progress["current"] == 4 and row.last_progress["total"] == 4
    assert row.last_progress["message"] == "step 4"


def test_progress_and_cancelled_outside_a_task_do_nothing():
    longtask.set_progress(1, 2, "nobody listens")
    assert longtask.cancelled() is False


def test_a_cancelled_task_is_failed_and_its_errors_say_so():
    queued = sample.noop_task.enqueue()
    assert api.cancel(LongTask.objects.get(pk=queued.id))
    running = sample.cancel_self.enqueue()
    drain_queue()
    for result in (queued, running):
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[-1].exception_class is Cancelled
    assert queued.worker_ids == [] and running.attempts == 1


def claim_and_die(result_id: str) -> None:
    """Start an attempt as a worker does, up to the kind's run; then the worker "dies"."""
    assert states.claim(result_id, keep_runs=lambda kind: True) is not None


def test_a_lost_worker_is_recovered_with_a_second_worker_id():
    result = sample.flaky_task.enqueue()
    broker.clear()
    claim_and_die(result.id)
    stale = timezone.now() - datetime.timedelta(minutes=5)
    LongTask.objects.filter(pk=result.id).update(heartbeat_at=stale)
    assert recovery.sweep()["tasks"] == 1
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.attempts == 2
    assert result.errors[0].exception_class is RuntimeError
    assert "WorkerLost" in result.errors[0].traceback


def test_a_lost_worker_fails_a_task_without_retries():
    result = sample.noop_task.enqueue()
    broker.clear()
    claim_and_die(result.id)
    stale = timezone.now() - datetime.timedelta(minutes=5)
    LongTask.objects.filter(pk=result.id).update(heartbeat_at=stale)
    recovery.sweep()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.worker_ids == [node_name()]


def test_retry_runs_a_failed_task_again_with_the_same_arguments():
    sample.FLAKY["fail"] = 3
    result = sample.flaky_task.enqueue()
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and len(result.errors) == 3
    assert api.retry(LongTask.objects.get(pk=result.id))
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.attempts == 4


def test_the_status_page_and_json_show_a_task_to_viewers_only(client, django_user_model):
    result = sample.with_progress.enqueue(2)
    drain_queue()
    row = LongTask.objects.get(pk=result.id)
    assert client.get(row.get_absolute_url()).status_code == 404  # no owner: not open by URL
    viewer = django_user_model.objects.create_user("viewer", password="pw")
    viewer.user_permissions.add(Permission.objects.get(codename="view_longtask"))
    client.force_login(viewer)
    page = client.get(row.get_absolute_url())
    assert page.status_code == 200
    assert "tests.tasks_sample.with_progress" in page.content.decode()
    data = client.get(reverse("longtask:status_json", args=[row.pk])).json()
    assert data["status"] == "SUCCEEDED" and data["result"] == 2


def test_the_readme_mapping_table_is_the_code_s():
    table = (ROOT / "README.md").read_text().split("## Using django.tasks")[1].split("\n## ")[0]
    documented = {}
    for statuses, mapped in re.findall(r"^\| (`[A-Z`, ]+`) \| `([A-Z]+)` \|", table, re.M):
        for status in re.findall(r"`([A-Z]+)`", statuses):
            documented[status] = mapped
    assert documented == {status.value: mapped.value for status, mapped in STATUS_MAP.items()}


@override_settings(
    TASKS={"default": {"BACKEND": "longtask.backends.LongTaskBackend", "QUEUES": []}}
)
def test_a_backend_without_queues_accepts_any_longtask_queue():
    backend = task_backends["default"]
    assert backend.queues == set() and backend.check() == []


def test_using_owner_gives_the_task_an_owner_who_sees_it(client, django_user_model):
    owner = django_user_model.objects.create_user("owner", password="pw")
    other = django_user_model.objects.create_user("other", password="pw")
    with longtask.using_owner(owner):
        owned = sample.noop_task.enqueue()
    unowned = sample.noop_task.enqueue()
    assert LongTask.objects.get(pk=owned.id).owner == owner
    assert LongTask.objects.get(pk=unowned.id).owner is None
    url = reverse("longtask:status", args=[owned.id])
    client.force_login(other)
    assert client.get(url).status_code == 404
    client.force_login(owner)
    assert client.get(url).status_code == 200


def test_the_cli_shows_retries_and_the_admin_lists_a_task(admin_client):
    sample.FLAKY["fail"] = 3
    result = sample.flaky_task.enqueue()
    drain_queue()
    out = io.StringIO()
    call_command("longtask", "show", result.id, "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert shown["kind"] == "task:tests.tasks_sample.flaky_task" and shown["status"] == "FAILED"
    call_command("longtask", "retry", result.id, stdout=io.StringIO())
    drain_queue()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    changelist = admin_client.get(reverse("admin:longtask_longtask_changelist"))
    assert result.id in changelist.content.decode()
    change = admin_client.get(reverse("admin:longtask_longtask_change", args=[result.id]))
    assert change.status_code == 200


def test_an_enqueue_rolled_back_leaves_no_task_job_or_signal():
    seen: list[Any] = []

    def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append(task_result)

    task_enqueued.connect(receive)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            sample.noop_task.enqueue()
            raise RuntimeError("changed my mind")
    finally:
        task_enqueued.disconnect(receive)
    assert not LongTask.objects.exists() and broker.count() == 0 and seen == []


def test_the_demo_sites_count_to_task_reports_progress_and_finishes():
    from quiltsite.tasks import count_to

    result = count_to.enqueue(3, step_ms=0)
    drain_queue()
    result.refresh()
    assert result.return_value == {"counted": 3}
    assert LongTask.objects.get(pk=result.id).last_progress["message"] == "counted 3 of 3"


def test_a_task_finished_receiver_that_raises_changes_nothing(caplog):
    def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver broke")

    task_finished.connect(receive)
    try:
        result = sample.calculate_meaning_of_life.enqueue()
        drain_queue()
    finally:
        task_finished.disconnect(receive)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    assert "receiver broke" in caplog.text


def test_dedup_returns_the_unfinished_task_of_the_same_call():
    seen: list[Any] = []

    def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append(task_result.id)

    task_enqueued.connect(receive)
    try:
        first = sample.dedup_echo.enqueue(1, a=[2], b=3)
        again = sample.dedup_echo.enqueue(1, b=3, a=(2,))  # the same call once normalised
    finally:
        task_enqueued.disconnect(receive)
    assert again.id == first.id and seen == [first.id]  # one task, enqueued once
    assert LongTask.objects.count() == 1 and broker.count() == 1
    row = LongTask.objects.get(pk=first.id)
    assert row.name.startswith("task:tests.tasks_sample.dedup_echo:")
    other = sample.dedup_echo.enqueue(2, a=[2], b=3)  # other arguments: another task
    assert other.id != first.id and LongTask.objects.count() == 2


def test_dedup_lets_a_finished_task_give_up_its_name():
    first = sample.dedup_echo.enqueue("x")
    drain_queue()
    first.refresh()
    assert first.status == TaskResultStatus.SUCCESSFUL
    second = sample.dedup_echo.enqueue("x")
    assert second.id != first.id and second.status == TaskResultStatus.READY
    assert LongTask.objects.get(pk=first.id).name is None
    assert sample.dedup_echo.enqueue("x").id == second.id


def test_dedup_is_per_owner(django_user_model):
    owner = django_user_model.objects.create_user("owner", password="pw")
    anonymous = sample.dedup_echo.enqueue("x")
    with longtask.using_owner(owner):
        owned = sample.dedup_echo.enqueue("x")
        assert sample.dedup_echo.enqueue("x").id == owned.id
    assert owned.id != anonymous.id


def test_without_dedup_the_same_call_makes_two_tasks():
    first = sample.echo.enqueue(1)
    second = sample.echo.enqueue(1)
    assert first.id != second.id and LongTask.objects.count() == 2
    assert set(LongTask.objects.values_list("name", flat=True)) == {None}


def test_dedup_names_take_any_owner_key():
    parameters = {"args": ["x"], "kwargs": {}}
    by_uuid = dedup_name(sample.dedup_echo, parameters, SimpleNamespace(pk=uuid.uuid4()))
    assert re.fullmatch(r"task:tests\.tasks_sample\.dedup_echo:[0-9a-f]{64}", by_uuid)
    assert dedup_name(sample.dedup_echo, parameters, None) != by_uuid

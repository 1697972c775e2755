"""Django 6.1's own backend tests, run against LongTaskBackend and a real worker.

Ported from Django 6.1.3's ``tests/tasks/test_dummy_backend.py`` (enqueue, get_result,
refresh) and ``tests/tasks/test_immediate_backend.py`` (what running a task records), with
Django's sample tasks (``tests/django_tasks/tasks.py``, copied unchanged). The test names
and assertions are Django's; what changes is the setup (``TASKS`` names
LongTaskBackend, and one ``manage.py longtask_worker`` serves this module) and, for the
immediate backend's tests, a wait for the worker where Django's backend has run the task
inside ``enqueue``. Django's log lines of a run come from the worker, so they are read
from its output. Left out: the dummy backend's ``test_clear`` (its own ``clear()``) and
the immediate backend's ``test_cannot_get_result``, ``test_cannot_refresh_result`` and
``test_cannot_pass_run_after`` (this backend supports them). The tests that differ on
purpose are marked so, and listed in docs/django-tasks.md ("Differences from Django's
backends").
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.tasks import TaskResult, TaskResultStatus, default_task_backend, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.test import override_settings
from django.utils import timezone

from longtask.backends import LongTaskBackend
from longtask.engine.heartbeat import node_name
from longtask.models import ACTIVE_STATUSES, LongTask
from tests.django_tasks import tasks as test_tasks
from tests.helpers import wait_for
from tests.processes import qcluster

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: Django's test settings, with this backend (QUEUES empty: every longtask queue).
TASKS = {"default": {"BACKEND": "longtask.backends.LongTaskBackend", "QUEUES": []}}
#: Django's ``QUEUES: ["queue-1"]`` of the validation tests, with a longtask queue.
ONLY_DEFAULT_QUEUE = {"default": {**TASKS["default"], "QUEUES": ["default"]}}
#: A worker that died is noticed in about 2 s (the KeyboardInterrupt test).
FAST_RECOVERY = {
    "LONGTASK_HEARTBEAT_INTERVAL": "0.3",
    "LONGTASK_STALE_AFTER": "2",
    "LONGTASK_SWEEP_INTERVAL": "0.5",
}
#: Generous: the first test also waits for the worker to start.
DEADLINE = 60
#: Django's log lines of a run follow its row within milliseconds.
LOG_DEADLINE = 10


@pytest.fixture(scope="module")
def worker_log(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One worker (cluster, supervisor and sweeper) for the whole module; its output."""
    log = tmp_path_factory.mktemp("conformance") / "worker.log"
    # LONGTASK_NODE unset: the worker ids are host:pid (test_worker_ids_name_the_worker_process).
    with qcluster(log, command=("longtask_worker",), LONGTASK_NODE="", **FAST_RECOVERY):
        yield log


@pytest.fixture(autouse=True)
def _backend(settings: Any, worker_log: Path, transactional_db: None) -> Iterator[None]:
    settings.TASKS = TASKS
    yield
    # Nothing of this test may run on into the next (nor meet the flush of its rows).
    wait_for(
        lambda: not LongTask.objects.filter(status__in=ACTIVE_STATUSES).exists(),
        DEADLINE,
        "the worker to finish this test's tasks",
    )


def run_to_end(result: TaskResult) -> TaskResult:
    """Wait for the worker to finish ``result``'s task; ``result`` refreshed."""

    def finished() -> bool:
        result.refresh()
        return result.is_finished

    wait_for(finished, DEADLINE, f"the worker to finish task {result.id}")
    return result


def arun_to_end(result: TaskResult) -> TaskResult:
    """``run_to_end`` with ``arefresh``."""

    def finished() -> bool:
        async_to_sync(result.arefresh)()
        return result.is_finished

    wait_for(finished, DEADLINE, f"the worker to finish task {result.id}")
    return result


def wait_until_finished(result_id: str) -> None:
    """Wait for the task to finish without touching the caller's TaskResult."""
    wait_for(
        lambda: default_task_backend.get_result(result_id).is_finished,
        DEADLINE,
        f"the worker to finish task {result_id}",
    )


#: The start of a log record: the site's format, or django-q2's own ("12:00:00 [Q] ...").
RECORD_START = re.compile(r"^(?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\S* ", re.MULTILINE)


def worker_records(log: Path, result_id: str, *, level: str = "") -> list[str]:
    """The worker's ``django.tasks`` log records about one task (each with its traceback)."""
    text = log.read_text()
    starts = [match.start() for match in RECORD_START.finditer(text)]
    records = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    return [
        record
        for record in records
        if f"{level} django.tasks Task id={result_id} " in record.split("\n", 1)[0]
    ]


def wait_for_records(log: Path, result_id: str, count: int, *, level: str = "") -> list[str]:
    """The records, once the worker has written ``count`` of them (written after the row)."""
    wait_for(
        lambda: len(worker_records(log, result_id, level=level)) >= count,
        LOG_DEADLINE,
        f"{count} django.tasks log records of task {result_id}",
    )
    return worker_records(log, result_id, level=level)


# test_dummy_backend.py: enqueue, get_result, refresh ---------------------------------------


class TestDummyBackend:
    def test_using_correct_backend(self):
        assert default_task_backend == task_backends["default"]
        assert isinstance(task_backends["default"], LongTaskBackend)
        assert default_task_backend.alias == "default"
        assert default_task_backend.options == {}

    def test_enqueue_task(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            result = task.enqueue(1, two=3)

            assert result.status == TaskResultStatus.READY
            assert result.is_finished is False
            assert result.started_at is None
            assert result.last_attempted_at is None
            assert result.finished_at is None
            with pytest.raises(ValueError, match="Task has not finished yet"):
                _ = result.return_value
            assert result.task == task
            assert result.args == [1]
            assert result.kwargs == {"two": 3}
            assert result.attempts == 0

            # Django: assertIn(result, default_task_backend.results); here the backend's
            # store is the LongTask table.
            assert default_task_backend.get_result(result.id).id == result.id

    def test_enqueue_task_async(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            result = async_to_sync(task.aenqueue)()

            assert result.status == TaskResultStatus.READY
            assert result.is_finished is False
            assert result.started_at is None
            assert result.last_attempted_at is None
            assert result.finished_at is None
            with pytest.raises(ValueError, match="Task has not finished yet"):
                _ = result.return_value
            assert result.task == task
            assert result.args == []
            assert result.kwargs == {}
            assert result.attempts == 0

            assert async_to_sync(default_task_backend.aget_result)(result.id).id == result.id

    def test_get_result(self):
        # In a transaction, so that the worker cannot change the task between the two.
        with transaction.atomic():
            result = default_task_backend.enqueue(test_tasks.noop_task, (), {})

            new_result = default_task_backend.get_result(result.id)

        assert result == new_result

    def test_get_result_async(self):
        with transaction.atomic():
            result = async_to_sync(default_task_backend.aenqueue)(test_tasks.noop_task, (), {})

            new_result = async_to_sync(default_task_backend.aget_result)(result.id)

        assert result == new_result

    def test_refresh_result(self):
        result = default_task_backend.enqueue(test_tasks.calculate_meaning_of_life, (), {})

        # Django sets the stored result's status by hand; here the worker runs the task.
        wait_until_finished(result.id)

        assert result.status == TaskResultStatus.READY
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL

    def test_refresh_result_async(self):
        result = async_to_sync(default_task_backend.aenqueue)(
            test_tasks.calculate_meaning_of_life, (), {}
        )

        wait_until_finished(result.id)

        assert result.status == TaskResultStatus.READY
        async_to_sync(result.arefresh)()
        assert result.status == TaskResultStatus.SUCCESSFUL

    def test_get_missing_result(self):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result("123")

        with pytest.raises(TaskResultDoesNotExist):
            async_to_sync(default_task_backend.aget_result)("123")

    def test_enqueue_logs(self, caplog):
        with caplog.at_level("DEBUG", logger="django.tasks"):
            result = test_tasks.noop_task.enqueue()

        output = [r.getMessage() for r in caplog.records if r.name == "django.tasks"]
        assert len(output) == 1
        assert "enqueued" in output[0]
        assert result.id in output[0]

    def test_errors(self):
        result = test_tasks.noop_task.enqueue()
        assert result.errors == []

    def test_validate_disallowed_async_task(self):
        with (
            mock.patch.multiple(default_task_backend, supports_async_task=False),
            pytest.raises(InvalidTask, match=re.escape("Backend does not support async Tasks.")),
        ):
            default_task_backend.validate_task(test_tasks.noop_task_async)

    def test_check(self):
        errors = list(default_task_backend.check())
        assert len(errors) == 0, errors

    def test_takes_context(self):
        result = test_tasks.get_task_id.enqueue()
        assert result.status == TaskResultStatus.READY

    def test_validate_on_enqueue(self):
        # Django's queues are "unknown_queue" and "queue-1": this backend refuses any
        # queue that is not a longtask queue, already in using() (see the differences).
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="subtasks")

        with (
            override_settings(TASKS=ONLY_DEFAULT_QUEUE),
            pytest.raises(InvalidTask, match="Queue 'subtasks' is not valid for backend"),
        ):
            task_with_custom_queue_name.enqueue()

    def test_validate_on_aenqueue(self):
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="subtasks")

        with (
            override_settings(TASKS=ONLY_DEFAULT_QUEUE),
            pytest.raises(InvalidTask, match="Queue 'subtasks' is not valid for backend"),
        ):
            async_to_sync(task_with_custom_queue_name.aenqueue)()


class TestDummyBackendTransaction:
    def test_doesnt_wait_until_transaction_commit_by_default(self):
        with transaction.atomic():
            result = test_tasks.noop_task.enqueue()

            assert result.enqueued_at is not None

            assert LongTask.objects.count() == 1

        assert LongTask.objects.count() == 1


# test_immediate_backend.py: what a run records -------------------------------------------


class TestImmediateBackend:
    def test_using_correct_backend(self):
        assert default_task_backend == task_backends["default"]
        assert isinstance(task_backends["default"], LongTaskBackend)
        assert default_task_backend.alias == "default"
        assert default_task_backend.options == {}

    def test_enqueue_task(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            result = run_to_end(task.enqueue(1, two=3))

            assert result.status == TaskResultStatus.SUCCESSFUL
            assert result.is_finished is True
            assert result.started_at is not None
            assert result.last_attempted_at is not None
            assert result.finished_at is not None
            assert result.started_at >= result.enqueued_at
            assert result.finished_at >= result.started_at
            assert result.return_value is None
            assert result.task == task
            assert result.args == [1]
            assert result.kwargs == {"two": 3}
            assert result.attempts == 1

    def test_enqueue_task_async(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            result = arun_to_end(async_to_sync(task.aenqueue)())

            assert result.status == TaskResultStatus.SUCCESSFUL
            assert result.is_finished is True
            assert result.started_at is not None
            assert result.last_attempted_at is not None
            assert result.finished_at is not None
            assert result.started_at >= result.enqueued_at
            assert result.finished_at >= result.started_at
            assert result.return_value is None
            assert result.task == task
            assert result.args == []
            assert result.kwargs == {}
            assert result.attempts == 1

    def test_catches_exception(self, worker_log):
        test_data = [
            (
                test_tasks.failing_task_value_error,  # Task function.
                ValueError,  # Expected exception.
                "This Task failed due to ValueError",  # Expected message.
            ),
            (
                test_tasks.failing_task_system_exit,
                SystemExit,
                "This Task failed due to SystemExit",
            ),
        ]
        for task, exception, message in test_data:
            result = run_to_end(task.enqueue())

            captured_logs = wait_for_records(worker_log, result.id, 1, level="ERROR")
            assert len(captured_logs) == 1
            assert message in captured_logs[0]

            assert result.status == TaskResultStatus.FAILED
            with pytest.raises(ValueError, match="Task failed"):
                _ = result.return_value
            assert result.is_finished is True
            assert result.started_at is not None
            assert result.last_attempted_at is not None
            assert result.finished_at is not None
            assert result.started_at >= result.enqueued_at
            assert result.finished_at >= result.started_at
            assert result.errors[0].exception_class == exception
            traceback = result.errors[0].traceback
            assert traceback
            assert traceback.endswith(f"{exception.__name__}: {message}\n"), traceback
            assert result.task == task
            assert result.args == []
            assert result.kwargs == {}

    def test_throws_keyboard_interrupt(self, worker_log):
        """DIFFERENT: the KeyboardInterrupt ends the worker process, not the enqueue.

        Django's immediate backend lets it out of ``enqueue``. Here the worker process
        running the task dies of it (as Ctrl-C would stop it), its cluster is restarted,
        and the sweeper finds the task's heartbeat stale: the attempt failed with
        WorkerLost (a task with retries would run again).
        """
        result = test_tasks.failing_task_keyboard_interrupt.enqueue()  # does not raise
        assert result.status == TaskResultStatus.READY

        run_to_end(result)
        assert result.status == TaskResultStatus.FAILED
        assert result.attempts == 1
        assert result.errors[0].exception_class is RuntimeError
        assert "WorkerLost" in result.errors[0].traceback
        output = worker_log.read_text()
        assert "KeyboardInterrupt: This Task failed due to KeyboardInterrupt" in output

    def test_complex_exception(self, worker_log):
        result = run_to_end(test_tasks.complex_exception.enqueue())
        assert wait_for_records(worker_log, result.id, 1, level="ERROR")

        assert result.status == TaskResultStatus.FAILED
        with pytest.raises(ValueError, match="Task failed"):
            _ = result.return_value
        assert result.started_at is not None
        assert result.last_attempted_at is not None
        assert result.finished_at is not None
        assert result.started_at >= result.enqueued_at
        assert result.finished_at >= result.started_at

        assert result._return_value is None
        assert result.errors[0].exception_class is ValueError
        assert 'ValueError(ValueError("This task failed"))' in result.errors[0].traceback

        assert result.task == test_tasks.complex_exception
        assert result.args == []
        assert result.kwargs == {}

    def test_complex_return_value(self, worker_log):
        result = run_to_end(test_tasks.complex_return_value.enqueue())
        assert wait_for_records(worker_log, result.id, 1, level="ERROR")

        assert result.status == TaskResultStatus.FAILED
        assert result.started_at is not None
        assert result.last_attempted_at is not None
        assert result.finished_at is not None
        assert result.started_at >= result.enqueued_at
        assert result.finished_at >= result.started_at
        assert result._return_value is None
        assert result.errors[0].exception_class is TypeError
        assert "Unsupported type" in result.errors[0].traceback

    def test_result(self):
        result = run_to_end(
            default_task_backend.enqueue(test_tasks.calculate_meaning_of_life, [], {})
        )

        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 42

    def test_result_async(self):
        result = arun_to_end(
            async_to_sync(default_task_backend.aenqueue)(
                test_tasks.calculate_meaning_of_life, [], {}
            )
        )

        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 42

    def test_enqueue_logs(self, caplog, worker_log):
        with caplog.at_level("DEBUG", logger="django.tasks"):
            result = run_to_end(test_tasks.noop_task.enqueue())

        # The first line is this process's (the enqueue), the others the worker's.
        captured_logs = [r.getMessage() for r in caplog.records if r.name == "django.tasks"]
        captured_logs += wait_for_records(worker_log, result.id, 2)
        assert len(captured_logs) == 3

        assert "enqueued" in captured_logs[0]
        assert result.id in captured_logs[0]

        assert "state=RUNNING" in captured_logs[1]
        assert result.id in captured_logs[1]

        assert "state=SUCCESSFUL" in captured_logs[2]
        assert result.id in captured_logs[2]

    def test_failed_logs(self, caplog, worker_log):
        with caplog.at_level("DEBUG", logger="django.tasks"):
            result = run_to_end(test_tasks.failing_task_value_error.enqueue())

        captured_logs = [r.getMessage() for r in caplog.records if r.name == "django.tasks"]
        captured_logs += wait_for_records(worker_log, result.id, 2)
        assert len(captured_logs) == 3
        assert "state=RUNNING" in captured_logs[1]
        assert result.id in captured_logs[1]

        assert "state=FAILED" in captured_logs[2]
        assert result.id in captured_logs[2]

    def test_successful_task_no_none_type_in_logs(self, caplog, worker_log):
        with caplog.at_level("DEBUG", logger="django.tasks"):
            result = run_to_end(test_tasks.noop_task.enqueue())

        assert result.status == TaskResultStatus.SUCCESSFUL

        captured_logs = [r.getMessage() for r in caplog.records if r.name == "django.tasks"]
        captured_logs += wait_for_records(worker_log, result.id, 2)
        for log_output in captured_logs:
            assert "NoneType" not in log_output

    def test_takes_context(self):
        result = run_to_end(test_tasks.get_task_id.enqueue())

        assert result.return_value == result.id

    def test_context(self):
        result = run_to_end(test_tasks.test_context.enqueue(1))
        assert result.status == TaskResultStatus.SUCCESSFUL

    def test_validate_on_enqueue(self):
        # Django's queues are "unknown_queue" and "queue-1": this backend refuses any
        # queue that is not a longtask queue, already in using() (see the differences).
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="subtasks")

        with (
            override_settings(TASKS=ONLY_DEFAULT_QUEUE),
            pytest.raises(InvalidTask, match="Queue 'subtasks' is not valid for backend"),
        ):
            task_with_custom_queue_name.enqueue()

    def test_validate_on_aenqueue(self):
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="subtasks")

        with (
            override_settings(TASKS=ONLY_DEFAULT_QUEUE),
            pytest.raises(InvalidTask, match="Queue 'subtasks' is not valid for backend"),
        ):
            async_to_sync(task_with_custom_queue_name.aenqueue)()


# Where this backend differs from Django's on purpose (docs/django-tasks.md) ---------------


class TestDifferencesFromDjango:
    def test_runs_only_once_the_transaction_commits(self):
        """Django's immediate backend runs the task inside ``enqueue``, in the transaction
        (its ``test_doesnt_wait_until_transaction_commit_by_default``)."""
        with transaction.atomic():
            result = test_tasks.noop_task.enqueue()
            assert result.enqueued_at is not None
            assert result.status == TaskResultStatus.READY
            before_commit = timezone.now()

        run_to_end(result)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.started_at >= before_commit

    def test_run_after_defers_the_run(self):
        """Django's immediate backend refuses ``run_after`` (its ``test_cannot_pass_run_after``)."""
        run_after = timezone.now() + datetime.timedelta(seconds=1)
        result = run_to_end(
            test_tasks.calculate_meaning_of_life.using(run_after=run_after).enqueue()
        )
        assert result.return_value == 42
        assert result.started_at >= run_after

    def test_only_longtask_queues_are_valid(self):
        """Django's backends with ``QUEUES: []`` take any queue name; this one, any of
        longtask's queues (LONGTASK_QUEUES), whose workers would run it."""
        assert default_task_backend.queues == set()
        assert test_tasks.noop_task.using(queue_name="subtasks").queue_name == "subtasks"
        with pytest.raises(InvalidTask, match="'unknown_queue' is not a longtask queue"):
            test_tasks.noop_task.using(queue_name="unknown_queue")

    def test_priority_is_refused(self):
        """Django's immediate backend accepts a priority (and ignores it)."""
        assert default_task_backend.supports_priority is False
        with pytest.raises(InvalidTask, match="priority"):
            test_tasks.noop_task.using(priority=10)

    def test_worker_ids_name_the_worker_process(self):
        """Django's immediate backend names itself: one random id per backend instance."""
        result = run_to_end(test_tasks.noop_task.enqueue())
        [worker_id] = result.worker_ids
        assert re.fullmatch(r".+:\d+", worker_id) and worker_id != node_name()

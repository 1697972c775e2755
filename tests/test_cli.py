"""``manage.py longtask``: every subcommand through call_command, and --wait on a real cluster."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from longtask import api
from longtask.management import cli
from longtask.models import LongTask, Status, SubTask
from tests import broker
from tests import kinds as test_kinds
from tests.helpers import claim, drain_queue
from tests.processes import ROOT, process_env, qcluster


@pytest.fixture(autouse=True)
def _kinds(test_kinds_registered):
    test_kinds.FAILING.clear()
    yield from broker.emptied()
    test_kinds.FAILING.clear()


def run(*args: str) -> tuple[str, str]:
    """Run ``manage.py longtask *args``; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("longtask", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(*args: str, returncode: int) -> str:
    """Run the command expecting CommandError with ``returncode``; return its message."""
    with pytest.raises(CommandError) as caught:
        run(*args)
    assert caught.value.returncode == returncode, str(caught.value)
    return str(caught.value)


def finished_row(status: str = Status.SUCCEEDED, days_ago: float = 0, **fields) -> LongTask:
    when = timezone.now() - datetime.timedelta(days=days_ago)
    return LongTask.objects.create(
        kind="test-count",
        queue="default",
        status=status,
        started_at=when - datetime.timedelta(seconds=2),
        finished_at=when,
        **fields,
    )


@pytest.fixture
def drain_while_waiting(monkeypatch):
    """Make --wait run the queued jobs in this process instead of sleeping."""
    monkeypatch.setattr(cli, "pause", lambda seconds: drain_queue())


# start ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_start_prints_the_status_url_and_lets_the_form_convert_values(settings):
    settings.LONGTASK_BASE_URL = "https://tasks.example.com/"
    out, _ = run("start", "test-count", "n=3", "message=a=b")
    task = LongTask.objects.get()
    assert out.strip() == f"https://tasks.example.com/tasks/{task.pk}/"
    assert task.parameters == {"n": 3, "message": "a=b"}
    assert task.status == Status.QUEUED


@pytest.mark.django_db
def test_start_with_name_queue_and_owner_and_a_second_start_says_already_exists(user):
    out, _ = run(
        "start", "test-count", "n=1", "--name", "n1", "--queue", "subtasks", "--owner", "alice"
    )
    task = LongTask.objects.get()
    assert (task.name, task.queue, task.owner) == ("n1", "subtasks", user)
    assert out.strip() == cli.status_url(task)
    again, err = run("start", "test-count", "n=2", "--name", "n1")
    assert again == out
    assert "already exists" in err
    assert LongTask.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "nope"], "unknown task kind 'nope'"),
        (["start", "test-count", "n=-1"], "invalid parameters: n:"),
        (["start", "test-count"], "n: This field is required."),
        (["start", "test-count", "n"], "expected key=value, got 'n'"),
        (["start", "test-count", "=3"], "expected key=value"),
        (["start", "test-count", "n=1", "--owner", "nobody"], "no user 'nobody'"),
        (["show", "not-a-task"], "no task with id or name 'not-a-task'"),
        (["retry", "8b7b6f7e-1d1c-4c7e-9d43-0a0f5d1e2c3b"], "no task with id or name"),
        (["cancel", "x"], "no task with id or name 'x'"),
        (["purge", "--older-than", "-1"], "--older-than must be zero or more days"),
    ],
)
def test_bad_input_exits_2_and_starts_nothing(args, message):
    assert message in fails(*args, returncode=2)
    assert not LongTask.objects.exists()


@pytest.mark.django_db
def test_start_json_prints_the_status_document():
    out, _ = run("start", "test-count", "n=2", "--json")
    document = json.loads(out)
    task = LongTask.objects.get()
    assert document["id"] == str(task.pk)
    assert document["status"] == "QUEUED"
    assert document["status_url"] == cli.status_url(task)


@pytest.mark.django_db(transaction=True)
def test_start_wait_follows_to_success_and_prints_the_final_json(drain_while_waiting):
    out, err = run("start", "test-count", "n=4", "message=counting", "--wait", "--json")
    document = json.loads(out)
    assert document["status"] == "SUCCEEDED"
    assert document["result"] == {"counted": 4, "message": "counting"}
    assert document["progress"]["percent"] == 100
    assert "SUCCEEDED 4/4 counting" in err  # plain lines: stderr is not a terminal here


@pytest.mark.django_db(transaction=True)
def test_start_wait_exits_1_when_the_task_fails(drain_while_waiting):
    message = fails("start", "test-boom", "--wait", returncode=1)
    assert "failed: RuntimeError: it broke on two lines" in message


@pytest.mark.django_db(transaction=True)
def test_start_wait_shows_retries_and_ends_with_the_final_outcome(monkeypatch):
    def one_job(seconds: float) -> None:
        with contextlib.suppress(AssertionError):  # more jobs queued: later pauses run them
            drain_queue(limit=1)

    monkeypatch.setattr(cli, "pause", one_job)
    out, err = run("start", "test-flaky", "fail_times=1", "--wait")
    assert "succeeded in" in out
    assert "RETRYING" in err and "attempt 1 failed: ConnectionError: attempt 1 failed" in err


@pytest.mark.django_db(transaction=True)
def test_start_wait_exits_1_when_the_task_is_cancelled(monkeypatch):
    monkeypatch.setattr(cli, "pause", lambda seconds: api.cancel(LongTask.objects.get()))
    assert "cancelled" in fails("start", "test-count", "n=1", "--wait", returncode=1)


@pytest.mark.django_db
def test_ctrl_c_while_waiting_stops_following_but_not_the_task(monkeypatch):
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "pause", interrupt)
    message = fails("start", "test-count", "n=1", "--wait", returncode=130)
    assert message == f"stopped following; {cli.status_url(LongTask.objects.get())} keeps running"
    assert LongTask.objects.get().status == Status.QUEUED


@pytest.mark.django_db
def test_follow_draws_a_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    task = finished_row(last_progress={"current": 3, "total": 4, "message": "almost"})
    LongTask.objects.filter(pk=task.pk).update(status=Status.FAILED, error="x")
    stream = Terminal()
    assert cli.follow(task, stream).status == Status.FAILED
    assert "75%|" in stream.getvalue()
    assert "3/4" in stream.getvalue() and "almost" in stream.getvalue()


@pytest.mark.django_db(transaction=True)  # holds no write lock the subprocess would wait on
def test_bad_input_from_a_real_command_line_is_one_line_on_stderr():
    result = subprocess.run(
        [sys.executable, "manage.py", "longtask", "batch", "report", "-"],
        input='{"month": "2026-10"}\n{"month": \n',
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("CommandError: -:2: not valid JSON: ")
    assert not LongTask.objects.exists()


# batch ---------------------------------------------------------------------------------


def jsonl(tmp_path, *lines: str) -> str:
    path = tmp_path / "params.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.django_db
def test_batch_starts_valid_lines_and_reports_rejected_ones(tmp_path):
    path = jsonl(tmp_path, '{"n": 1}', "", '{"n": "many"}', '{"n": 3, "message": "hi"}')
    with pytest.raises(CommandError) as caught:
        call_command("longtask", "batch", "test-count", path, stdout=(out := io.StringIO()))
    assert caught.value.returncode == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("line 1: started http://127.0.0.1:8000/tasks/")
    assert lines[1] == "line 3: rejected: invalid parameters: n: Enter a whole number."
    assert lines[2].startswith("line 4: started ")
    assert lines[3] == "2 started, 0 skipped as duplicates, 1 rejected"
    assert sorted(LongTask.objects.values_list("parameters__n", flat=True)) == [1, 3]


@pytest.mark.django_db
def test_batch_with_a_name_field_starts_nothing_twice(tmp_path):
    path = jsonl(tmp_path, '{"id": "a", "n": 1}', '{"id": "b", "n": 2}', '{"id": "a", "n": 1}')
    out, _ = run("batch", "test-count", path, "--name-field", "id")
    assert out.splitlines()[-1] == "2 started, 1 skipped as duplicates, 0 rejected"
    out, _ = run("batch", "test-count", path, "--name-field", "id")
    assert out.splitlines()[-1] == "0 started, 3 skipped as duplicates, 0 rejected"
    assert sorted(LongTask.objects.values_list("name", flat=True)) == ["a", "b"]


@pytest.mark.django_db
def test_batch_rejects_a_line_without_the_name_field(tmp_path):
    path = jsonl(tmp_path, '{"id": "a", "n": 1}', '{"n": 2}')
    message = fails("batch", "test-count", path, "--name-field", "id", returncode=1)
    assert message == "1 line(s) rejected"
    assert LongTask.objects.get().name == "a"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"n": 1}', "{not json"], ":2: not valid JSON"),
        (['{"n": 1}', "[1, 2]"], ":2: expected a JSON object of parameters, got list"),
    ],
)
def test_batch_with_a_malformed_line_exits_2_and_starts_nothing(tmp_path, lines, message):
    assert message in fails("batch", "test-count", jsonl(tmp_path, *lines), returncode=2)
    assert not LongTask.objects.exists()


@pytest.mark.django_db
def test_batch_bad_kind_or_file_exits_2(tmp_path):
    assert "unknown task kind" in fails("batch", "nope", jsonl(tmp_path, "{}"), returncode=2)
    assert "cannot read" in fails("batch", "test-count", str(tmp_path / "no"), returncode=2)


@pytest.mark.django_db(transaction=True)
def test_batch_from_stdin_waits_for_the_whole_batch(monkeypatch, drain_while_waiting):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"n": 1}\n{"n": 2}\n'))
    out, err = run("batch", "test-count", "-", "--wait")
    assert out.splitlines()[-2:] == [
        "2 started, 0 skipped as duplicates, 0 rejected",
        "2 succeeded",
    ]
    assert "batch FINISHED 2/2 2 succeeded" in err


@pytest.mark.django_db(transaction=True)
def test_batch_wait_exits_1_if_a_task_fails(tmp_path, drain_while_waiting):
    path = jsonl(tmp_path, "{}", "{}")
    assert fails("batch", "test-boom", path, "--wait", returncode=1) == (
        "2 task(s) did not succeed"
    )


# list, show, retry, cancel, purge ----------------------------------------------------------


@pytest.mark.django_db
def test_list_filters_by_status_and_kind_and_limits(user):
    done = finished_row(last_progress={"current": 1, "total": 2}, owner=user, name="half")
    failed = finished_row(Status.FAILED, error="bad")
    queued = LongTask.objects.create(kind="test-boom", queue="default")
    out, _ = run("list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        str(queued.pk),
        str(failed.pk),
        str(done.pk),
    ]
    assert "50%" in out and "alice" in out and "half" in out
    out, _ = run("list", "--status", "failed")
    assert str(failed.pk) in out and str(done.pk) not in out
    out, _ = run("list", "--kind", "test-boom", "--limit", "5")
    assert str(queued.pk) in out and str(failed.pk) not in out
    out, _ = run("list", "--limit", "1")
    assert len(out.splitlines()) == 2
    out, _ = run("list", "--kind", "nothing-like-it")
    assert out.strip() == "No tasks."


@pytest.mark.django_db
def test_show_prints_the_task_by_id_or_name():
    task = finished_row(
        name="nightly",
        result={"counted": 2},
        last_progress={"current": 2, "total": 2, "message": "done"},
        history=[{"event": "failed", "attempt": 1, "error": "flaky", "at": "2026-11-01"}],
    )
    out, _ = run("show", str(task.pk))
    assert "status:      SUCCEEDED" in out
    assert "progress:    100% (2/2) done" in out
    assert "duration:    2.0 s" in out
    assert f"status page: {cli.status_url(task)}" in out
    assert "failed (attempt 1): flaky" in out
    assert '"counted": 2' in out
    by_name, _ = run("show", "nightly")
    assert by_name == out
    document = json.loads(run("show", str(task.pk), "--json")[0])
    assert document["result"] == {"counted": 2}


@pytest.mark.django_db
def test_show_says_how_many_jobs_wait_ahead_of_a_queued_task(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        api.start("test-count", {"n": 1})
        task = api.start("test-count", {"n": 1})
    out, _ = run("show", str(task.pk))
    # ORM: the jobs queued before its own; Redis: the queue's whole list.
    ahead = "1 job ahead" if broker.on_orm() else "2 jobs ahead"
    assert f"waiting:     for a worker of queue default, {ahead}\n" in out
    document = json.loads(run("show", str(task.pk), "--json")[0])
    assert document["waiting"] == {"queue": "default", "jobs_ahead": 1 if broker.on_orm() else 2}
    claim(task)
    assert "waiting:" not in run("show", str(task.pk))[0]


@pytest.mark.django_db
def test_retry_requeues_a_failed_task_and_refuses_others():
    failed = finished_row(Status.FAILED, error="bad")
    out, _ = run("retry", str(failed.pk))
    assert out.startswith(f"LongTask {failed.pk} retried")
    failed.refresh_from_db()
    assert failed.status == Status.QUEUED
    assert failed.history[-1]["event"] == "retried"
    message = fails("retry", str(failed.pk), returncode=1)
    assert "is QUEUED; only failed or cancelled tasks can be retried" in message


@pytest.mark.django_db(transaction=True)
def test_retry_of_a_fan_out_requeues_only_its_failed_subtasks():
    test_kinds.FAILING.add(2)
    run("start", "test-squares-switchable", "n=4")
    drain_queue()
    task = LongTask.objects.get()
    assert task.status == Status.FAILED
    test_kinds.FAILING.clear()
    out, _ = run("retry", str(task.pk))
    assert "subtask(s) queued again" in out
    drain_queue()
    task.refresh_from_db()
    assert task.status == Status.SUCCEEDED
    assert task.result == [0, 1, 4, 9]


@pytest.mark.django_db
def test_cancel_stops_queued_tasks_at_once_and_running_ones_at_their_next_report():
    queued = LongTask.objects.create(kind="test-count", queue="default")
    out, _ = run("cancel", str(queued.pk))
    assert out.strip() == f"LongTask {queued.pk} cancelled."
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED
    message = fails("cancel", str(queued.pk), returncode=1)
    assert "is CANCELLED; it cannot be cancelled" in message
    running = LongTask.objects.create(
        kind="test-count", queue="default", status=Status.RUNNING, started_at=timezone.now()
    )
    out, _ = run("cancel", str(running.pk))
    assert (
        out.strip() == f"LongTask {running.pk} asked to stop; it ends at its next progress report."
    )
    running.refresh_from_db()
    assert running.status == Status.RUNNING and running.cancel_requested_at is not None


@pytest.mark.django_db
def test_purge_deletes_old_finished_tasks_and_their_subtasks_only():
    old = finished_row(days_ago=10)
    SubTask.objects.bulk_create([SubTask(parent=old, index=i) for i in range(3)])
    old_failed = finished_row(Status.FAILED, days_ago=8)
    recent = finished_row(days_ago=1)
    running = LongTask.objects.create(
        kind="test-count",
        queue="default",
        status=Status.RUNNING,
        created_at=timezone.now() - datetime.timedelta(days=30),
        started_at=timezone.now() - datetime.timedelta(days=30),
    )
    out, _ = run("purge", "--older-than", "7", "--dry-run")
    assert out.startswith("Would delete 2 finished task(s) and 3 subtask(s)")
    assert LongTask.objects.count() == 4
    out, _ = run("purge", "--older-than", "7")
    assert out.startswith("Deleted 2 finished task(s) and 3 subtask(s)")
    assert set(LongTask.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
    assert not SubTask.objects.exists()
    assert not LongTask.objects.filter(pk__in=[old.pk, old_failed.pk]).exists()


# Against a real cluster --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_start_wait_follows_a_report_on_a_real_cluster(tmp_path):
    with qcluster(tmp_path / "qcluster.log"):
        out, err = run("start", "report", "month=2026-10", "work_ms=0", "--wait")
    task = LongTask.objects.get()
    log = (tmp_path / "qcluster.log").read_text()
    assert task.status == Status.SUCCEEDED, (task.error, log[-3000:])
    assert out.splitlines()[0] == cli.status_url(task)
    assert f"LongTask {task.pk} succeeded in" in out
    assert "report" in err and "SUCCEEDED 33/33 Done" in err


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_batch_wait_on_a_real_cluster(tmp_path):
    path = jsonl(
        tmp_path,
        '{"month": "2026-01", "work_ms": 0}',
        '{"month": "2026-02", "work_ms": 0}',
        '{"month": "2026-03", "work_ms": 0}',
    )
    with qcluster(tmp_path / "qcluster.log"):
        out, _ = run("batch", "report", path, "--name-field", "month", "--wait")
    assert out.splitlines()[-2:] == [
        "3 started, 0 skipped as duplicates, 0 rejected",
        "3 succeeded",
    ]
    assert set(LongTask.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert sorted(LongTask.objects.values_list("name", flat=True)) == [
        "2026-01",
        "2026-02",
        "2026-03",
    ]

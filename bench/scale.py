"""Scale benchmark: one fan-out of N no-op subtasks at 10k, 100k and 1M, on one stack.

Run from the project root (nothing else heavy at the same time)::

    .venv/bin/python bench/scale.py                      # 10,000, 100,000 and 1,000,000
    .venv/bin/python bench/scale.py --n 10000 --n 100000 --services

The fan-out is ``bench-noop`` (bench/scalekind: a kind of this bench only, installed by
bench/settings_scale.py; the quilt stays at most 200x200). Each size runs on fresh
clusters of the project's own settings (1 parent worker, 2 subtask workers) and is
timed from ``longtask.start()`` until the task is SUCCEEDED. The baseline is the
smallest size measured in the same run: the goal (issue 15, "flat to a million") is a
rate within 20% of it at every size, worker RSS within x1.1 of it, and the split not
dominating (its share of the time is printed). ``--services`` runs on a scratch
PostgreSQL database and Redis database as bench/fanout.py does (see there).

Exit status: 0 once every run finished (the goals are reported, not enforced), 1 if a
run failed or timed out, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/scale.py

from bench._lib.processes import BenchError, log_problems, wait_until
from bench._lib.report import Run
from bench._lib.sampling import CpuWatch, Rss
from bench._lib.session import Bench, Session, add_scratch_args, sizes

SETTINGS = "bench.settings_scale"
START_TIMEOUT = 120
RATE_WITHIN = 0.2
FLAT_RSS = 1.1


def run_scale(bench: Bench, n: int) -> tuple[Run, float]:
    """One fan-out of ``n``; returns the run and the seconds its split took."""
    import longtask
    from longtask.api import delete_finished
    from longtask.models import FINISHED_STATUSES, LongTask, Status

    print(f"bench-noop N={n}: starting the clusters ...", flush=True)
    cpu = CpuWatch(bench.sampler)
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS}
    parents = bench.qcluster(f"scale-{n}-parents", bench.env(**env))
    subtasks = bench.qcluster(
        f"scale-{n}-subtasks", bench.env(Q_CLUSTER_NAME="longtask-subtasks", **env)
    )
    clusters = [parents, subtasks]
    pgids = [c.pgid for c in clusters]
    try:
        warm = longtask.start("bench-noop", {"n": 2})
        done = LongTask.objects.filter(pk=warm.pk, status=Status.SUCCEEDED)
        wait_until(done.exists, START_TIMEOUT, "a warm-up fan-out", *clusters)
        delete_finished(LongTask.objects.all())
        print(f"    clusters up; timing a fan-out of {n} ...", flush=True)
        cpu.mark(pgids)
        began = time.monotonic()
        task = longtask.start("bench-noop", {"n": n})
        row = LongTask.objects.filter(pk=task.pk)
        marks: dict[str, float] = {}

        def finished() -> bool:
            state = row.values("status", "split_done").get()
            if state["split_done"]:
                marks.setdefault("split", time.monotonic() - began)
            return state["status"] in FINISHED_STATUSES

        # A million no-op subtasks take minutes: a deadline of 1 ms per subtask, at least 10 min.
        wait_until(finished, max(600.0, n / 1000), f"the fan-out of {n}", *clusters)
        seconds = time.monotonic() - began
        rss = Rss.of(bench.sampler.peaks(pgids))
        notes = [note for note in (cpu.usage_note(f"N={n}", pgids),) if note]
        notes += log_problems([c.log for c in clusters])
        noisy = cpu.foreign_note(f"N={n}", pgids)
        notes += [noisy] if noisy else []
    finally:
        for cluster in reversed(clusters):
            bench.stop(cluster)
    task.refresh_from_db()
    if task.status != Status.SUCCEEDED or task.result != {"subtasks": n}:
        raise BenchError(f"fan-out of {n}: {task.status} {task.error} {task.result}")
    print(f"    SUCCEEDED in {seconds:.1f}s ({n / seconds:.0f} subtasks/s)", flush=True)
    delete_finished(LongTask.objects.all())
    return Run(n, seconds, rss, notes), marks.get("split", float("nan"))


def curve(runs: dict[int, tuple[Run, float]], services: bool) -> list[str]:
    """The table: each size against the smallest one of the same run."""
    stack = "PostgreSQL + Redis" if services else "embedded (SQLite, ORM broker)"
    base, _ = runs[min(runs)]
    lines = [
        f"bench-noop fan-outs on {stack}; baseline: N={base.n} in this run",
        f"{'N':>9} | {'seconds':>8} | {'subtasks/s':>10} | {'rate/base':>9} | "
        f"{'split s':>7} | {'split %':>7} | {'RSS MiB max/sum':>17} | {'RSS/base':>8}",
        "-" * 96,
    ]
    verdicts = []
    for n, (run, split) in sorted(runs.items()):
        rate_ratio = run.rate / base.rate
        rss_ratio = run.rss.max_mib / base.rss.max_mib
        lines.append(
            f"{n:>9} | {run.seconds:>8.1f} | {run.rate:>10.0f} | {rate_ratio:>9.2f} | "
            f"{split:>7.1f} | {split / run.seconds:>7.0%} | {run.rss!s:>17} | {rss_ratio:>8.2f}"
        )
        if n != base.n:
            ok = rate_ratio >= 1 - RATE_WITHIN and rss_ratio <= FLAT_RSS
            verdicts.append(
                f"N={n}: rate x{rate_ratio:.2f}, RSS x{rss_ratio:.2f} -> "
                f"{'MET' if ok else 'MISSED'} (rate >= x{1 - RATE_WITHIN:.1f}, RSS <= x{FLAT_RSS})"
            )
    return [*lines, *(["verdict: " + "; ".join(verdicts)] if verdicts else [])]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="sizes (10k, 100k, 1M)")
    add_scratch_args(parser)
    args = parser.parse_args(argv)
    ns = sizes(args.n, 10_000)
    if not args.n:
        ns = [10_000, 100_000, 1_000_000]
    session = Session(
        args,
        "bench-scale-",
        LONGTASK_WORKERS="1",
        LONGTASK_SUBTASK_WORKERS="2",
        # A million subtasks in flight from one start: the per-owner quota would refuse it.
        LONGTASK_MAX_QUEUED_SUBTASKS=str(max(ns) + 10),
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    runs: dict[int, tuple[Run, float]] = {}

    def body(bench: Bench) -> None:
        print(f"data dir {bench.data_dir}; {os.cpu_count()} CPUs; sizes {ns}", flush=True)
        for n in ns:
            runs[n] = run_scale(bench, n)

    session.run(body)
    if runs:
        print("\n".join(curve(runs, bool(session.services))))
        notes = [note for run, _ in runs.values() for note in run.notes]
        if notes:
            print("notes:\n  " + "\n  ".join(notes))
    return session.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

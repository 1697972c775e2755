"""A run's figures, and the table that sets them against the raw baseline of the same run."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench._lib.sampling import Rss


@dataclass
class Run:
    n: int
    seconds: float
    rss: Rss
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def baseline_run(raw: dict[int, Run]) -> Run | None:
    """The raw run that extrapolated ratios use: the one nearest N = 10,000."""
    return min(raw.values(), key=lambda r: abs(r.n - 10_000), default=None)


def table(
    raw: dict[int, Run], runs: dict[int, Run], label: str, unit: str, services: bool = False
) -> list[str]:
    """One line per N: raw's time and rate, the ``label`` run's, their ratio, and RSS.

    Where only the ``label`` run has an N, the ratio (``~``) is against raw's rate at
    the baseline's N.
    """
    lines = []
    if services:
        lines.append("on services: PostgreSQL + Redis")
    header = (
        f"{'N':>7} | {'raw s':>7} {'tasks/s':>8} | {label + ' s':>7} {unit:>9} | "
        f"{label + '/raw':>9} | {'raw RSS MiB':>15} | {label + ' RSS MiB':>15}"
    )
    lines += [header, "-" * len(header)]
    base = baseline_run(raw)
    for n in sorted(set(raw) | set(runs)):
        a, b = raw.get(n), runs.get(n)
        ratio = "-"
        if a and b:
            ratio = f"{b.seconds / a.seconds:.2f}"
        elif b and base:
            ratio = f"~{b.seconds / (n / base.rate):.2f}"
        lines.append(
            f"{n:>7} | "
            + (f"{a.seconds:>7.1f} {a.rate:>8.0f}" if a else f"{'-':>7} {'-':>8}")
            + " | "
            + (f"{b.seconds:>7.1f} {b.rate:>9.0f}" if b else f"{'-':>7} {'-':>9}")
            + f" | {ratio:>9} | {str(a.rss) if a else '-':>15} | {str(b.rss) if b else '-':>15}"
        )
    lines.append(
        "RSS = peak VmHWM per process, max/sum over the clusters' processes (count); "
        f"~ratio = {label} vs raw extrapolated from raw's rate at N="
        + (str(base.n) if base else "-")
    )
    return lines


def print_results(lines: list[str], runs: list[Run]) -> None:
    """The table (and verdict) lines, then every run's notes."""
    print()
    print("\n".join(lines))
    notes = [note for run in runs for note in run.notes]
    if notes:
        print("notes:\n  " + "\n  ".join(notes))

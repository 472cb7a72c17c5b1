"""Scaling sweeps: the same workload before and after the series at several vCPU counts.

"Before" is the workload with no switch of the series on; "after" is the configuration as given
(the whole series unless ``--patch`` turns some off). Each count is a machine of ``-smp N`` as
QEMU completes it (one socket of N cores). Runs are spread over the host's cores by
:func:`aemu.batch.run_all` (Ctrl-C stops them at once); the result is a list of rows (vCPUs,
before, after) that the CLI prints as a table and plots as "metric vs vCPUs".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .batch import run_all
from .config import SERIES, SMP, MachineConfig
from .errors import ConfigError
from .result import Result

__all__ = ["SweepRow", "parse_smp_list", "sweep", "format_sweep"]


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One vCPU count: its before and after results."""

    cpus: int
    before: Result
    after: Result


def parse_smp_list(text: str) -> list[int]:
    """``"1,8,32,64"`` -> [1, 8, 32, 64] (ConfigError naming the bad item)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"--smp: {item!r} is not a vCPU count; give a list such as 1,8,32,64,128,240")
        out.append(int(item))
    if not out:
        raise ConfigError("--smp: give a list of vCPU counts such as 1,8,32,64,128,240")
    return sorted(set(out))


def sweep(base: MachineConfig, cpus: Sequence[int], *, jobs: int | None = None,
          progress: Callable[[int, int], None] | None = None,
          on_result: Callable[[int, str, Result], None] | None = None) -> list[SweepRow]:
    """Run ``base`` before and after the series at each vCPU count (in parallel).

    ``progress(done, total)`` and ``on_result(cpus, "before" | "after", result)`` are called as
    each run finishes; after a Ctrl-C (``KeyboardInterrupt``, which propagates) those are what
    finished.
    """
    configs = [((n, label), base.replace(smp=SMP.complete(cpus=n), patches=patches))
               for n in cpus for label, patches in (("before", SERIES["before"]), ("after", base.patches))]
    finished = 0

    def done(key: tuple[int, str], r: Result) -> None:
        nonlocal finished
        finished += 1
        if on_result is not None:
            on_result(*key, r)
        if progress is not None:
            progress(finished, len(configs))

    results = run_all(configs, jobs=jobs, done=done)
    return [SweepRow(n, results[n, "before"], results[n, "after"]) for n in cpus]


def format_sweep(rows: Sequence[SweepRow]) -> str:
    """A plain-text scaling table."""
    if not rows:
        return ""
    m = rows[0].before.metric
    head = f"{rows[0].before.workload}: {m.name} ({m.unit}) before vs after the BQL-free series"
    out = [head, "", f"{'vCPUs':>6}  {'before':>18}  {'after':>14}  {'before/after':>12}  {'BQL wait share (before)':>24}"]
    for r in rows:
        b, a = r.before, r.after
        bv = f"{b.metric.value:,.1f}" + ("" if b.finished else " (cap)")
        av = f"{a.metric.value:,.1f}" + ("" if a.finished else " (cap)")
        ratio = b.metric.value / a.metric.value if a.metric.value else float("inf")
        out.append(f"{r.cpus:>6}  {bv:>18}  {av:>14}  {ratio:>11.1f}x  {b.lock_wait_share():>23.1%}")
    return "\n".join(out)

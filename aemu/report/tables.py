"""The report ``aemu run`` prints: a summary, the locks, the BQL's top call sites, per-region
access latency and per-vCPU accounting.

The report is built once as plain data (sections of fields and tables of strings) and then
rendered either with rich tables (on a terminal) or as hand-aligned plain text: stable, no ANSI
escape codes, the same on every machine (for pipes, files and tests).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..patches import PATCHES
from ..machine import DEFAULT_CAP_NS
from ..result import Result, VCPUResult
from ..sync import LockStatistics

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["MAX_VCPU_ROWS", "TOP_SITES", "render_run_report"]

#: vCPU rows shown before "… N more vCPUs" (min/median/max rows cover all of them).
MAX_VCPU_ROWS = 16
#: BQL call sites shown.
TOP_SITES = 5


# -- the report as data ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Fields:
    """A titled list of name/value pairs."""

    title: str
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Table:
    """A titled table of strings; the first column is left-aligned, the others right-aligned."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    #: A line after the rows (e.g. "… 224 more vCPUs").
    note: str = ""
    #: Summary rows after the note (min/median/max), set apart from the rows.
    footer: tuple[tuple[str, ...], ...] = ()
    #: Shown instead of the table when there are no rows.
    empty: str = "(none)"


_Section = _Fields | _Table


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.2f}"


def _us(ns: float) -> str:
    return f"{ns / 1e3:,.1f}"


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _number(value: float) -> str:
    """A metric value: thousands separators, at most two decimals, no trailing zeros."""
    text = f"{value:,.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _series(result: Result) -> str:
    cfg = result.config
    order = list(PATCHES)
    patches = sorted(cfg.patches, key=order.index)
    series = cfg.series
    if series == "before":
        text = "before (no patches of the BQL-free series)"
    elif series == "after":
        text = f"after (all {len(order)} switches: {', '.join(patches)})"
    else:
        text = f"custom ({', '.join(patches) if patches else 'no patches'})"
    if cfg.lockless:
        text += f"; what-if lockless: {', '.join(cfg.lockless)}"
    return text


def _status(result: Result) -> str:
    cap_ns = result.config.duration_ns or DEFAULT_CAP_NS
    done = sum(v.finished for v in result.vcpus)
    if result.interrupted:
        return f"interrupted at {_ms(result.virtual_ns)} ms: the figures cover the part that ran"
    if result.finished:
        return "finished"
    if result.open_ended:
        return f"ran for {_ms(result.virtual_ns)} ms (--duration; the workload runs until stopped)"
    return f"cap hit: did not finish in {_ms(cap_ns)} ms ({done} of {len(result.vcpus)} vCPUs finished)"


def _summary(result: Result) -> _Fields:
    cfg = result.config
    workload = cfg.workload + (f" ({', '.join(f'{k}={v}' for k, v in cfg.workload_params)})"
                               if cfg.workload_params else "")
    m = result.metric
    metric = f"{m.name}: {_number(m.value)}{' ' + m.unit if m.unit else ''}"
    if not result.finished and not result.open_ended:
        metric += " (did not finish)"
    return _Fields("aemu run", (
        ("machine", cfg.qemu_args()),
        ("workload", workload),
        ("series", _series(result)),
        ("model", f"BQL hand-off {cfg.lock_policy}; quantum {_number(cfg.quantum_ns / 1e3)} µs; seed {cfg.seed}"
                  + (f"; {cfg.host_text()}" if cfg.host_cpus else "")),
        *((("host CPUs", _host_cpus(result.host_cpus, cfg.host_rq == "per-cpu")),) if result.host_cpus else ()),
        ("metric", metric),
        *((("milestones", ", ".join(f"{name} {_ms(ns)} ms" for name, ns in result.milestones)),)
          if result.milestones else ()),
        ("status", _status(result)),
        ("virtual time", f"{_ms(result.virtual_ns)} ms"),
        ("wall time", f"{result.wall_s:,.2f} s"),
    ))


def _host_cpus(st: dict[str, int], per_cpu: bool) -> str:
    """How the host scheduler shared the CPUs, with the moves between per-CPU queues if it has them."""
    text = (f"{st['dispatches']:,} dispatches, {st['preemptions']:,} preemptions, "
            f"{st['wakeup_preemptions']:,} wake-up preemptions, {st['directed_yields']:,} directed yields")
    if per_cpu:
        text += (f", {st['pulls']:,} idle pulls, {st['affine_wakeups']:,} wake-affine wake-ups, "
                 f"{st['migrations']:,} moved by periodic balancing")
    return text


def _wait_share(result: Result, name: str) -> float:
    total = sum(v.elapsed_ns for v in result.vcpus)
    wait = sum(v.lock_wait_by_lock.get(name, 0) for v in result.vcpus)
    return wait / total if total else 0.0


def _locks(result: Result) -> _Table:
    locks: list[LockStatistics] = [st for st in result.locks.values() if st.bql or st.acquisitions]
    locks.sort(key=lambda st: (not st.bql, st.name))
    rows = tuple(
        (st.name + (" (BQL)" if st.bql and st.name != "BQL" else ""), f"{st.acquisitions:,}",
         f"{st.contentions:,}", _us(st.wait_ns.p50), _us(st.wait_ns.p99), _us(st.wait_ns.max),
         f"{st.hold_ns.mean / 1e3:,.2f}", _pct(_wait_share(result, st.name)))
        for st in locks)
    return _Table("Locks (waits over all acquisitions; an uncontended one waits 0)",
                  ("lock", "acquisitions", "contentions", "wait p50 µs", "wait p99 µs", "wait max µs",
                   "hold mean µs", "vCPU time waiting"), rows)


def _bql_sites(result: Result) -> _Table:
    bql = next((st for st in result.locks.values() if st.bql), None)
    sites = [] if bql is None else [s for s in bql.sites if s.acquisitions or s.wait_total_ns][:TOP_SITES]
    rows = tuple(
        (s.site, f"{s.wait_total_ns * 1e-9:.5f}", f"{s.acquisitions:,}",
         f"{(s.wait_total_ns // s.acquisitions if s.acquisitions else 0) * 1e-3:,.2f}",
         f"{s.contentions:,}", _us(s.wait_max_ns))
        for s in sites)
    return _Table("Top BQL call sites (info sync-profile: sorted by total wait)",
                  ("call site", "wait time (s)", "count", "average (us)", "contended", "max wait µs"), rows)


def _regions(result: Result) -> _Table:
    regions = sorted((r for r in result.regions if r.count), key=lambda r: (-r.count, r.name))
    rows = tuple((r.name, f"{r.count:,}", _us(r.p50), _us(r.p90), _us(r.p99), _us(r.max)) for r in regions)
    return _Table("Device regions: access latency (exit to guest re-entry, lock waits included)",
                  ("region", "accesses", "p50 µs", "p90 µs", "p99 µs", "max µs"), rows)


def _vcpu_values(v: VCPUResult, runnable: bool) -> tuple[float, ...]:
    """exits, then (ns, share of elapsed) for guest/exit/lock wait/[runnable/]halted, then interrupts."""
    elapsed = v.elapsed_ns
    out: list[float] = [v.exits]
    times = (v.guest_ns, v.exit_ns, v.lock_wait_ns, v.runnable_ns, v.halted_ns) if runnable else \
        (v.guest_ns, v.exit_ns, v.lock_wait_ns, v.halted_ns)
    for ns in times:
        out += [ns, ns / elapsed if elapsed else 0.0]
    out.append(v.interrupts)
    return tuple(out)


def _vcpu_cells(label: str, values: Sequence[float]) -> tuple[str, ...]:
    cells = [label, f"{round(values[0]):,}"]
    for i in range(1, len(values) - 1, 2):
        cells += [_ms(values[i]), _pct(values[i + 1])]
    cells.append(f"{round(values[-1]):,}")
    return tuple(cells)


def _vcpus(result: Result) -> _Table:
    """Per-vCPU time by state; with ``--host-cpus``, time runnable but waiting for a CPU too."""
    runnable = result.config.host_cpus is not None
    states = ("guest", "exit", "lock wait", "runnable", "halted") if runnable else ("guest", "exit", "lock wait", "halted")
    headers = ("vCPU", "exits", *(h for state in states for h in (f"{state} ms", "%")), "interrupts")
    vcpus = result.vcpus
    shown = vcpus[:MAX_VCPU_ROWS]
    rows = tuple(_vcpu_cells(str(v.index), _vcpu_values(v, runnable)) for v in shown)
    note = f"… {len(vcpus) - len(shown)} more vCPUs" if len(vcpus) > len(shown) else ""
    footer: tuple[tuple[str, ...], ...] = ()
    if len(vcpus) > 1:
        columns = list(zip(*(_vcpu_values(v, runnable) for v in vcpus)))
        pick: tuple[tuple[str, Callable[[Sequence[float]], float]], ...] = (
            ("min", min), ("median", statistics.median), ("max", max))
        footer = tuple(_vcpu_cells(label, [fn(col) for col in columns]) for label, fn in pick)
    return _Table(f"vCPUs ({' + '.join(states)} = elapsed)", headers, rows, note, footer)


def run_report_sections(result: Result) -> tuple[_Section, ...]:
    """The report's content, before rendering."""
    return (_summary(result), _locks(result), _bql_sites(result), _regions(result), _vcpus(result))


# -- rendering -------------------------------------------------------------------------------------

def _plain_table(t: _Table) -> list[str]:
    out = [t.title]
    if not t.rows:
        return out + [f"  {t.empty}"]
    lines = (t.headers,) + t.rows + t.footer
    widths = [max(len(r[i]) for r in lines) for i in range(len(t.headers))]

    def fmt(cells: tuple[str, ...]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    out.append(fmt(t.headers))
    out += [fmt(r) for r in t.rows]
    if t.note:
        out.append(t.note)
    if t.footer:
        out.append("  ".join("-" * w for w in widths))
        out += [fmt(r) for r in t.footer]
    return out


def _render_plain(sections: Sequence[_Section]) -> str:
    blocks: list[list[str]] = []
    for s in sections:
        if isinstance(s, _Fields):
            w = max(len(k) for k, _ in s.items)
            blocks.append([s.title] + [f"  {k:<{w}}  {v}" for k, v in s.items])
        else:
            blocks.append(_plain_table(s))
    return "\n\n".join("\n".join(b) for b in blocks)


def _render_rich(sections: Sequence[_Section], console: Console) -> str:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Every string goes in as Text: site and region names are data, never rich markup.
    with console.capture() as capture:
        for i, s in enumerate(sections):
            if i:
                console.print()
            console.print(Text(s.title, style="bold"))
            if isinstance(s, _Fields):
                grid = Table.grid(padding=(0, 2))
                grid.add_column(style="bold")
                grid.add_column()
                for k, v in s.items:
                    grid.add_row(Text("  " + k), Text(v))
                console.print(grid)
                continue
            if not s.rows:
                console.print(Text(f"  {s.empty}"))
                continue
            table = Table(box=box.SIMPLE_HEAD, caption=Text(s.note) if s.note else None,
                          caption_justify="left")
            for j, h in enumerate(s.headers):
                table.add_column(Text(h), justify="left" if j == 0 else "right", no_wrap=j == 0)
            last = len(s.rows) - 1
            for n, row in enumerate(s.rows):
                table.add_row(*map(Text, row), end_section=n == last and bool(s.footer))
            for row in s.footer:
                table.add_row(*map(Text, row), style="dim")
            console.print(table)
    return capture.get().rstrip("\n")


def render_run_report(result: Result, *, console: Console | None = None, plain: bool | None = None) -> str:
    """The ``aemu run`` report of ``result`` as text.

    ``plain=True`` gives hand-aligned text without escape codes; ``plain=False`` renders rich
    tables on ``console`` (a new :class:`rich.console.Console` if None) and returns what it
    printed; ``plain=None`` picks rich when the console (or stdout) is a terminal.
    """
    sections = run_report_sections(result)
    if plain is None:
        if console is None:
            from rich.console import Console

            console = Console()
        plain = not console.is_terminal
    if plain:
        return _render_plain(sections)
    if console is None:
        from rich.console import Console

        console = Console()
    return _render_rich(sections, console)

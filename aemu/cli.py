"""The ``aemu`` command (click).

Subcommands: ``compare`` (the seed's comparison, README's main job), ``run`` (one
configuration), ``sweep`` (scaling over vCPU counts), ``mtree`` (``info mtree``), ``demo``.
QEMU-style options (``-M``, ``-smp``, ``-accel``) and aemu's own (``--workload``, ``--series``,
``--patch``, ``--lockless``, ``--costs``, ``--seed``, ``--quantum``, ``--duration``, ``--param``,
``--lock-policy``) are passed to :meth:`aemu.config.MachineConfig.parse`.

Exit codes: 0 ok; 1 the run failed; 2 usage error (one line, no traceback unless ``--debug``);
130 interrupted (``run`` prints the partial report first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__

if TYPE_CHECKING:
    from .config import MachineConfig
    from .machine import Machine
    from .result import Result
    from .trace import Tracer

F = TypeVar("F", bound=Callable[..., Any])

_PASSTHROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": True,
                "help_option_names": ["-h", "--help"]}
_DEBUG = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aemu")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Emulate how a VMM's vCPUs, devices and the Big QEMU Lock interact, in virtual time."""
    global _DEBUG
    _DEBUG = debug


# -- shared pieces ---------------------------------------------------------------------------------

def _out_file(path: str | None, what: str) -> Path | None:
    """Check an output file can be written before a long run starts."""
    if path is None:
        return None
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise click.UsageError(f"{what} {path!r} is a directory; give a file name")
    if not parent.is_dir():
        raise click.UsageError(f"{what} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise click.UsageError(f"{what} {path!r} is not writable")
    existed = p.exists()
    try:  # probe now, not after a long run
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise click.UsageError(f"{what} {path!r}: cannot write it ({e.strerror})") from None
    if not existed:
        p.unlink(missing_ok=True)
    return p


def _out_dir(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise click.UsageError(f"--plot {path!r} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.UsageError(f"--plot {path!r}: cannot create it ({e.strerror})") from None
    if not os.access(p, os.W_OK):
        raise click.UsageError(f"--plot {path!r} is not writable")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install matplotlib") from None
    return p


def _write_json(path: Path, doc: Any) -> None:
    try:
        path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        raise click.UsageError(f"--json {str(path)!r}: cannot write it ({e.strerror})") from None


def _write_outputs(result: Any, json_file: Path | None, tracer: Any, timeline_file: Path | None) -> None:
    """The result document and the timeline a run was asked for."""
    if json_file is not None:
        _write_json(json_file, result.to_dict())
        click.echo(f"wrote {json_file}")
    if tracer is not None and timeline_file is not None:
        from .report.timeline import timeline_summary, write_timeline

        write_timeline(tracer, timeline_file)
        click.echo(f"wrote {timeline_file} ({timeline_summary(tracer)})")


class _Progress:
    """A rich progress bar that appears only once a run has taken more than a second."""

    def __init__(self, quiet: bool, total: float, unit: str) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.total = total
        self.unit = unit
        self.t0 = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def update(self, done: float, text: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            if time.monotonic() - self.t0 < 1.0:
                return
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                TimeElapsedColumn(), transient=True, console=_stderr_console())
            self.bar.start()
            self.task = self.bar.add_task(text, total=self.total)
        self.bar.update(self.task, completed=done, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def _progress(quiet: bool, total: float, unit: str) -> Iterator[_Progress]:
    p = _Progress(quiet, total, unit)
    try:
        yield p
    finally:
        p.close()


def _run_one(config: MachineConfig, tracer: Tracer | None, *, realtime: bool, quiet: bool) -> Result:
    """One run by :func:`aemu.runner.run_machine`: on a fresh virtual-time loop, or on uvloop in
    real time; Ctrl-C keeps the partial report (``interrupted``)."""
    from . import clock
    from .result import Result
    from .runner import run_cap_ns, run_machine, run_on_host_loop

    time_word = "wall" if realtime else "virtual"
    with _progress(quiet, 0, "ns") as bar:
        def started(machine: Machine) -> None:
            cap = run_cap_ns(machine.config, machine.workload, realtime=realtime)
            bar.total = cap or 0
            bar.quiet = bar.quiet or cap is None  # no end to measure progress against

        def step(ns: int, fin: int, total: int) -> None:
            bar.update(ns, f"{time_word} {ns / 1e6:,.1f} ms, {fin}/{total} vCPUs finished")

        coro = run_machine(config, tracer=tracer, progress=step, on_start=started, keep_partial=True)
        machine = run_on_host_loop(coro) if realtime else clock.run(coro)
    return Result.from_machine(machine)


def _machine_args(f: F) -> F:
    return click.argument("args", nargs=-1, type=click.UNPROCESSED)(f)


# -- compare ------------------------------------------------------------------------------------------

@cli.command(context_settings=_PASSTHROUGH)
@click.option("--no-ablation", is_flag=True, help="Skip the per-switch ablation runs.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes (default: one per core).")
@click.option("--json", "json_path", metavar="FILE", help="Write every run's result document to FILE.")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write PNG plots into DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def compare(no_ablation: bool, jobs: int | None, json_path: str | None, plot_dir: str | None, quiet: bool,
            args: tuple[str, ...]) -> None:
    """The seed's scenario before vs after the BQL-free series, plus an ablation.

    ARGS are QEMU-style and aemu options that change the seed's machine
    (-M q35,hpet=off -smp 240,sockets=4 -accel kvm,kernel-irqchip=split). Virtual time: every
    figure is virtual nanoseconds of the modelled machine, not host time.
    """
    from .compare import DEFAULT_ARGS, compare as run_compare, format_comparison, seed_configs

    json_file = _out_file(json_path, "--json")
    plots = _out_dir(plot_dir)
    argv = DEFAULT_ARGS.split() + list(args)
    total = sum(len(v) for v in seed_configs(argv, ablation=not no_ablation).values())
    t0 = time.monotonic()
    with _progress(quiet, total, "runs") as bar:
        done = [0]

        def step(label: str, _r: Any) -> None:
            done[0] += 1
            bar.update(done[0], f"compare: {done[0]}/{total} runs ({label})")

        c = run_compare(argv, ablation=not no_ablation, jobs=jobs, progress=step)
    click.echo(format_comparison(c))
    click.echo(f"\n(wall time {time.monotonic() - t0:.1f} s for {total} runs)")
    if json_file is not None:
        _write_json(json_file, {"schema": "aemu.compare/1",
                                "boot": {k: r.to_dict() for k, r in c.boot.items()},
                                "hpet-bench": {k: r.to_dict() for k, r in c.bench.items()}})
        click.echo(f"wrote {json_file}")
    if plots is not None:
        from .report.plots import write_comparison_plots

        for p in write_comparison_plots(c, plots):
            click.echo(f"wrote {p}")


# -- run ------------------------------------------------------------------------------------------------

@cli.command(context_settings=_PASSTHROUGH)
@click.option("--json", "json_path", metavar="FILE", help="Write the result document (aemu.result/1) to FILE.")
@click.option("--timeline", "timeline_path", metavar="FILE", help="Write a Perfetto/Chrome trace to FILE.")
@click.option("--timeline-window", metavar="START:END", help="Only trace this virtual-time window, e.g. 0:5ms.")
@click.option("--timeline-max", type=click.IntRange(1000, 10**8), default=500_000, show_default=True,
              help="At most this many spans in the timeline (the rest is counted, not kept).")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write PNG plots into DIR.")
@click.option("--realtime", is_flag=True, help="Run on a real-time loop (uvloop) paced to wall time.")
@click.option("-qmp", "--qmp", "qmp_spec", metavar="unix:PATH,server|tcp:HOST:PORT,server",
              help="Serve a QMP monitor (QEMU's syntax; add ,wait=off not to wait for a client).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def run(json_path: str | None, timeline_path: str | None, timeline_window: str | None, timeline_max: int,
        plot_dir: str | None, realtime: bool, qmp_spec: str | None, quiet: bool, args: tuple[str, ...]) -> None:
    """Run one configuration and print the report.

    ARGS are QEMU-style options (-M, -smp, -accel) and aemu options (--workload, --series,
    --patch, --lockless, --costs, --seed, --quantum, --duration, --param, --lock-policy).
    ``-qmp unix:PATH,server[,wait=off]`` or ``-qmp tcp:HOST:PORT,server[,wait=off]`` serves a QMP
    monitor during the run (see aemu.monitor).
    """
    from .config import MachineConfig, parse_duration
    from .report.tables import render_run_report
    from .trace import Tracer

    json_file = _out_file(json_path, "--json")
    timeline_file = _out_file(timeline_path, "--timeline")
    plots = _out_dir(plot_dir)
    qmp = None
    if qmp_spec is not None:
        from .monitor.qmp import parse_qmp_option

        qmp = parse_qmp_option(qmp_spec)
    config = MachineConfig.parse(list(args))
    tracer = None
    if timeline_file is not None:
        start, end = 0, None
        if timeline_window:
            a, sep, b = timeline_window.partition(":")
            if not sep:
                raise click.UsageError("--timeline-window: expected START:END, e.g. 0:5ms")
            start = parse_duration(a or "0", "--timeline-window")
            end = parse_duration(b, "--timeline-window") if b else None
        tracer = Tracer(window_start_ns=start, window_end_ns=end, max_spans=timeline_max)
    if qmp is not None:
        from .monitor.runner import run_with_monitor

        def listening(server: Any) -> None:
            note = ""
            if server.address.wait:
                note = ("; starts when a client connects" if realtime
                        else "; paused until a client sends 'cont'")
            click.echo(f"aemu: QMP monitor on {server.bound}{note}", err=True)

        result = run_with_monitor(config, qmp, realtime=realtime, tracer=tracer, on_listening=listening)
    else:
        result = _run_one(config, tracer, realtime=realtime, quiet=quiet)
    click.echo(render_run_report(result))
    _write_outputs(result, json_file, tracer, timeline_file)
    if plots is not None:
        from .report.plots import plot_bql_utilisation, plot_latency_cdf

        for region in [r.name for r in result.regions][:1]:
            click.echo(f"wrote {plot_latency_cdf({config.series: result}, region, plots / f'latency-cdf-{region}.png')}")
        click.echo(f"wrote {plot_bql_utilisation({config.series: result}, plots / 'bql-utilisation.png')}")
    if result.interrupted:
        raise KeyboardInterrupt


# -- sweep ----------------------------------------------------------------------------------------------

@cli.command(context_settings=_PASSTHROUGH)
@click.option("--smp", "smp_list", default="1,8,32,64,128,240", show_default=True,
              help="Comma-separated vCPU counts.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes (default: one per core).")
@click.option("--json", "json_path", metavar="FILE", help="Write the results to FILE.")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write the scaling plot into DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def sweep(smp_list: str, jobs: int | None, json_path: str | None, plot_dir: str | None, quiet: bool,
          args: tuple[str, ...]) -> None:
    """A scaling table: the workload before and after the series at each vCPU count."""
    from .config import MachineConfig
    from .sweep import format_sweep, parse_smp_list, sweep as run_sweep

    cpus = parse_smp_list(smp_list)
    json_file = _out_file(json_path, "--json")
    plots = _out_dir(plot_dir)
    base = MachineConfig.parse(["-accel", "kvm,kernel-irqchip=split", "--workload", "boot", *args])
    with _progress(quiet, 2 * len(cpus), "runs") as bar:
        rows = run_sweep(base, cpus, jobs=jobs, progress=lambda d, t: bar.update(d, f"sweep: {d}/{t} runs"))
    click.echo(format_sweep(rows))
    if json_file is not None:
        _write_json(json_file, {"schema": "aemu.sweep/1", "runs": [
            {"cpus": r.cpus, "before": r.before.to_dict(), "after": r.after.to_dict()} for r in rows]})
        click.echo(f"wrote {json_file}")
    if plots is not None:
        from .report.plots import plot_scaling

        series = {"before": [(r.cpus, r.before) for r in rows], "after": [(r.cpus, r.after) for r in rows]}
        click.echo(f"wrote {plot_scaling(series, plots / f'scaling-{base.workload}.png')}")


# -- replay ---------------------------------------------------------------------------------------------

@cli.command(context_settings=_PASSTHROUGH)
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--time-scale", type=click.FloatRange(0, None, min_open=True), default=1.0, show_default=True,
              help="Scale the recorded gaps between accesses.")
@click.option("--lenient", is_flag=True, help="Skip malformed trace lines (and count them).")
@click.option("--json", "json_path", metavar="FILE", help="Write the result document to FILE.")
@click.option("--timeline", "timeline_path", metavar="FILE", help="Write a Perfetto/Chrome trace to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def replay(trace: str, time_scale: float, lenient: bool, json_path: str | None, timeline_path: str | None,
           quiet: bool, args: tuple[str, ...]) -> None:
    """Replay a QEMU trace log (memory_region_ops_read/write) on the modelled machine.

    Gives the same report as `run`, so a real boot's access mix can be compared before vs after
    the series at any -smp. ARGS are QEMU-style and aemu options; without -smp the machine has as
    many vCPUs as the trace recorded.
    """
    from .config import SMP, MachineConfig
    from .replay import load_trace, replay as run_replay
    from .report.tables import render_run_report
    from .trace import Tracer

    if not Path(trace).exists():
        raise click.UsageError(f"trace {trace!r}: no such file")
    json_file = _out_file(json_path, "--json")
    timeline_file = _out_file(timeline_path, "--timeline")
    config = MachineConfig.parse(["-accel", "kvm,kernel-irqchip=split", *args])
    parsed = load_trace(trace, lenient=lenient)
    if "-smp" not in args:  # as many vCPUs as the trace recorded
        config = config.replace(smp=SMP.parse(str(parsed.recorded_vcpus)))
    tracer = Tracer() if timeline_file is not None else None
    with _progress(quiet, 1, "ns") as bar:
        def step(vns: int, fin: int, total: int) -> None:
            bar.update(min(fin / max(total, 1), 1.0), f"replay: virtual {vns / 1e6:,.1f} ms, {fin}/{total} vCPUs done")

        result, report = run_replay(parsed, config, time_scale=time_scale, tracer=tracer, progress=step)
    click.echo(report.format())
    click.echo()
    click.echo(render_run_report(result))
    _write_outputs(result, json_file, tracer, timeline_file)


# -- mtree ----------------------------------------------------------------------------------------------

@cli.command(context_settings=_PASSTHROUGH)
@click.option("-f", "flat", is_flag=True, help="Print the flat views (info mtree -f).")
@_machine_args
def mtree(flat: bool, args: tuple[str, ...]) -> None:
    """Print ``info mtree`` for the machine the options describe."""
    from .config import MachineConfig
    from .machine import Machine
    from .memory import mtree_text

    m = Machine(MachineConfig.parse(["--workload", "pmtimer-bench", *args]))
    click.echo(mtree_text(m.io, m.memory, flat=flat).rstrip())


# -- costs ----------------------------------------------------------------------------------------------

@cli.command()
@click.option("--toml", "as_toml", is_flag=True, help="Print the costs as a TOML file to edit and pass to --costs.")
@click.option("--costs", "costs_path", metavar="FILE", help="Show the costs this TOML file gives instead.")
def costs(as_toml: bool, costs_path: str | None) -> None:
    """The cost model: every cost in virtual ns, with its source."""
    from .costs import COST_SOURCES, CostModel

    c = CostModel.from_toml(costs_path) if costs_path else CostModel()
    d = c.to_dict()
    handlers = d.pop("handler_ns")
    if as_toml:
        for k, v in d.items():
            click.echo(f"{k} = {v}  # {COST_SOURCES[k]}")
        click.echo("\n[handler_ns]  # " + COST_SOURCES["handler_ns"])
        for k, v in sorted(handlers.items()):
            click.echo(f'"{k}" = {v}')
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v:>7,} ns  {COST_SOURCES[k]}")
    click.echo(f"handler_ns ({COST_SOURCES['handler_ns']}):")
    for k, v in sorted(handlers.items()):
        click.echo(f"  {k:<{width - 2}}  {v:>7,} ns")


# -- demo -------------------------------------------------------------------------------------------------

@cli.command()
@click.option("--readers", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Concurrent reader tasks (vCPU stand-ins).")
@click.option("--reads", default=200, show_default=True, type=click.IntRange(1, 10**7), help="Timer reads per reader.")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")
def demo(readers: int, reads: int, seed: int) -> None:
    """The foundation's demo: timer-port reads as plain tasks, BQL vs lockless_io."""
    from .demo import compare_timer_reads, format_comparison

    click.echo(format_comparison(compare_timer_reads(readers=readers, reads=reads, seed=seed)))


# -- entry point --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 ok, 1 run failed, 2 usage error, 130 interrupted."""
    from .errors import AemuError, ConfigError
    from .replay import TraceError

    try:
        cli.main(args=argv, prog_name="aemu", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except (click.UsageError, ConfigError, TraceError) as e:
        if _DEBUG:
            raise
        msg = e.format_message() if isinstance(e, click.UsageError) else str(e)
        click.echo(f"aemu: {msg}", err=True)
        return 2
    except (click.Abort, KeyboardInterrupt):
        click.echo("aemu: interrupted", err=True)
        return 130
    except AemuError as e:  # a failed run: one line, the cause
        if _DEBUG:
            raise
        click.echo(f"aemu: {e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

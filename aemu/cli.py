"""The ``aemu`` command (click).

Subcommands: ``compare`` (the series' reproducer, before vs after, README's main job), ``run``
(one configuration), ``sweep`` (scaling over vCPU counts), ``replay`` (a QEMU trace), ``mtree``
(``info mtree``), ``costs``, ``demo``. Machine options -- QEMU-style (``-M``, ``-smp``,
``-accel``) and aemu's own (``--workload``, ``--series``, ``--patch``, ``--lockless``, ``--costs``,
``--seed``, ``--quantum``, ``--duration``, ``--param``, ``--lock-policy``) -- are passed to
:meth:`aemu.config.MachineConfig.parse`. They never go through click's option parser
(:class:`_MachineCommand`): click would read ``--patch -hpet-lock`` as ``-h``. ``-M help``,
``-accel help``, ``--workload help``, ``--patch help`` and ``--lockless help`` list what each
accepts, as QEMU's ``-M help`` does.

Exit codes: 0 ok; 1 the run failed; 2 usage error (one line; ``--debug`` adds the traceback);
130 interrupted by Ctrl-C or SIGTERM (``run`` prints the partial report, ``compare`` and
``sweep`` what finished; files asked for are written; a QMP socket is removed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .compare import DEFAULT_ARGS as DEFAULT_COMPARE_ARGS
from .compare import MACHINE_ARGS  # sensitivity's machine (aemu.sensitivity.DEFAULT_ARGS)

if TYPE_CHECKING:
    from .config import MachineConfig
    from .machine import Machine
    from .result import Result
    from .trace import Tracer

F = TypeVar("F", bound=Callable[..., Any])

_HELP_NAMES = ["-h", "--help"]
_DEBUG = False


def _plain(text: str | None) -> str | None:
    """Help text as a terminal shows it: reStructuredText's ``literal`` and `title` marks dropped."""
    return None if text is None else re.sub(r"``?([^`]*)``?", r"\1", text)


class _Group(click.Group):
    """The ``aemu`` group: plain help text; bare ``aemu`` prints the help (exit 0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _plain(self.help)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": _HELP_NAMES})
@click.version_option(__version__, prog_name="aemu")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Emulate how a VMM's vCPUs, devices and the Big QEMU Lock interact, in virtual time.

    Start with aemu compare (the BQL-free series before vs after on a 240-vCPU machine) or aemu
    run; aemu COMMAND --help says what each takes.
    """
    global _DEBUG
    _DEBUG = debug


# -- machine options ---------------------------------------------------------------------------------

#: QEMU's descriptions of the machines aemu models (``-M help``).
_MACHINE_TITLES = {"q35": "Standard PC (Q35 + ICH9, 2009)", "pc": "Standard PC (i440FX + PIIX, 1996)"}
#: What ``-accel kvm,kernel-irqchip=MODE`` puts in KVM (``-accel help``).
_IRQCHIP_MODES = {"on": "LAPIC, IOAPIC and PIC in KVM",
                  "split": "LAPIC in KVM; IOAPIC and PIC in QEMU, under the BQL",
                  "off": "LAPIC, IOAPIC and PIC in QEMU, under the BQL"}
#: Options whose value ``help`` (or QEMU's ``?``) lists what they accept.
_HELP_TOPICS = ("-M", "-machine", "-accel", "--workload", "--patch", "--lockless")


class _MachineCommand(click.Command):
    """A command whose ARGS are machine options (:meth:`aemu.config.MachineConfig.parse`).

    Before click parses anything, :meth:`parse_args` sets the machine options aside, each with
    its value: click sees only its own options (exact names), the positional arguments, then
    ``--`` and the machine options as plain ARGS. So ``--patch -hpet-lock`` (a value that starts
    with ``-h``), ``-machine q35`` (an ``h`` inside) and ``--seed -1`` reach MachineConfig as
    written, whatever single-letter options click has; ``-h`` and ``--help`` are help only as
    whole words. ``refuse`` maps a machine option the command does not use to the reason (an
    error, not a silently ignored option); ``defaults`` are the machine options the command
    starts from (its --help shows the defaults they give).
    """

    def __init__(self, *args: Any, refuse: Mapping[str, str] | None = None, defaults: Sequence[str] = (),
                 default_notes: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"help_option_names": _HELP_NAMES})
        super().__init__(*args, **kwargs)
        self.help = _plain(self.help)
        self.refuse = dict(refuse or {})
        self.defaults = tuple(defaults)
        #: option -> its default in words, where the command decides it at run time
        self.default_notes = dict(default_notes or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own, machine = self.split_args(ctx, args)
        topic = _help_topic(machine)
        if topic is not None:
            click.echo(_topic_help(topic, [*self.defaults, *_without_topic(machine, topic)]))
            ctx.exit(0)
        for tok in machine:
            opt = tok.partition("=")[0] if tok.startswith("--") else tok
            if opt in self.refuse:
                raise click.UsageError(f"{opt}: {self.refuse[opt]}")
        return super().parse_args(ctx, [*own, "--", *machine])

    def split_args(self, ctx: click.Context, args: Sequence[str]) -> tuple[list[str], list[str]]:
        """(click's options and positional arguments, the machine options with their values)."""
        from .config import OPTIONS_WITH_VALUE

        takes_value = {name: False for name in ctx.help_option_names}
        for p in self.params:
            if isinstance(p, click.Option):
                for name in (*p.opts, *p.secondary_opts):
                    takes_value[name] = not (p.is_flag or p.count)
        own: list[str] = []
        machine: list[str] = []
        i = 0
        while i < len(args):
            tok = args[i]
            name, eq, _ = tok.partition("=")
            if tok == "--":
                machine += args[i + 1:]
                break
            if tok in takes_value:
                own.append(tok)
                if takes_value[tok] and i + 1 < len(args):
                    own.append(args[i + 1])
                    i += 1
            elif eq and tok.startswith("--") and takes_value.get(name):
                own.append(tok)
            elif tok.startswith("-") and tok != "-":
                machine.append(tok)
                if not eq and tok in OPTIONS_WITH_VALUE and i + 1 < len(args):
                    machine.append(args[i + 1])
                    i += 1
            else:
                own.append(tok)
            i += 1
        return own, machine

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        with formatter.section("Machine options (ARGS; QEMU-style and aemu's, defaults in brackets)"):
            formatter.write_dl(_machine_option_rows(self.defaults, self.refuse, self.default_notes))


def _machine_option_rows(defaults: Sequence[str], refuse: Mapping[str, str],
                         notes: Mapping[str, str]) -> list[tuple[str, str]]:
    """The machine options and what each defaults to (from MachineConfig, after ``defaults``)."""
    from .config import HOST_RQS, HOST_SCHEDS, LOCK_POLICIES, MachineConfig

    d = MachineConfig.parse(list(defaults))
    rows = [
        ("-M", "q35|pc[,hpet=on|off]", f"the machine [{d.machine},hpet={'on' if d.hpet else 'off'}]; -M help"),
        ("-smp", "N[,sockets=S,cores=C,threads=T,maxcpus=M]",
         f"vCPUs and topology, completed as QEMU does: -smp N is 1 socket of N cores [{d.smp.cpus}"
         + (f",sockets={d.smp.sockets}" if d.smp.sockets > 1 else "") + "]"),
        ("-accel", "kvm[,kernel-irqchip=on|split|off]", f"[kvm,kernel-irqchip={d.kernel_irqchip}]; -accel help"),
        ("-cpu", "host|max[,hv-time]", "the CPU; hv-time: the Hyper-V reference TSC page (a clock read without an exit) "
         f"[host{',hv-time' if d.hv_time else ''}]"),
        ("--workload", "NAME", f"what the vCPUs run [{d.workload}]; --workload help"),
        ("--param", "KEY=VALUE", "a parameter of the workload (repeat for more); --workload help"),
        ("--series", "before|after", "none or all of the BQL-free series' switches [after]"),
        ("--patch", "[-]NAME[,...]", "turn a switch of the series on, or off with -NAME; --patch help"),
        ("--lockless", "REGION[,...]", "make I/O regions lockless too (a what-if); --lockless help"),
        ("--lock-policy", "|".join(LOCK_POLICIES), f"how the BQL is handed over [{d.lock_policy}]"),
        ("--host-cpus", "N", f"physical CPUs the vCPU and main-loop threads share [{d.host_cpus or 'one each'}]"),
        ("--host-rq", "|".join(HOST_RQS), f"their run queues: one for all (perfect balancing) or one per CPU "
         f"(Linux's balancing) [{d.host_rq}]"),
        ("--host-nodes", "N", f"NUMA nodes the host CPUs are split into: per-CPU queues balance within a node, then "
         f"across [{d.host_nodes}]"),
        ("--host-sched", "|".join(HOST_SCHEDS), f"how the host kernel shares the --host-cpus: EEVDF (Linux >= 6.6) "
         f"or CFS (older, wake-up preemption) [{d.host_sched}]"),
        ("--costs", "FILE", "costs from a TOML file [built in; aemu costs shows them]"),
        ("--seed", "N", f"random seed [{d.seed}]"),
        ("--quantum", "TIME", f"how far a vCPU may run ahead of the others [{d.quantum_ns // 1000}us]"),
        ("--duration", "TIME", "stop after this much virtual time [when the workload ends, at most 2s]"),
    ]
    return [(f"{opt} {arg}", re.sub(r"\[[^]]*\]", f"[{notes[opt]}]", text, count=1) if opt in notes else text)
            for opt, arg, text in rows if opt not in refuse]


def _help_topic(machine: Sequence[str]) -> str | None:
    """The option whose value is ``help`` (or ``?``), if any."""
    for i, tok in enumerate(machine):
        name, eq, value = tok.partition("=")
        if eq and name in _HELP_TOPICS and value in ("help", "?"):
            return name
        if tok in _HELP_TOPICS and i + 1 < len(machine) and machine[i + 1] in ("help", "?"):
            return tok
    return None


def _without_topic(machine: Sequence[str], topic: str) -> list[str]:
    out: list[str] = []
    skip = False
    for i, tok in enumerate(machine):
        if skip:
            skip = False
        elif tok.partition("=")[0] == topic and "=" in tok:
            pass
        elif tok == topic and i + 1 < len(machine) and machine[i + 1] in ("help", "?"):
            skip = True
        else:
            out.append(tok)
    return out


def _topic_help(topic: str, args: list[str]) -> str:
    """What ``topic help`` prints: the accepted values, one a line, as QEMU's ``-M help`` does."""
    from .config import MACHINES, MachineConfig

    if topic in ("-M", "-machine"):
        d = MachineConfig()
        lines = ["Supported machines are:"]
        lines += [f"{m:<20} {_MACHINE_TITLES.get(m, '')}{' (default)' if m == d.machine else ''}" for m in MACHINES]
        lines.append(f"Properties: hpet=on|off [{'on' if d.hpet else 'off'}]; "
                     "kernel-irqchip=on|split|off (as -accel's)")
        return "\n".join(lines)
    if topic == "-accel":
        d = MachineConfig()
        lines = ["Accelerators aemu models:", "kvm", "Properties: kernel-irqchip=MODE"]
        lines += [f"  {m:<6} {text}{' (default)' if m == d.kernel_irqchip else ''}" for m, text in _IRQCHIP_MODES.items()]
        return "\n".join(lines)
    if topic == "--workload":
        from .workloads import WORKLOADS

        default = MachineConfig().workload
        lines = [f"Workloads (--workload NAME [{default}]; --param KEY=VALUE sets a parameter):"]
        for name, factory in WORKLOADS.items():
            lines.append(f"  {name:<15} {getattr(factory, 'summary', '')}")
            specs = getattr(factory, "parameters", {})
            for key, value in getattr(factory, "defaults", dict)().items():
                spec = specs.get(key)
                what = f"{spec.help}, {spec.describe()}" if spec is not None else ""
                lines.append(f"  {'':<15}   {key}={value}" + (f"  ({what})" if what else ""))
        return "\n".join(lines)
    if topic == "--patch":
        from .patches import SWITCHES

        lines = ["Switches of the BQL-free series, in patch order (--patch NAME turns one on, --patch -NAME",
                 "off; --series before is none of them, --series after all of them, the default):"]
        width = max(len(p.name) for p in SWITCHES)
        for p in SWITCHES:
            needs = f" (needs {', '.join(p.needs)})" if p.needs else ""
            lines.append(f"  {p.name:<{width}}  {p.part:<6} {p.summary}{needs}")
        return "\n".join(lines)
    # --lockless: the I/O regions of the machine the other options describe
    from .machine import Machine

    config = MachineConfig.parse(args)
    m = Machine(config.replace(workload="idle", workload_params=(), lockless=()))
    regions = sorted({mr.name: mr for mr in m.regions() if mr.kind == "io" and mr.name != "io"}.items())
    lines = [f"I/O regions of {config.qemu_args()} (--lockless REGION[,...] makes them lockless):"]
    lines += [f"  {name}{'  (lockless already, with these switches)' if mr.lockless_io else ''}" for name, mr in regions]
    return "\n".join(lines)


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
            self.bar = None
        self.quiet = True  # nothing more after close (an interrupted run prints its report next)


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


def _check_workload(config: MachineConfig) -> None:
    """Build the workload once, so a bad --workload or --param is a usage error before anything runs."""
    from .workloads import get_workload

    get_workload(config.workload, **dict(config.workload_params))


# -- compare ------------------------------------------------------------------------------------------

@cli.command(cls=_MachineCommand, defaults=DEFAULT_COMPARE_ARGS.split(), refuse={
    "--workload": "compare runs boot and hpet-bench; use aemu run for another workload",
    "--series": "compare runs both series; --patch -NAME takes a switch out of 'after'"})
@click.option("--no-ablation", is_flag=True, help="Skip the per-switch ablation runs.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes [one per core].")
@click.option("--json", "json_path", metavar="FILE", help="Write every run's result document to FILE.")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write PNG plots into DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def compare(no_ablation: bool, jobs: int | None, json_path: str | None, plot_dir: str | None, quiet: bool,
            args: tuple[str, ...]) -> None:
    """The BQL-free series' reproducer, before vs after the series, plus an ablation.

    Runs the boot workload and hpet-bench (with hpet=on) on the machine the series was measured
    with, each before the series, after it, and (the ablation) after it with one switch off at a
    time. ARGS change that machine (see below). Virtual time: every figure is virtual time of the
    modelled machine, not host time. Ctrl-C stops at once and prints the runs that finished.
    """
    from .compare import compare as run_compare, format_comparison, format_finished, published_document, seed_configs

    json_file = _out_file(json_path, "--json")
    plots = _out_dir(plot_dir)
    argv = DEFAULT_COMPARE_ARGS.split() + list(args)
    configs = seed_configs(argv, ablation=not no_ablation)
    comparison_host = configs["boot"]["before"].host_cpus
    labels = [f"{wl} {label}" for wl, runs in configs.items() for label in runs]
    total = len(labels)
    t0 = time.monotonic()
    finished: dict[str, Result] = {}
    with _progress(quiet, total, "runs") as bar:
        def step(label: str, r: Result) -> None:
            finished[label] = r
            bar.update(len(finished), f"compare: {len(finished)}/{total} runs ({label})")

        try:
            c = run_compare(argv, ablation=not no_ablation, jobs=jobs, progress=step)
        except KeyboardInterrupt:
            bar.close()
            finished = {label: finished[label] for label in labels if label in finished}  # in run order
            click.echo(format_finished(finished, total))
            if json_file is not None:
                by_workload: dict[str, dict[str, Any]] = {wl: {} for wl in configs}
                for label, r in finished.items():
                    workload, _, series = label.partition(" ")
                    by_workload[workload][series] = r.to_dict()
                _write_json(json_file, {"schema": "aemu.compare/1", "interrupted": True, **by_workload,
                                        "published": published_document(comparison_host)})
                click.echo(f"wrote {json_file}")
            raise
    click.echo(format_comparison(c))
    click.echo(f"\n(wall time {time.monotonic() - t0:.1f} s for {total} runs)")
    if json_file is not None:
        _write_json(json_file, {"schema": "aemu.compare/1",
                                "boot": {k: r.to_dict() for k, r in c.boot.items()},
                                "hpet-bench": {k: r.to_dict() for k, r in c.bench.items()},
                                **{name: {k: r.to_dict() for k, r in runs.items()} for name, runs in c.scenarios.items()},
                                "published": published_document(comparison_host)})
        click.echo(f"wrote {json_file}")
    if plots is not None:
        from .report.plots import write_comparison_plots

        for p in write_comparison_plots(c, plots):
            click.echo(f"wrote {p}")


# -- run ------------------------------------------------------------------------------------------------

@cli.command(cls=_MachineCommand)
@click.option("--json", "json_path", metavar="FILE", help="Write the result document (aemu.result/1) to FILE.")
@click.option("--timeline", "timeline_path", metavar="FILE", help="Write a Perfetto/Chrome trace to FILE.")
@click.option("--timeline-window", metavar="START:END", help="Only trace this virtual-time window, e.g. 0:5ms.")
@click.option("--timeline-max", type=click.IntRange(1000, 10**8), default=500_000, show_default=True,
              help="At most this many spans in the timeline (the rest is counted, not kept).")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write PNG plots into DIR.")
@click.option("--realtime", is_flag=True, help="Run on a real-time loop (uvloop) paced to wall time.")
@click.option("-qmp", "--qmp", "qmp_spec", metavar="unix:PATH,server|tcp:HOST:PORT,server",
              help="Serve a QMP monitor (QEMU's syntax; add ,wait=off not to wait for a client).")
@click.option("--check", "check_mode", is_flag=True,
              help="Run in checker mode too: report races and lock-rule findings (exit 1 with findings).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def run(json_path: str | None, timeline_path: str | None, timeline_window: str | None, timeline_max: int,
        plot_dir: str | None, realtime: bool, qmp_spec: str | None, check_mode: bool, quiet: bool,
        args: tuple[str, ...]) -> None:
    """Run one configuration and print the report.

    ARGS are the machine options below, e.g. -M q35,hpet=off -smp 32 --workload boot --series
    before. -qmp unix:PATH,server[,wait=off] or -qmp tcp:HOST:PORT,server[,wait=off] serves a
    QMP monitor during the run. Ctrl-C or SIGTERM ends the run with the report so far (exit 130).
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
    _check_workload(config)
    tracer = None
    if timeline_window is not None and timeline_file is None:
        raise click.UsageError("--timeline-window needs --timeline FILE")
    if timeline_file is not None:
        start, end = 0, None
        if timeline_window is not None:
            a, sep, b = timeline_window.partition(":")
            if not sep:
                raise click.UsageError("--timeline-window: expected START:END, e.g. 0:5ms")
            start = parse_duration(a or "0", "--timeline-window")
            end = parse_duration(b, "--timeline-window") if b else None
            if end is not None and end <= start:
                raise click.UsageError(f"--timeline-window {timeline_window}: END must be after START "
                                       "(the window would be empty)")
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
    elif check_mode:
        if realtime:
            raise click.UsageError("--check runs in virtual time; drop --realtime")
        checked = _check_one(config, None, tracer, quiet=quiet)
        result = checked.result
    else:
        result = _run_one(config, tracer, realtime=realtime, quiet=quiet)
    click.echo(render_run_report(result))
    if check_mode:
        click.echo()
        click.echo(checked.format())
    _write_outputs(result, json_file, tracer, timeline_file)
    if plots is not None:
        from .report.plots import plot_bql_utilisation, plot_latency_cdf

        for region in [r.name for r in result.regions][:1]:
            click.echo(f"wrote {plot_latency_cdf({config.series: result}, region, plots / f'latency-cdf-{region}.png')}")
        click.echo(f"wrote {plot_bql_utilisation({config.series: result}, plots / 'bql-utilisation.png')}")
    if result.interrupted:
        raise KeyboardInterrupt
    if check_mode and checked.findings:
        raise click.exceptions.Exit(1)


# -- check ----------------------------------------------------------------------------------------------

def _check_one(config: MachineConfig, workload: Any, tracer: Tracer | None, *, quiet: bool) -> Any:
    """One run in checker mode (:func:`aemu.check.check`) with the progress bar; returns the report."""
    from .check import check
    from .runner import run_cap_ns
    from .workloads import get_workload

    wl = workload or get_workload(config.workload, **dict(config.workload_params))
    cap = run_cap_ns(config, wl, default_ns=None if wl.name == "replay" else 2_000_000_000)
    with _progress(quiet or cap is None, cap or 0, "ns") as bar:
        def step(ns: int, fin: int, total: int) -> None:
            bar.update(ns, f"check: virtual {ns / 1e6:,.1f} ms, {fin}/{total} vCPUs finished")

        return check(config, wl, tracer=tracer, progress=step, keep_partial=True)


@cli.command(cls=_MachineCommand, refuse={"-qmp": "aemu check runs in virtual time; use aemu run -qmp"})
@click.option("--trace", "trace_path", metavar="TRACE", type=click.Path(dir_okay=False),
              help="Check a replay of this QEMU trace log instead of --workload (as aemu replay).")
@click.option("--time-scale", type=click.FloatRange(0, None, min_open=True), default=1.0, show_default=True,
              help="With --trace: scale the recorded gaps between accesses.")
@click.option("--json", "json_path", metavar="FILE", help="Write the result document, findings included, to FILE.")
@click.option("--timeline", "timeline_path", metavar="FILE",
              help="Write a Perfetto/Chrome trace to FILE, with an instant event at each finding's accesses.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def check(trace_path: str | None, time_scale: float, json_path: str | None, timeline_path: str | None,
          quiet: bool, args: tuple[str, ...]) -> None:
    """Run a workload in checker mode: is it safe to drop the BQL?

    Watches every device's fields, the BQL and the device mutexes, and prints each finding: a race
    (a field written by one task and accessed by another with no lock in common, with the lock
    that would fix it), an IRQ line raised or lowered without the BQL (irq-without-bql), a
    lock-order inversion. ARGS are the machine options below, e.g. --series before --lockless
    serial, or --patch=-hpet-irq-bql. Exit 0 when clean, 1 with findings, 2 on usage errors.
    """
    from .config import SMP, MachineConfig
    from .trace import Tracer

    json_file = _out_file(json_path, "--json")
    timeline_file = _out_file(timeline_path, "--timeline")
    workload = None
    if trace_path is not None:
        from .replay import ReplayWorkload, load_trace

        if not Path(trace_path).exists():
            raise click.UsageError(f"--trace {trace_path!r}: no such file")
        parsed = load_trace(trace_path)
        config = MachineConfig.parse(list(args))
        if "-smp" not in args:
            config = config.replace(smp=SMP.parse(str(parsed.recorded_vcpus)))
        config = config.replace(workload="replay", workload_params=(("time_scale", time_scale),))
        workload = ReplayWorkload(parsed, time_scale=time_scale)
    else:
        config = MachineConfig.parse(list(args))
        _check_workload(config)
    tracer = Tracer() if timeline_file is not None else None
    report = _check_one(config, workload, tracer, quiet=quiet)
    click.echo(report.format())
    _write_outputs(report.result, json_file, tracer, timeline_file)
    if report.result.interrupted:
        raise KeyboardInterrupt
    if report.findings:
        raise click.exceptions.Exit(1)


# -- sweep ----------------------------------------------------------------------------------------------

_EXECUTOR_HELP = ("Where the runs go: local (a process pool here), dask (a Dask LocalCluster here) or "
                  "dask://HOST:PORT / tcp://HOST:PORT (a running Dask scheduler; pip install 'aemu[dask]').")


def _sweep_progress(bar: _Progress, what: str) -> Callable[[Any], None]:
    def show(p: Any) -> None:
        bar.update(p.done, f"{what}: {p.words()}")
    return show


@cli.command(cls=_MachineCommand, refuse={
    "--series": "give the series to sweep with --series LIST (a sweep option)",
    "--patch": "give patch edits to sweep with --patch EDITS (a sweep option)",
    "--lock-policy": "give the policies to sweep with --lock-policy LIST (a sweep option)",
    "--host-cpus": "give the host CPU counts to sweep with --host-cpus LIST (a sweep option)"})
@click.option("--smp", "smp_list", metavar="LIST",
              help="vCPU counts, e.g. 1,8,32,64 (each -smp N: 1 socket of N cores, as QEMU) "
                   "[1,8,32,64,128,240 when nothing else is swept].")
@click.option("--series", "series_list", metavar="LIST", help="Series to run [before,after].")
@click.option("--patch", "patch_list", metavar="EDITS", multiple=True,
              help="Switch edits as --patch takes them (-NAME,NAME...); repeat for more points; none: no edit.")
@click.option("--lock-policy", "policy_list", metavar="LIST", help="BQL hand-off policies, e.g. fifo,barging.")
@click.option("--host-cpus", "host_cpus_list", metavar="LIST", help="Host CPU counts, e.g. 8,32,none.")
@click.option("--set", "sets", metavar="NAME=LIST", multiple=True,
              help="Any parameter: costs.NAME=2000,5000, costs.handler_ns.REGION=..., param.KEY=..., "
                   "workload=..., seed=..., quantum=..., kernel-irqchip=...; repeat for more.")
@click.option("--grid", "grid_path", metavar="FILE.toml", help="Dimensions from a file: a [grid] table of NAME = [values].")
@click.option("--executor", default="local", show_default=True, metavar="local|dask|dask://HOST:PORT", help=_EXECUTOR_HELP)
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes [one per core].")
@click.option("--jsonl", "jsonl_path", metavar="FILE", help="Write each run's row to FILE (JSON lines) as it finishes.")
@click.option("--resume", "resume_path", metavar="FILE",
              help="Skip the configurations FILE's rows already have (an earlier --jsonl), and add the new rows to it.")
@click.option("--json", "json_path", metavar="FILE", help="Write the whole sweep (aemu.sweep/2) to FILE at the end.")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write the plot of the metric against a swept parameter into DIR.")
@click.option("--plot-x", metavar="NAME", help="The parameter on the plot's x axis [smp, or the first numeric one].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def sweep(smp_list: str | None, series_list: str | None, patch_list: tuple[str, ...], policy_list: str | None,
          host_cpus_list: str | None, sets: tuple[str, ...], grid_path: str | None, executor: str, jobs: int | None,
          jsonl_path: str | None, resume_path: str | None, json_path: str | None, plot_dir: str | None,
          plot_x: str | None, quiet: bool, args: tuple[str, ...]) -> None:
    """Run the workload over a grid of options and costs: a table, rows as JSON lines, a plot.

    The grid is the product of the lists given: --smp 1,32,240 --set costs.bql_handoff_ns=2000,5000
    is 3 x 2 points, each run before and after the series (--series). ARGS are the machine options
    below, fixed for every run. A failed run is reported with its configuration and the others go
    on; Ctrl-C stops at once and keeps what finished (--resume FILE goes on from there).
    """
    if any(p in ("help", "?") for p in patch_list):  # --patch is sweep's own option: its help topic here
        click.echo(_topic_help("--patch", list(args)))
        return
    from .batch import open_executor
    from .config import MachineConfig
    from .sweep import Grid, Sweep, SweepRun, format_sweep, iter_sweep, load_runs, parse_values, trim_partial_row

    dims: dict[str, tuple[Any, ...]] = {}

    def add(name: str, text: str) -> None:
        from .sweep import parameter

        parameter(name)  # the name first: an unknown one is the error to report
        if name in dims:
            raise click.UsageError(f"{name}: given twice; give it once with every value")
        dims[name] = parse_values(name, text)

    if smp_list is not None:
        if any(a == "-smp" for a in args):
            raise click.UsageError("-smp: sweep sets the vCPU count of each run; give the counts with --smp LIST, "
                                   "or one -smp for every run")
        add("smp", smp_list)
    for item in sets:
        name, eq, values = item.partition("=")
        if not eq:
            raise click.UsageError(f"--set {item!r}: expected NAME=VALUE[,VALUE...], e.g. costs.bql_handoff_ns=2000,5000")
        add(name.strip(), values)
    if series_list is not None:
        add("series", series_list)
    if patch_list:
        dims["patch"] = tuple(parse_values("patch", p)[0] for p in patch_list)
    if policy_list is not None:
        add("lock-policy", policy_list)
    if host_cpus_list is not None:
        add("host-cpus", host_cpus_list)
    if grid_path is None and not dims.keys() - {"series", "patch"} and "-smp" not in args:
        dims["smp"] = parse_values("smp", "1,8,32,64,128,240")
    if grid_path is None and "series" not in dims:
        dims = {**dims, "series": ("before", "after")}
    if grid_path is not None:
        grid = Grid.from_toml(grid_path, list(args), dims)
    else:
        grid = Grid.of(MachineConfig.parse(list(args)), dims)
    if plot_x is not None and plot_x not in grid.names:
        raise click.UsageError(f"--plot-x {plot_x!r} is not swept; swept: {', '.join(grid.names)}")
    json_file = _out_file(json_path, "--json")
    plots = _out_dir(plot_dir)
    if resume_path is not None and jsonl_path is not None and Path(resume_path) != Path(jsonl_path):
        raise click.UsageError("--resume FILE adds the new rows to FILE; give --jsonl the same file or leave it out")
    rows_path = resume_path or jsonl_path
    earlier = load_runs(resume_path) if resume_path is not None else []
    rows_file = _out_file(rows_path, "--resume" if resume_path else "--jsonl")
    if resume_path is not None:
        trim_partial_row(resume_path)
    total = len(grid.points())
    runs: list[SweepRun] = []
    t0 = time.monotonic()
    with open_executor(executor, jobs=jobs) as opened, _progress(quiet, total, "runs") as bar:
        out = open(rows_file, "a" if resume_path else "w", encoding="utf-8") if rows_file is not None else None
        it = iter_sweep(grid, executor=opened.executor, jobs=jobs, slots=opened.slots, done_rows=earlier,
                        progress=_sweep_progress(bar, "sweep"))
        try:
            for r in it:
                runs.append(r)
                if out is not None and not r.resumed:
                    out.write(json.dumps(r.to_dict()) + "\n")
                    out.flush()
        except KeyboardInterrupt:
            it.close()
            bar.close()
            s = Sweep.collect(grid, runs, interrupted=True)
            click.echo(f"interrupted: {len(runs)} of {total} runs finished")
            if runs:
                click.echo(format_sweep(s))
            if rows_file is not None:
                click.echo(f"wrote {rows_file} (aemu sweep ... --resume {rows_file} runs the rest)")
            if json_file is not None:
                _write_json(json_file, s.to_dict())
                click.echo(f"wrote {json_file}")
            raise
        finally:
            it.close()
            if out is not None:
                out.close()
    s = Sweep.collect(grid, runs)
    click.echo(format_sweep(s))
    resumed = sum(r.resumed for r in runs)
    click.echo(f"\n({len(runs) - resumed} runs{f', {resumed} from {resume_path}' if resumed else ''}; "
               f"{opened.words}; wall time {time.monotonic() - t0:.1f} s)")
    if rows_file is not None:
        click.echo(f"wrote {rows_file}")
    if json_file is not None:
        _write_json(json_file, s.to_dict())
        click.echo(f"wrote {json_file}")
    if plots is not None:
        from .report.plots import plot_sweep, sweep_x

        x = plot_x or sweep_x(grid.names, [r.to_dict() for r in s.runs])
        if x is None:
            click.echo("no plot: no numeric parameter is swept (--plot-x NAME picks one)")
        else:
            name = x.replace(".", "-")
            workload = grid.base.workload
            click.echo(f"wrote {plot_sweep([r.to_dict() for r in s.runs], x, plots / f'sweep-{workload}-{name}.png')}")
    if s.failed:
        raise click.exceptions.Exit(1)


# -- sensitivity ------------------------------------------------------------------------------------------

@cli.command(cls=_MachineCommand, defaults=MACHINE_ARGS.split(), refuse={
    "--workload": "sensitivity runs compare's boot and hpet-bench",
    "--series": "sensitivity runs both series; --patch -NAME takes a switch out of 'after'"})
@click.option("--params", "params", metavar="LIST",
              help="Costs and boot parameters to vary, e.g. costs.bql_handoff_ns,param.work_us [every cost, "
                   "the acpi-tmr and hpet handler costs, and the boot's profile parameters].")
@click.option("--factors", default="0.5,2", show_default=True, metavar="LIST",
              help="Multiples of each cost's value to run at.")
@click.option("--executor", default="local", show_default=True, metavar="local|dask|dask://HOST:PORT", help=_EXECUTOR_HELP)
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes [one per core].")
@click.option("--json", "json_path", metavar="FILE", help="Write the table as a document (aemu.sensitivity/1) to FILE.")
@click.option("--plot", "plot_dir", metavar="DIR", help="Write the tornado plot into DIR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_machine_args
def sensitivity(params: str | None, factors: str, executor: str, jobs: int | None, json_path: str | None,
                plot_dir: str | None, quiet: bool, args: tuple[str, ...]) -> None:
    """How far the compare verdict moves when each cost or boot parameter is scaled, one at a time (0.5x and 2x).

    Runs compare's four runs (boot and hpet-bench, before and after, no ablation) as they are and
    with one cost, or one of the boot's profile parameters (in the boot's runs), at a time scaled
    by each factor, and prints a table of the boot's speed-up and the HPET read's median speed-up
    at each, most influential first, naming those the verdict depends on (a figure moves more
    than 10%) and those it does not. The machine is compare's, 240 vCPUs on 32 host CPUs (140
    runs, about two and a half minutes on 2 cores); ARGS change it (see below), e.g.
    -smp 32,sockets=4 --host-cpus 4 for a smaller one.
    """
    from .batch import Failure, open_executor
    from .sensitivity import (DEFAULT_PARAMETERS, assemble, distinct_runs, format_sensitivity, run_sensitivity,
                              sensitivity_configs)

    argv = [*MACHINE_ARGS.split(), *args]
    names = [n.strip() for n in params.split(",") if n.strip()] if params is not None else list(DEFAULT_PARAMETERS)
    try:
        fs = [float(f) for f in factors.split(",")]
    except ValueError:
        raise click.UsageError(f"--factors {factors!r}: give multiples such as 0.5,2") from None
    runs, values = sensitivity_configs(argv, parameters=names, factors=fs)  # every mistake now
    json_file = _out_file(json_path, "--json")
    plots = _out_dir(plot_dir)
    results: dict[Any, dict[str, Any] | Failure] = {}
    t0 = time.monotonic()
    total = distinct_runs(runs)
    with open_executor(executor, jobs=jobs) as opened, _progress(quiet, total, "runs") as bar:
        try:
            s = run_sensitivity(argv, parameters=names, factors=fs, executor=opened.executor, jobs=jobs,
                                slots=opened.slots, progress=_sweep_progress(bar, "sensitivity"), results=results)
        except KeyboardInterrupt:
            bar.close()
            click.echo(f"interrupted: {distinct_runs(runs, results)} of {total} runs finished")
            click.echo(format_sensitivity(assemble(" ".join(argv), results, values, fs, interrupted=True)))
            raise
    click.echo(format_sensitivity(s))
    click.echo(f"\n({total} runs; {opened.words}; wall time {time.monotonic() - t0:.1f} s)")
    if json_file is not None:
        _write_json(json_file, s.to_dict())
        click.echo(f"wrote {json_file}")
    if plots is not None:
        from .report.plots import plot_tornado

        click.echo(f"wrote {plot_tornado(s, plots / 'sensitivity-tornado.png')}")


# -- replay ---------------------------------------------------------------------------------------------

@cli.command(cls=_MachineCommand, defaults=[],
             default_notes={"-smp": "as many vCPUs as the trace recorded"}, refuse={
    "--workload": "replay's workload is the trace",
    "--param": "replay's workload is the trace and takes no --param (--time-scale scales its gaps)"})
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
    config = MachineConfig.parse(list(args))
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

@cli.command(cls=_MachineCommand, refuse={
    "--workload": "the memory tree does not depend on the workload",
    "--param": "the memory tree does not depend on the workload"})
@click.option("-f", "flat", is_flag=True, help="Print the flat views (info mtree -f).")
@_machine_args
def mtree(flat: bool, args: tuple[str, ...]) -> None:
    """Print info mtree (QEMU's monitor command) for the machine ARGS describe.

    ARGS are the machine options below, e.g. -M pc,hpet=off -accel kvm,kernel-irqchip=off.
    """
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
    """The smallest model: timer-port reads as plain asyncio tasks, under the BQL vs lockless."""
    from .demo import compare_timer_reads, format_comparison

    click.echo(format_comparison(compare_timer_reads(readers=readers, reads=reads, seed=seed)))


# -- entry point --------------------------------------------------------------------------------------

def _sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM is Ctrl-C: the same partial report, files and clean-up (QEMU too ends cleanly on it)."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 ok, 1 run failed, 2 usage error, 130 interrupted (Ctrl-C or SIGTERM)."""
    global _DEBUG
    _DEBUG = False
    sigterm = None
    if threading.current_thread() is threading.main_thread():
        sigterm = signal.signal(signal.SIGTERM, _sigterm)
    try:
        return _main(argv)
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


def _main(argv: list[str] | None) -> int:
    from .errors import AemuError, ConfigError
    from .replay import TraceError

    try:
        rc = cli.main(args=argv, prog_name="aemu", standalone_mode=False)
        if isinstance(rc, int) and rc:  # a command's click.exceptions.Exit(n), e.g. aemu check's 1
            return rc
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except (click.UsageError, ConfigError, TraceError) as e:
        msg = e.format_message() if isinstance(e, click.UsageError) else str(e)
        return _fail(msg, 2)
    except (click.Abort, KeyboardInterrupt):
        click.echo("aemu: interrupted", err=True)
        return 130
    except AemuError as e:  # a failed run: one line, the cause
        return _fail(str(e), 1)
    return 0


def _fail(message: str, code: int) -> int:
    """One line naming the problem (after the traceback with --debug); the exit code stays."""
    if _DEBUG:
        import traceback

        traceback.print_exc()
    click.echo(f"aemu: {message}", err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

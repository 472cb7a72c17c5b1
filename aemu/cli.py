"""The ``aemu`` command (click): ``compare`` (the seed's comparison), ``run``, ``demo``.

QEMU-style options (``-M``, ``-smp``, ``-accel``) and aemu's own (``--workload``, ``--series``,
``--patch``, ``--lockless``, ``--costs``, ``--seed``, ``--quantum``, ``--duration``,
``--param``, ``--lock-policy``) are passed through to :meth:`aemu.config.MachineConfig.parse`.
Exit codes: 0 ok, 1 the run failed, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__

F = TypeVar("F", bound=Callable[..., Any])

_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": False, "help_option_names": ["-h", "--help"]}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aemu")
def cli() -> None:
    """Emulate how a VMM's vCPUs, devices and the Big QEMU Lock interact, in virtual time."""


@cli.command(context_settings=_PASSTHROUGH)
@click.option("--no-ablation", is_flag=True, help="Skip the per-switch ablation runs.")
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Worker processes (default: one per core).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def compare(no_ablation: bool, jobs: int | None, args: tuple[str, ...]) -> None:
    """The seed's scenario before vs after the BQL-free series, plus an ablation.

    ARGS are QEMU-style and aemu options for the machine (default:
    -M q35,hpet=off -smp 240,sockets=4 -accel kvm,kernel-irqchip=split).
    """
    from .compare import DEFAULT_ARGS, compare as run_compare, format_comparison

    argv = list(args) if args else DEFAULT_ARGS.split()
    if args:
        argv = DEFAULT_ARGS.split() + argv  # options given override the seed's defaults
    click.echo(format_comparison(run_compare(argv, ablation=not no_ablation, jobs=jobs)))


@cli.command(context_settings=_PASSTHROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args: tuple[str, ...]) -> None:
    """Run one configuration and print a short report.

    ARGS are QEMU-style options (-M, -smp, -accel) and aemu options (--workload, --series,
    --patch, --lockless, --costs, --seed, --quantum, --duration, --param, --lock-policy).
    """
    from .config import MachineConfig
    from .machine import simulate

    r = simulate(MachineConfig.parse(list(args)))
    st = r.bql
    click.echo(f"{r.config.qemu_args()} --workload {r.workload} ({r.config.series})")
    click.echo(f"{r.metric.name}: {r.metric.value:,.1f} {r.metric.unit}"
               f"{'' if r.finished else ' (did not finish: cap hit)'}")
    click.echo(f"virtual time {r.virtual_ns / 1e6:,.3f} ms, wall {r.wall_s:.2f} s")
    click.echo(f"BQL: {st.acquisitions:,} acquisitions, {st.contentions:,} contentions, "
               f"wait p50 {st.wait_ns.p50:,} ns p99 {st.wait_ns.p99:,} ns; "
               f"vCPU time waiting for it {r.lock_wait_share():.1%}")
    for s in st.sites[:5]:
        click.echo(f"  {s.site:<28} {s.acquisitions:>10,} acq {s.contentions:>10,} cont "
                   f"wait total {s.wait_total_ns / 1e6:>10,.3f} ms")


def _demo_options(f: F) -> F:
    f = click.option("--readers", default=64, show_default=True, type=click.IntRange(1, 4096),
                     help="Concurrent reader tasks (vCPU stand-ins).")(f)
    f = click.option("--reads", default=200, show_default=True, type=click.IntRange(1, 10**7),
                     help="Timer reads per reader.")(f)
    f = click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")(f)
    return f


@cli.command()
@_demo_options
def demo(readers: int, reads: int, seed: int) -> None:
    """The foundation's demo: timer-port reads as plain tasks, BQL vs lockless_io."""
    from .demo import compare_timer_reads, format_comparison

    click.echo(format_comparison(compare_timer_reads(readers=readers, reads=reads, seed=seed)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 ok, 1 run failed, 2 usage error, 130 interrupted."""
    from .errors import AemuError, ConfigError

    try:
        cli.main(args=argv, prog_name="aemu", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        click.echo(f"aemu: {e.format_message()}", err=True)
        return 2
    except ConfigError as e:
        click.echo(f"aemu: {e}", err=True)
        return 2
    except (click.Abort, KeyboardInterrupt):
        click.echo("aemu: interrupted", err=True)
        return 130
    except AemuError as e:  # a failed run: one line, the cause
        click.echo(f"aemu: {e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

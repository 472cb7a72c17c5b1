"""The ``aemu`` command.

For now it offers the foundation's demo as ``aemu compare`` (the seed's full comparison arrives
with the machine model) and ``aemu demo``; both print a report computed by running the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aemu")
def cli() -> None:
    """Emulate how a VMM's vCPUs, devices and the Big QEMU Lock interact, in virtual time."""


F = TypeVar("F", bound=Callable[..., Any])


def _demo_options(f: F) -> F:
    f = click.option("--readers", default=64, show_default=True, type=click.IntRange(1, 4096),
                     help="Concurrent reader tasks (vCPU stand-ins).")(f)
    f = click.option("--reads", default=200, show_default=True, type=click.IntRange(1, 10**7),
                     help="Timer reads per reader.")(f)
    f = click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")(f)
    return f


def _run_demo(readers: int, reads: int, seed: int) -> None:
    from .demo import compare_timer_reads, format_comparison

    click.echo(format_comparison(compare_timer_reads(readers=readers, reads=reads, seed=seed)))


@cli.command()
@_demo_options
def compare(readers: int, reads: int, seed: int) -> None:
    """Before vs after: timer-port reads under the BQL vs lockless_io (foundation demo)."""
    _run_demo(readers, reads, seed)


@cli.command()
@_demo_options
def demo(readers: int, reads: int, seed: int) -> None:
    """The foundation's demo: the same as `compare` until the machine model lands."""
    _run_demo(readers, reads, seed)


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 ok, 1 run failed, 2 usage error, 130 interrupted."""
    try:
        cli.main(args=argv, prog_name="aemu", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        click.echo(f"aemu: {e.format_message()}", err=True)
        return 2
    except click.Abort:
        click.echo("aemu: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("aemu: interrupted", err=True)
        return 130
    except Exception as e:  # a failed run: one line, the cause
        from .errors import AemuError

        if isinstance(e, AemuError):
            click.echo(f"aemu: {e}", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

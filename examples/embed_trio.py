"""aemu inside a trio application: live BQL statistics from :func:`aemu.embed.live`.

Runs a workload before and after the BQL-free series. Each run goes to a worker thread on its
own virtual-time loop (``anyio.to_thread``); this trio loop iterates its snapshots as they come,
while a heartbeat task in the same nursery keeps beating -- its largest gap shows the loop was
never blocked. ``--stop-after`` shows cancellation: a trio cancel scope ends the 'before' run
early (the run stops with no lock held and its thread ends).

    python examples/embed_trio.py --smp 8 --workload hpet-bench
"""

from __future__ import annotations

import argparse
import time

import trio

from aemu.config import MachineConfig, parse_duration
from aemu.embed import Snapshot, live
from aemu.errors import ConfigError
from aemu.result import Result


class Heartbeat:
    """A task on the trio loop that beats every ``period_s`` and remembers its largest gap."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.beats = 0
        self.max_gap_s = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await trio.sleep(self.period_s)
            now = time.perf_counter()
            self.beats += 1
            self.max_gap_s = max(self.max_gap_s, now - last)
            last = now


def config_for(args: argparse.Namespace, series: str) -> MachineConfig:
    """The seed's machine at ``--smp``, HPET on for hpet-bench and off for boot (as in ``aemu compare``)."""
    hpet = "on" if args.workload == "hpet-bench" else "off"
    extra = f" --param reads={args.reads}" if args.workload == "hpet-bench" else ""
    return MachineConfig.parse(f"-M q35,hpet={hpet} -smp {args.smp} -accel kvm,kernel-irqchip=split "
                               f"--workload {args.workload} --series {series}{extra}")


def show(series: str, snap: Snapshot, heart: Heartbeat) -> None:
    """One line of the live dashboard."""
    bql = snap.bql
    print(f"  [{series:6}] virtual {snap.virtual_ns / 1e6:7.2f} ms  vCPUs {snap.vcpus_finished:>3}/{snap.vcpus_total}"
          f"  BQL acquisitions {bql.acquisitions:>9,}  contentions {bql.contentions:>8,}"
          f"  wait p99 {bql.wait_ns.p99 / 1e3:9.1f} us  | heartbeats {heart.beats}")


async def watch(args: argparse.Namespace, series: str, heart: Heartbeat) -> Result | None:
    """Run one series, printing its snapshots; None if ``--stop-after`` cancelled it."""
    with trio.move_on_after(args.stop_after if series == "before" else float("inf")) as scope:
        async with live(config_for(args, series), every_ns=args.every) as run:
            async for snap in run.snapshots():
                show(series, snap, heart)
            return await run.result()
    assert scope.cancelled_caught
    held = [lock.name for lock in run.machine.all_locks() if lock.locked()] if run.machine else []
    print(f"  [{series:6}] cancelled after {args.stop_after} s wall: worker done={run.done}, "
          f"locks held: {', '.join(held) or 'none'}")
    return None


async def main(args: argparse.Namespace) -> None:
    heart = Heartbeat(args.heartbeat)
    print(f"host loop: trio {trio.__version__}; {args.workload} at -smp {args.smp}, "
          f"a snapshot every {args.every / 1e6:g} ms of virtual time")
    results: dict[str, Result | None] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heart.run)
        for series in ("before", "after"):
            results[series] = await watch(args, series, heart)
        nursery.cancel_scope.cancel()
    for series, r in results.items():
        if r is None:
            print(f"{series}: cancelled")
            continue
        state = "finished" if r.finished else "capped"
        print(f"{series}: {r.metric.name} {r.metric.value:,.2f} {r.metric.unit} ({state}), "
              f"BQL contentions {r.bql.contentions:,}, virtual {r.virtual_ns / 1e6:.2f} ms in {r.wall_s:.2f} s wall")
    print(f"host loop stayed responsive: {heart.beats} heartbeats, largest gap {heart.max_gap_s * 1e3:.1f} ms "
          f"(period {args.heartbeat * 1e3:.0f} ms)")


def duration(text: str) -> int:
    """An argparse type: ``2ms`` -> 2000000 (ns)."""
    try:
        return parse_duration(text, "--every")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--smp", type=int, default=8, help="vCPUs (default 8)")
    p.add_argument("--workload", choices=("boot", "hpet-bench"), default="hpet-bench")
    p.add_argument("--reads", type=int, default=100, help="hpet-bench: reads per vCPU (default 100)")
    p.add_argument("--every", type=duration, default=duration("2ms"),
                   help="virtual time between snapshots (default 2ms)")
    p.add_argument("--heartbeat", type=float, default=0.01, help="heartbeat period, wall seconds (default 0.01)")
    p.add_argument("--stop-after", type=float, default=float("inf"), metavar="SECONDS",
                   help="cancel the 'before' run after this many wall seconds (default: never)")
    return p.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())

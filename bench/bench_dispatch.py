"""Dispatch cost: lockless plain-function reads, uncontended BQL reads, against a bare call.

A lockless read completes in ``read_nowait()`` (the vCPU's path, on an access resolved once);
a read that needs the BQL takes the awaited path through ``prepare_mmio_access``.

    python bench/bench_dispatch.py [--reads 300000]

The target for the lockless fast path is 1,000,000 reads per wall second on a 2-core machine;
a Python function call is the floor. Reported as reads per wall second and ratios in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import best_of, table  # noqa: E402

from aemu import clock  # noqa: E402
from aemu.memory import AddressSpace, MemoryRegion, MemoryRegionOps  # noqa: E402

ADDR = 0x608


def make_space(lockless: bool) -> AddressSpace:
    def acpi_pm_tmr_read(offset: int, size: int) -> int:
        return 0x123456

    io = MemoryRegion.container("io", 0x10000)
    pm = MemoryRegion.container("ich9-pm", 0x80)
    tmr = MemoryRegion.io("acpi-tmr", 4, MemoryRegionOps(read=acpi_pm_tmr_read, valid_max=4))
    if lockless:
        tmr.enable_lockless_io()
    pm.add_subregion(8, tmr)
    io.add_subregion(0x600, pm)
    return AddressSpace("I/O", io, width_bits=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=300_000)
    n = ap.parse_args().reads

    def bare_call() -> int:
        def acpi_pm_tmr_read(offset: int, size: int) -> int:
            return 0x123456

        f = acpi_pm_tmr_read
        for _ in range(n):
            f(8, 4)
        return n

    def resolved(lockless: bool) -> int:
        space = make_space(lockless)

        async def go() -> None:
            for _ in range(n):
                space.access(ADDR, 4).read_nowait()

        clock.run(go())
        return n

    def nowait(lockless: bool) -> int:
        space = make_space(lockless)

        async def go() -> None:
            rd = space.read_nowait
            for _ in range(n):
                rd(ADDR, 4)

        clock.run(go())
        return n

    def awaited(lockless: bool) -> int:
        space = make_space(lockless)

        async def go() -> None:
            rd = space.read
            for _ in range(n):
                await rd(ADDR, 4)

        clock.run(go())
        return n

    rows = [
        ("bare Python call of the handler", *best_of(bare_call)),
        ("lockless, space.access().read_nowait()", *best_of(lambda: resolved(True))),
        ("lockless, space.read_nowait()", *best_of(lambda: nowait(True))),
        ("lockless, await space.read()", *best_of(lambda: awaited(True))),
        ("BQL uncontended, await space.read()", *best_of(lambda: awaited(False))),
    ]
    print(f"dispatch: {n:,} 4-byte reads of acpi-tmr (I/O 0x608), plain-function handler (best of 3)")
    print(table(rows, baseline="lockless, space.access().read_nowait()"))


if __name__ == "__main__":
    main()

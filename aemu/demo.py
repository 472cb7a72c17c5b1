"""The foundation's demo: timer-port reads from many tasks, under the BQL vs ``lockless_io``.

N reader tasks stand in for vCPUs: each computes for a seeded uniform 1-10 µs of virtual time,
then reads the ACPI PM timer port (I/O 0x608, inside ``ich9-pm`` at 0x600) through the I/O
AddressSpace, paying a PIO exit round trip. Run once with the region as QEMU had it before the
BQL-free series (every dispatch takes the BQL) and once with ``enable_lockless_io()`` (patches 1
and 2). A main-loop task takes the BQL periodically for its timers in both runs.

Every figure comes from running the model; the costs are the calibration notes' assumptions
(docs/CALIBRATION.md), not fitted to a result. The machine model (vCPU exit loop,
devices, cost model) supersedes this demo.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from . import clock
from .memory import AddressSpace, MemoryRegion, MemoryRegionOps, MemTxResult
from .sync import Lock, LockStatistics

PM_FREQ_HZ = 3_579_545
ACPI_PM_BASE_Q35 = 0x600

#: Assumed costs (ns of virtual time), from docs/CALIBRATION.md's "reasonable defaults".
PIO_EXIT_NS = 2_000  # PIO exit to userspace and back (assumption, ~3x a kernel exit)
PM_TIMER_HANDLER_NS = 250  # acpi_pm_tmr_read (assumption)
BQL_HANDOFF_NS = 5_000  # contended BQL wake-up latency (assumption, bounded by ~9 µs forced hand-off)
MAIN_LOOP_PERIOD_NS = 1_000_000  # the iothread runs device timers every ms (assumption)
MAIN_LOOP_WORK_NS = 20_000  # ... for 20 µs under the BQL (assumption)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """One run of the demo: read latency percentiles and the BQL's statistics."""

    label: str
    readers: int
    reads: int
    elapsed_ns: int
    read_p50_ns: int
    read_p99_ns: int
    read_max_ns: int
    bad_reads: int
    bql: LockStatistics


def _pm_timer_region(lockless: bool) -> tuple[MemoryRegion, MemoryRegion]:
    """``ich9-pm`` with ``acpi-tmr`` at +8, modelled on QEMU's ``acpi_pm_tmr_init``."""

    async def acpi_pm_tmr_read(offset: int, size: int) -> int:
        await clock.sleep_ns(PM_TIMER_HANDLER_NS)
        return (clock.now_ns() * PM_FREQ_HZ // 1_000_000_000) & 0xFFFFFF

    tmr = MemoryRegion.io("acpi-tmr", 4, MemoryRegionOps(read=acpi_pm_tmr_read, valid_min=1, valid_max=4))
    if lockless:
        tmr.enable_lockless_io()
    pm = MemoryRegion.container("ich9-pm", 0x80)
    pm.add_subregion(8, tmr)
    return pm, tmr


async def _run(label: str, readers: int, reads: int, seed: int, lockless: bool) -> DemoResult:
    bql = Lock("BQL", handoff_ns=BQL_HANDOFF_NS, bql=True)
    io = MemoryRegion.container("io", 0x10000)
    pm, _ = _pm_timer_region(lockless)
    io.add_subregion(ACPI_PM_BASE_Q35, pm)
    space = AddressSpace("I/O", io, bql=bql, width_bits=16)
    hist = HdrHistogram(1, 3_600_000_000_000, 3)
    bad = 0
    done = asyncio.Event()

    async def vcpu(index: int) -> None:
        nonlocal bad
        rng = random.Random(seed * 1_000_003 + index)
        for _ in range(reads):
            await clock.sleep_ns(rng.randint(1_000, 10_000))  # guest compute
            t0 = clock.now_ns()
            await clock.sleep_ns(PIO_EXIT_NS)  # exit to userspace and back
            _, res = await space.read(ACPI_PM_BASE_Q35 + 8, 4)
            bad += res != MemTxResult.OK
            hist.record_value(max(1, clock.now_ns() - t0))

    async def main_loop() -> None:
        while not done.is_set():
            await clock.sleep_ns(MAIN_LOOP_PERIOD_NS)
            async with bql.held("main-loop timers"):
                await clock.sleep_ns(MAIN_LOOP_WORK_NS)

    ml = asyncio.create_task(main_loop(), name="main-loop")
    await asyncio.gather(*(asyncio.create_task(vcpu(i), name=f"vcpu{i}") for i in range(readers)))
    elapsed = clock.now_ns()
    done.set()
    ml.cancel()
    return DemoResult(label, readers, reads, elapsed, hist.get_value_at_percentile(50),
                      hist.get_value_at_percentile(99), hist.get_max_value(), bad, bql.statistics())


def compare_timer_reads(*, readers: int = 64, reads: int = 200, seed: int = 1) -> tuple[DemoResult, DemoResult]:
    """Run the demo before (BQL) and after (lockless_io) on the same seeded workload."""
    before = clock.run(_run("before (BQL)", readers, reads, seed, lockless=False))
    after = clock.run(_run("after (lockless_io)", readers, reads, seed, lockless=True))
    return before, after


def format_comparison(results: tuple[DemoResult, DemoResult]) -> str:
    """A plain-text side-by-side table of the two runs."""
    before, after = results

    def us(ns: float) -> str:
        return f"{ns / 1000:,.1f} µs"

    rows: list[tuple[str, Callable[[DemoResult], str]]] = [
        ("virtual time to finish", lambda r: us(r.elapsed_ns)),
        ("read latency p50", lambda r: us(r.read_p50_ns)),
        ("read latency p99", lambda r: us(r.read_p99_ns)),
        ("read latency max", lambda r: us(r.read_max_ns)),
        ("BQL acquisitions", lambda r: f"{r.bql.acquisitions:,}"),
        ("BQL contentions", lambda r: f"{r.bql.contentions:,}"),
        ("BQL wait p99", lambda r: us(r.bql.wait_ns.p99)),
        ("failed reads", lambda r: f"{r.bad_reads:,}"),
    ]
    w0 = max(len(n) for n, _ in rows)
    w = max(len(before.label), len(after.label), 14)
    out = [
        f"ACPI PM timer reads: {before.readers} reader tasks x {before.reads} reads, virtual time "
        f"(foundation demo; costs are assumptions)",
        "",
        f"{'':<{w0}}  {before.label:>{w}}  {after.label:>{w}}",
    ]
    out += [f"{name:<{w0}}  {f(before):>{w}}  {f(after):>{w}}" for name, f in rows]
    if before.read_p50_ns:
        cut = 100 * (1 - after.read_p50_ns / before.read_p50_ns)
        out += ["", f"median read latency {cut:.0f}% lower with lockless_io"]
    return "\n".join(out)

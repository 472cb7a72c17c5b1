"""The ACPI PM timer: value from the virtual clock, 24-bit wrap, lockless switch, overflow SCI."""

from __future__ import annotations

from aemu import clock
from aemu.devices.acpi_pm import ACPIPMTimer, pm_timer_ticks
from aemu.devices.base import DeviceHost
from aemu.irq import IRQLine
from aemu.memory import AddressSpace, MemoryRegion


def make(patches: tuple[str, ...] = ()) -> tuple[DeviceHost, ACPIPMTimer, AddressSpace]:
    host = DeviceHost(patches=patches)
    pm = ACPIPMTimer(host)
    io = MemoryRegion.container("io", 0x10000)
    for _, port, mr in pm.mappings:
        io.add_subregion(port, mr)
    return host, pm, AddressSpace("I/O", io, bql=host.bql, width_bits=16)


def test_value_follows_the_virtual_clock_and_wraps_at_24_bits() -> None:
    host, pm, io = make()

    async def main() -> list[int]:
        out = []
        for t in (1_000_000, 4_686_000_000):  # 1 ms; then past 2^24 ticks (~4.687 s)
            await clock.sleep_ns(t - clock.now_ns())
            value, _ = await io.read(0x608, 4)
            out.append(value)
        return out

    v1, v2 = clock.run(main())
    assert v1 == pm_timer_ticks(1_000_000 + 250) & 0xFFFFFF == 3580  # read after its 250 ns handler cost
    assert v2 == pm_timer_ticks(4_686_000_250) & 0xFFFFFF
    assert pm_timer_ticks(10**9) == 3_579_545


def test_bql_before_and_lockless_after_pmtimer_lockless() -> None:
    for patches, bql_reads in (((), 1), (("lockless-io", "pmtimer-lockless"), 0)):
        host, pm, io = make(patches)

        async def main() -> None:
            await io.read(0x608, 4)

        clock.run(main())
        sites = {s.site: s.acquisitions for s in host.bql.statistics().sites}
        assert sites.get("acpi-tmr read", 0) == bql_reads
        assert pm.tmr.lockless_io == bool(patches)


def test_overflow_timer_raises_sci_when_enabled() -> None:
    host, pm, io = make()
    events: list[tuple[int, int]] = []
    host.connect_gsi(9, IRQLine(lambda n, level: events.append((clock.now_ns(), level)), 9))

    async def main() -> None:
        host.main_loop.start()
        async with host.bql.held("test"):
            await io.write(0x602, 1, 2)  # PM1_EN.TMR_EN
        await clock.sleep_ns(3_000_000_000)
        await host.main_loop.stop()

    clock.run(main())
    flip = -(-(1 << 23) * 10**9 // 3_579_545)  # first ns at which bit 23 flips
    assert pm.overflows == 1 and events[-1][1] == 1
    assert flip <= events[-1][0] <= flip + host.costs.timer_cb_ns + 1_000

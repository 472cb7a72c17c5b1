"""Tests for aemu.devices.hpet: registers, the counter, timers and interrupts, locking per switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from aemu import clock
from aemu.clock import QuantumKeeper, sleep_ns
from aemu.costs import CostModel
from aemu.devices.base import DeviceHost
from aemu.devices.hpet import HPET_BASE, HPETState, HPETStatistics
from aemu.errors import ConfigError
from aemu.irq import IRQLine
from aemu.memory import AddressSpace, MemoryRegion, MemTxResult
from aemu.sync import bql_locked

ID, CFG, ISR, COUNTER = 0x000, 0x010, 0x020, 0x0F0
ENABLE, LEGACY = 0x1, 0x2
TN_LEVEL, TN_ENABLE, TN_PERIODIC, TN_SETVAL, TN_32BIT = 0x2, 0x4, 0x8, 0x40, 0x100
U64 = (1 << 64) - 1

BEFORE: tuple[str, ...] = ()
# QEMU 10.2 as merged: each step of the series with the follow-up fix (IRQ updates under the BQL)
HPET_LOCK = ("lockless-io", "hpet-lock", "hpet-irq-bql")
COUNTER_LOCKLESS = ("lockless-io", "hpet-lock", "hpet-counter-lockless", "hpet-irq-bql")
ALL_SWITCH_SETS = pytest.mark.parametrize("patches", [BEFORE, HPET_LOCK, COUNTER_LOCKLESS],
                                          ids=["before", "hpet-lock", "counter-lockless"])


def tn_cfg(n: int) -> int:
    return 0x100 + 0x20 * n


def tn_cmp(n: int) -> int:
    return 0x108 + 0x20 * n


def route(gsi: int) -> int:
    return gsi << 9


@dataclass
class Rig:
    """An HPET on its own: host, device, the memory address space, and a log of IOAPIC pin changes."""

    host: DeviceHost
    hpet: HPETState
    space: AddressSpace
    log: list[tuple[int, int, int]] = field(default_factory=list)

    async def read(self, off: int, size: int = 8) -> int:
        value, result = await self.space.read(HPET_BASE + off, size)
        assert result == MemTxResult.OK
        return value

    async def write(self, off: int, value: int, size: int = 8) -> None:
        assert await self.space.write(HPET_BASE + off, value, size) == MemTxResult.OK

    def raises(self) -> list[tuple[int, int]]:
        """(time, IOAPIC pin) of every rising edge."""
        return [(t, n) for t, n, level in self.log if level]

    def bql_sites(self) -> dict[str, int]:
        return {s.site: s.acquisitions for s in self.host.bql.statistics().sites}

    def mutex_sites(self) -> dict[str, int]:
        return {s.site: s.acquisitions for s in self.hpet.lock.statistics().sites}


def make_rig(patches: Iterable[str] = BEFORE, costs: CostModel | None = None, **kw: Any) -> Rig:
    host = DeviceHost(patches=patches, costs=costs)
    hpet = HPETState(host, **kw)
    root = MemoryRegion.container("system", 1 << 32)
    for space, addr, mr in hpet.mappings:
        assert space == "memory"
        root.add_subregion(addr, mr)
    rig = Rig(host, hpet, AddressSpace("memory", root, bql=host.bql))

    def sink(n: int, level: int) -> None:
        # the machine's gsi_handler: ISA IRQ 0 arrives on IOAPIC pin 2 (IRQ0 -> GSI 2 override)
        rig.log.append((clock.now_ns(), 2 if n == 0 else n, level))

    for n in range(24):
        host.connect_gsi(n, IRQLine(sink, n))
    return rig


@asynccontextmanager
async def main_loop(host: DeviceHost) -> AsyncIterator[None]:
    host.main_loop.start()
    try:
        yield
    finally:
        await host.main_loop.stop()


@asynccontextmanager
async def keeper(quantum_ns: int = 1_000_000) -> AsyncIterator[QuantumKeeper]:
    """Let the current task run ahead of global time, like a vCPU under temporal decoupling."""
    k = QuantumKeeper(quantum_ns)
    k.attach()
    try:
        yield k
    finally:
        await k.sync()
        k.detach()


# -- construction and registers ---------------------------------------------------------------------

class TestConstruction:
    @pytest.mark.parametrize("n", [2, 33, 0, -1, True, 3.0, "3"])
    def test_num_timers_outside_3_to_32_is_a_config_error(self, n: Any) -> None:
        with pytest.raises(ConfigError, match="timers"):
            HPETState(DeviceHost(), num_timers=n)

    def test_bad_intcap_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="intcap"):
            HPETState(DeviceHost(), intcap=1 << 32)

    def test_region_mapping_timers_and_lock(self) -> None:
        rig = make_rig()
        hpet = rig.hpet
        assert hpet.type_name == "hpet"
        assert hpet.mappings == [("memory", 0xFED00000, hpet.iomem)]
        assert hpet.iomem.name == "hpet" and hpet.iomem.size == 0x400
        ops = hpet.iomem.ops
        assert ops is not None
        assert (ops.valid_min, ops.valid_max, ops.impl_min, ops.impl_max) == (4, 8, 4, 8)
        assert [t.qemu_timer.name for t in hpet.timers] == ["hpet-timer0", "hpet-timer1", "hpet-timer2"]
        assert rig.host.locks["hpet"] is hpet.lock

    def test_two_hpets_need_two_names(self) -> None:
        host = DeviceHost()
        HPETState(host)
        with pytest.raises(ConfigError, match="already exists"):
            HPETState(host)
        assert HPETState(host, name="hpet1").lock.name == "hpet1"

    def test_repr(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        assert repr(rig.hpet) == ("<HPETState 'hpet' at 0xfed00000 disabled, 3 timers, isr=0x0, "
                                  "locking=hpet-counter-lockless>")
        assert repr(rig.hpet.timers[0]).startswith("<HPETTimer 0 disabled one-shot 64-bit cmp=0xffffffffffffffff")


class TestRegisters:
    async def test_capabilities_and_period(self) -> None:
        rig = make_rig()
        assert await rig.read(ID) == 0x00989680_8086A201
        assert await rig.read(ID, 4) == 0x8086A201
        assert await rig.read(0x004, 4) == 10_000_000  # fs per tick: 10 ns
        rig32 = make_rig(num_timers=32)
        assert await rig32.read(ID, 4) == 0x8086BF01

    async def test_timer_reset_values(self) -> None:
        rig = make_rig(msi=True)
        # periodic- and 64-bit-capable, FSB-capable (msi=on); q35 route capability 2, 8, 16..23
        assert await rig.read(tn_cfg(0)) == 0x00FF0104_00008030
        assert await rig.read(tn_cfg(0) + 4, 4) == 0x00FF0104
        assert await rig.read(tn_cmp(2)) == U64

    async def test_read_only_and_reserved_bits(self) -> None:
        rig = make_rig()
        await rig.write(ID, 0)
        assert await rig.read(ID, 4) == 0x8086A201
        await rig.write(CFG, 0xFFFF_FFFC)  # only ENABLE and LEGACY are writable
        assert await rig.read(CFG) == 0
        await rig.write(tn_cfg(1), U64)  # capabilities and reserved bits keep their values
        assert await rig.read(tn_cfg(1)) == 0x00FF0104_00007F7E
        assert await rig.read(0x0E0, 4) == 0  # unassigned offsets read 0
        assert await rig.read(tn_cfg(3)) == 0  # no timer 3

    async def test_bad_access_sizes_are_rejected(self) -> None:
        rig = make_rig()
        for size in (1, 2):
            value, result = await rig.space.read(HPET_BASE + ID, size)
            assert result == MemTxResult.ACCESS_ERROR
        assert rig.hpet.reads == 0


# -- the main counter -----------------------------------------------------------------------------

class TestCounter:
    @ALL_SWITCH_SETS
    async def test_counts_one_tick_per_10_ns_when_enabled(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        cost = rig.host.costs.handler("hpet")
        await rig.write(CFG, ENABLE)
        t_en = clock.now_ns()
        assert t_en == cost  # the write applies after its handler cost
        await sleep_ns(12_345)
        value = await rig.read(COUNTER)
        assert clock.now_ns() == t_en + 12_345 + cost
        assert value == (12_345 + cost) // 10 == 1264

    @ALL_SWITCH_SETS
    async def test_frozen_when_disabled_and_writable_only_then(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        await sleep_ns(50_000)
        assert await rig.read(COUNTER) == 0  # never enabled: the stored value
        await rig.write(COUNTER, 0x1_2345_6789)
        await sleep_ns(50_000)
        assert await rig.read(COUNTER) == 0x1_2345_6789
        assert await rig.read(COUNTER, 4) == 0x2345_6789
        assert await rig.read(COUNTER + 4, 4) == 0x1
        await rig.write(CFG, ENABLE)
        t_en = clock.now_ns()
        await sleep_ns(1_000)
        assert await rig.read(COUNTER) == 0x1_2345_6789 + (clock.now_ns() - t_en) // 10
        await rig.write(COUNTER, 5)  # ignored while the counter runs
        assert await rig.read(COUNTER) == 0x1_2345_6789 + (clock.now_ns() - t_en) // 10
        await rig.write(CFG, 0)
        frozen = 0x1_2345_6789 + (clock.now_ns() - t_en) // 10
        await sleep_ns(1_000_000)
        assert await rig.read(COUNTER) == frozen
        await rig.write(CFG, ENABLE)  # restarts where it stopped
        t_en2 = clock.now_ns()
        await sleep_ns(100)
        assert await rig.read(COUNTER) == frozen + (clock.now_ns() - t_en2) // 10


# -- timers and interrupts --------------------------------------------------------------------------

class TestTimers:
    @ALL_SWITCH_SETS
    async def test_one_shot_legacy_route_timer0_to_gsi2(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(tn_cfg(0), TN_ENABLE)
            await rig.write(tn_cmp(0), 1_000)
            await rig.write(CFG, ENABLE | LEGACY)
            t_en = clock.now_ns()
            await sleep_ns(100_000)
        assert rig.raises() == [(t_en + 1_000 * 10 + cb, 2)]
        assert [e for e in rig.log if e[0] == t_en][:2] == [(t_en, 2, 0), (t_en, 8, 0)]  # entering legacy mode
        assert rig.host.gsi(0).raises == 1 and rig.host.gsi(2).raises == 0  # driven as ISA IRQ 0
        assert rig.hpet.pit_enabled is False
        assert rig.hpet.timers[0].fires == 1

    async def test_one_shot_legacy_route_timer1_to_gsi8(self) -> None:
        rig = make_rig(HPET_LOCK)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(tn_cfg(1), TN_ENABLE | route(20))  # the route is overridden in legacy mode
            await rig.write(tn_cmp(1), 300)
            await rig.write(CFG, ENABLE | LEGACY)
            t_en = clock.now_ns()
            await sleep_ns(100_000)
        assert rig.raises() == [(t_en + 3_000 + cb, 8)]

    @ALL_SWITCH_SETS
    async def test_one_shot_ioapic_route(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(tn_cfg(2), TN_ENABLE | route(20))
            await rig.write(tn_cmp(2), 500)
            await rig.write(CFG, ENABLE)
            t_en = clock.now_ns()
            await sleep_ns(100_000)
        assert rig.raises() == [(t_en + 5_000 + cb, 20)]
        # edge-triggered: a pulse, and ISR stays clear
        assert [e for e in rig.log if e[1] == 20] == [(t_en + 5_000 + cb, 20, 1), (t_en + 5_000 + cb, 20, 0)]
        assert rig.hpet.isr == 0

    @ALL_SWITCH_SETS
    async def test_periodic_fires_every_period(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(tn_cfg(0), TN_ENABLE | TN_PERIODIC | TN_SETVAL)
            await rig.write(tn_cmp(0), 1_000)  # SETVAL: comparator and period both 1000 ticks
            await rig.write(CFG, ENABLE | LEGACY)
            t_en = clock.now_ns()
            await sleep_ns(55_000)
            assert rig.raises() == [(t_en + k * 10_000 + cb, 2) for k in range(1, 6)]
            assert await rig.read(tn_cmp(0)) == 6_000  # the comparator advanced by the period
            # Linux's reprogramming: a plain comparator write changes only the period
            await rig.write(tn_cmp(0), 500)
            assert rig.hpet.timers[0].period == 500
        stats = rig.hpet.statistics()
        assert stats.irq_raises == 5

    async def test_32bit_one_shot_interrupts_at_wrap_then_at_match(self) -> None:
        rig = make_rig(HPET_LOCK)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(COUNTER, 0xFFFF_FF00)
            await rig.write(tn_cfg(0), TN_ENABLE | TN_32BIT | route(16))
            assert await rig.read(tn_cmp(0)) == 0xFFFF_FFFF  # 32-bit mode truncates the comparator
            await rig.write(tn_cmp(0), 0x100, 4)
            await rig.write(tn_cmp(0) + 4, 0xDEAD, 4)  # high dword of a 32-bit comparator: ignored
            assert await rig.read(tn_cmp(0)) == 0x100
            await rig.write(CFG, ENABLE)
            t_en = clock.now_ns()
            await sleep_ns(10_000)
            low = await rig.read(COUNTER, 4)
            assert low == (0xFFFF_FF00 + (clock.now_ns() - t_en) // 10) & 0xFFFF_FFFF
            assert low < 0x1000  # the low dword wrapped
        assert rig.raises() == [(t_en + 0x100 * 10 + cb, 16), (t_en + 0x200 * 10 + cb, 16)]

    async def test_32bit_periodic_wraps_its_comparator(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(COUNTER, 0xFFFF_FE00)
            await rig.write(tn_cfg(2), TN_ENABLE | TN_PERIODIC | TN_SETVAL | TN_32BIT | route(17))
            await rig.write(tn_cmp(2), 0xFFFF_FF00, 4)  # first match, then every 0x100 ticks
            await rig.write(tn_cmp(2), 0x100, 4)
            await rig.write(CFG, ENABLE)
            t_en = clock.now_ns()
            await sleep_ns(0x300 * 10 + cb + 1)
        assert rig.raises() == [(t_en + k * 0x100 * 10 + cb, 17) for k in (1, 2, 3)]
        assert rig.hpet.timers[2].cmp == 0x200  # 0xffffff00 + 3 periods, truncated to 32 bits

    @ALL_SWITCH_SETS
    async def test_level_triggered_sets_isr_until_written_1_to_clear(self, patches: tuple[str, ...]) -> None:
        # Under hpet-lock the ISR write runs under the device mutex only; it passes only if the
        # lowering of the line takes the BQL (IRQLine raises RuntimeError otherwise).
        rig = make_rig(patches)
        cb = rig.host.costs.timer_cb_ns
        async with main_loop(rig.host):
            await rig.write(tn_cfg(2), TN_LEVEL | TN_ENABLE | route(20))
            await rig.write(tn_cmp(2), 500)
            await rig.write(CFG, ENABLE)
            t_en = clock.now_ns()
            await sleep_ns(100_000)
            assert await rig.read(ISR) == 0b100
            assert rig.host.gsi(20).level == 1  # still asserted
            await rig.write(ISR, 0b011)  # other bits: nothing to clear
            assert await rig.read(ISR) == 0b100
            await rig.write(ISR, 0b100)
            t_clear = clock.now_ns()
            assert await rig.read(ISR) == 0
        assert [e for e in rig.log if e[1] == 20] == [(t_en + 5_000 + cb, 20, 1), (t_clear, 20, 0)]
        if "hpet-lock" in patches:
            assert rig.bql_sites().get("hpet irq") == 1
            assert "hpet write" not in rig.bql_sites()
        else:
            assert "hpet irq" not in rig.bql_sites()  # the dispatch already holds the BQL

    async def test_leaving_level_mode_lowers_the_line_under_the_bql(self) -> None:
        rig = make_rig(HPET_LOCK)
        async with main_loop(rig.host):
            await rig.write(tn_cfg(2), TN_LEVEL | TN_ENABLE | route(21))
            await rig.write(tn_cmp(2), 10)
            await rig.write(CFG, ENABLE)
            await sleep_ns(10_000)
            assert rig.host.gsi(21).level == 1
            await rig.write(tn_cfg(2), TN_ENABLE | route(21))
        assert rig.host.gsi(21).level == 0
        assert rig.hpet.isr == 0

    async def test_disabling_the_hpet_stops_its_timers(self) -> None:
        rig = make_rig(HPET_LOCK)
        async with main_loop(rig.host):
            await rig.write(tn_cfg(0), TN_ENABLE | TN_PERIODIC | TN_SETVAL)
            await rig.write(tn_cmp(0), 1_000)
            await rig.write(CFG, ENABLE | LEGACY)
            await sleep_ns(25_000)
            await rig.write(CFG, LEGACY)
            assert not any(t.qemu_timer.pending for t in rig.hpet.timers)
            await sleep_ns(100_000)
        assert len(rig.raises()) == 2

    async def test_legacy_mode_silences_the_pit(self) -> None:
        rig = make_rig(HPET_LOCK)
        calls: list[tuple[bool, bool]] = []
        rig.hpet.pit_irq_control = lambda enabled: calls.append((enabled, bql_locked()))
        await rig.write(CFG, LEGACY)
        await rig.write(CFG, LEGACY)  # no transition, no call
        await rig.write(CFG, 0)
        assert calls == [(False, True), (True, True)]  # pit_irq_control, under the BQL
        assert rig.hpet.pit_enabled is True

    async def test_unconnected_route_drops_the_interrupt(self) -> None:
        rig = make_rig()
        async with main_loop(rig.host):
            await rig.write(tn_cfg(0), TN_ENABLE | route(30))  # beyond the 24 IOAPIC pins
            await rig.write(tn_cmp(0), 10)
            await rig.write(CFG, ENABLE)
            await sleep_ns(10_000)
        assert rig.raises() == []
        assert rig.hpet.statistics().dropped_irqs == 1

    async def test_fsb_delivery_uses_the_machines_hook(self) -> None:
        rig = make_rig(HPET_LOCK, msi=True)
        sent: list[tuple[int, int]] = []
        rig.hpet.fsb_write = lambda addr, value: sent.append((addr, value))
        async with main_loop(rig.host):
            await rig.write(tn_cfg(0) + 0x10, 0xFEE0_0000_0000_0041)  # FSB route: address, data
            await rig.write(tn_cfg(0), TN_ENABLE | 0x4000)
            await rig.write(tn_cmp(0), 10)
            await rig.write(CFG, ENABLE)
            await sleep_ns(10_000)
        assert sent == [(0xFEE0_0000, 0x41)]
        assert rig.raises() == []


# -- locking per switch -----------------------------------------------------------------------------

class TestLocking:
    async def test_before_every_access_takes_the_bql(self) -> None:
        rig = make_rig(BEFORE)
        assert rig.hpet.locking == "bql"
        assert not rig.hpet.iomem.lockless_io
        await rig.read(ID)
        await rig.read(COUNTER)
        await rig.read(COUNTER, 4)
        await rig.write(ISR, 0)
        assert rig.bql_sites() == {"hpet read": 3, "hpet write": 1}
        assert rig.hpet.lock.statistics().acquisitions == 0

    @pytest.mark.parametrize("patches", [HPET_LOCK, COUNTER_LOCKLESS], ids=["hpet-lock", "counter-lockless"])
    async def test_hpet_lock_takes_the_mutex_not_the_bql(self, patches: tuple[str, ...]) -> None:
        rig = make_rig(patches)
        assert rig.hpet.iomem.lockless_io and rig.hpet.iomem.disable_reentrancy_guard
        await rig.read(ID)
        await rig.read(tn_cfg(0) + 4, 4)
        await rig.write(ISR, 0)
        await rig.write(CFG, 0)
        assert rig.mutex_sites() == {"hpet read": 2, "hpet write": 2}
        assert rig.host.bql.statistics().acquisitions == 0

    async def test_hpet_lock_alone_counter_reads_take_the_mutex(self) -> None:
        rig = make_rig(HPET_LOCK)
        await rig.read(COUNTER)
        await rig.read(COUNTER + 4, 4)
        assert rig.mutex_sites() == {"hpet read": 2}
        assert rig.hpet.state_version.statistics().reads == 0

    async def test_counter_lockless_read_takes_no_lock_and_never_yields(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        cost = rig.host.costs.handler("hpet")
        await rig.write(CFG, ENABLE)
        t_en = clock.now_ns()
        async with keeper() as k:
            coro = rig.space.read(HPET_BASE + COUNTER, 8)
            with pytest.raises(StopIteration) as done:
                coro.send(None)  # completes without suspending once
            value, result = done.value.value
            assert result == MemTxResult.OK
            assert k.offset_ns == cost  # the handler's cost ran ahead of global time
            assert clock.now_ns() == t_en
            assert value == cost // 10  # computed from the vCPU's own view of time
            for off, size in ((COUNTER + 4, 4), (COUNTER, 4)):
                coro = rig.space.read(HPET_BASE + off, size)
                with pytest.raises(StopIteration):
                    coro.send(None)
        assert rig.hpet.lock.statistics().acquisitions == 1  # the CONFIG write only
        assert rig.host.bql.statistics().acquisitions == 0
        assert rig.hpet.counter_reads == 3
        assert rig.hpet.state_version.statistics().reads == 3

    @pytest.mark.parametrize("patches, yields", [(HPET_LOCK, True), (COUNTER_LOCKLESS, False)],
                             ids=["hpet-lock", "counter-lockless"])
    async def test_ticker_sees_loop_turns_only_when_reads_lock(self, patches: tuple[str, ...],
                                                                yields: bool) -> None:
        rig = make_rig(patches)
        await rig.write(CFG, ENABLE)
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await sleep_ns(1)

        task = asyncio.get_running_loop().create_task(ticker())
        await sleep_ns(0)
        before = turns
        async with keeper():
            values = [await rig.read(COUNTER) for _ in range(100)]
            after = turns  # before the keeper's final sync lets the loop turn
        task.cancel()
        assert values == sorted(values)
        assert (after > before) is yields

    async def test_counter_lockless_other_registers_keep_the_mutex(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        assert rig.hpet.locking == "hpet-counter-lockless"
        await rig.read(ISR)
        await rig.read(tn_cmp(1))
        await rig.read(COUNTER)
        assert rig.mutex_sites() == {"hpet read": 2}
        assert rig.host.bql.statistics().acquisitions == 0

    async def test_irq_update_on_the_write_path_takes_mutex_then_bql(self) -> None:
        # A CONFIG write entering legacy mode lowers GSI 2 and 8: under hpet-lock it waits for
        # the BQL while holding the device mutex (QEMU's order) inside its state_version write
        # section; a lockless counter read meanwhile retries and waits for the write to end.
        rig = make_rig(COUNTER_LOCKLESS)
        hpet, bql = rig.hpet, rig.host.bql
        loop = asyncio.get_running_loop()

        async def holder() -> None:
            async with bql.held("someone else"):
                await sleep_ns(5_000)

        async def writer() -> None:
            await rig.write(CFG, ENABLE | LEGACY)

        h = loop.create_task(holder(), name="holder")
        await sleep_ns(0)
        w = loop.create_task(writer(), name="writer")
        await sleep_ns(1_000)
        assert hpet.lock.owner is w and bql.owner is h
        assert hpet.state_version.sequence & 1  # the writer is inside its write section
        value = await rig.read(COUNTER)
        assert value == (clock.now_ns() - rig.host.costs.handler("hpet")) // 10
        await asyncio.gather(h, w)
        # one failed section on arrival, one more when it began waiting for the write to end
        assert hpet.seqlock_retries == 2
        assert rig.bql_sites() == {"someone else": 1, "hpet irq": 1}
        assert [(n, level) for _, n, level in rig.log] == [(2, 0), (8, 0)]

    def test_switches_take_effect_at_apply_patches(self) -> None:
        async def main() -> None:
            rig = make_rig(HPET_LOCK)
            mr = rig.hpet.iomem
            assert mr.lockless_io and mr.disable_reentrancy_guard
            await rig.read(ID)
            rig.host.set_patch("hpet-lock", False)
            # the switch alone changes nothing: accesses keep the locking chosen last
            await rig.read(ID)
            assert rig.hpet.locking == "hpet-lock" and mr.lockless_io
            assert rig.mutex_sites() == {"hpet read": 2}
            rig.hpet.apply_patches()
            assert rig.hpet.locking == "bql"
            assert not mr.lockless_io and not mr.disable_reentrancy_guard
            await rig.read(ID)
            assert rig.bql_sites() == {"hpet read": 1}  # taken by dispatch (prepare_mmio_access)
            rig.host.set_patch("hpet-lock", True)
            rig.hpet.apply_patches()
            assert rig.hpet.locking == "hpet-lock" and mr.lockless_io
            await rig.read(ID)
            assert rig.mutex_sites() == {"hpet read": 3}
            assert rig.host.bql.statistics().acquisitions == 1

        clock.run(main())

    async def test_counter_lockless_flipped_at_run_time(self) -> None:
        rig = make_rig(HPET_LOCK)
        hpet, seq = rig.hpet, rig.hpet.state_version
        await rig.write(CFG, ENABLE)

        async def counter_nowait() -> bool:
            """Whether a counter read completes without an await (read_nowait serves it)."""
            async with keeper():
                return rig.space.read_nowait(HPET_BASE + COUNTER, 8) is not None

        assert not await counter_nowait()
        await rig.read(COUNTER)
        rig.host.set_patch("hpet-counter-lockless", True)
        hpet.apply_patches()
        assert hpet.locking == "hpet-counter-lockless"
        assert await counter_nowait()
        await rig.read(COUNTER)
        await rig.write(CFG, ENABLE)  # a write section of state_version now
        rig.host.set_patch("hpet-counter-lockless", False)
        hpet.apply_patches()
        assert not await counter_nowait()
        await rig.read(COUNTER)
        await rig.write(CFG, ENABLE)
        assert rig.mutex_sites() == {"hpet write": 3, "hpet read": 2}
        assert (seq.statistics().reads, seq.statistics().writes) == (2, 1)
        assert hpet.counter_reads == 4

    async def test_a_what_if_lockless_region_before_the_series_takes_the_bql_itself(self) -> None:
        rig = make_rig(BEFORE)
        rig.hpet.iomem.enable_lockless_io()  # --lockless hpet: dispatch no longer takes the BQL
        await rig.read(ID)
        await rig.read(COUNTER)
        await rig.write(CFG, ENABLE | LEGACY)  # IRQ updates under the BQL the handler holds
        assert rig.bql_sites() == {"hpet read": 2, "hpet write": 1}
        assert rig.hpet.lock.statistics().acquisitions == 0
        assert [(n, level) for _, n, level in rig.log] == [(2, 0), (8, 0)]


class TestSeqLock:
    async def test_counter_read_during_config_write_retries(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        cost = rig.host.costs.handler("hpet")
        await rig.write(CFG, ENABLE)
        t_en = clock.now_ns()
        await sleep_ns(10_000)
        t_w = clock.now_ns()
        writer = asyncio.get_running_loop().create_task(rig.write(CFG, 0))
        await sleep_ns(0)  # the writer is now inside its write section, spending its cost
        assert rig.hpet.state_version.sequence & 1
        async with keeper() as k:
            value = await rig.read(COUNTER)
            assert k.offset_ns == 0  # it had to wait: synced before waiting
        await writer
        assert value == rig.hpet.hpet_counter == (t_w + cost - t_en) // 10 == 1030
        stats = rig.hpet.statistics()
        assert (stats.seqlock_retries, stats.seqlock_writes) == (1, 2)

    async def test_only_config_writes_bump_the_version(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        seq = rig.hpet.state_version
        await rig.write(COUNTER, 7)
        await rig.write(tn_cfg(0), TN_ENABLE)
        await rig.write(tn_cmp(0), 1 << 40)
        await rig.write(ISR, 0b111)
        await rig.read(COUNTER)
        assert seq.sequence == 0
        await rig.write(CFG, ENABLE)
        await rig.write(CFG + 4, 0, 4)  # the CONFIG register's high dword is CONFIG too
        await rig.write(CFG, 0)
        assert seq.sequence == 6 and seq.statistics().writes == 3

    async def test_without_the_switch_the_version_is_untouched(self) -> None:
        rig = make_rig(HPET_LOCK)
        await rig.write(CFG, ENABLE)
        await rig.write(CFG, 0)
        assert rig.hpet.state_version.statistics().writes == 0


class TestStatistics:
    async def test_counters(self) -> None:
        rig = make_rig(COUNTER_LOCKLESS)
        async with main_loop(rig.host):
            await rig.write(tn_cfg(2), TN_ENABLE | TN_PERIODIC | TN_SETVAL | route(19))
            await rig.write(tn_cmp(2), 200)
            await rig.write(CFG, ENABLE)
            await rig.read(COUNTER)
            await rig.read(COUNTER + 4, 4)
            await rig.read(ID)
            await sleep_ns(6_500)
        stats = rig.hpet.statistics()
        # timers 0 and 1 (comparator ~0) fire once at once, as in QEMU; timer 2 three times
        assert stats == HPETStatistics(reads=3, writes=3, counter_reads=2, seqlock_retries=0,
                                       seqlock_writes=1, timer_fires=5, irq_raises=3, fsb_writes=0,
                                       dropped_irqs=0)
        assert [t.fires for t in rig.hpet.timers] == [1, 1, 3]

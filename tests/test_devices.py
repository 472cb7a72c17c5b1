"""Tests for the BQL-bound devices of a boot: serial, rtc, pit, pcspk/port92/ioport80, pci, i8042, generic.

Each scenario runs in virtual time: a :class:`Rig` puts the devices' regions in an I/O space whose
BQL is the host's, wires every GSI to a recording line (which checks the BQL is held, as
``qemu_set_irq`` needs), starts the main loop (device timers) and accesses ports as a vCPU would.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import pytest

from aemu import clock
from aemu.devices.base import Device, DeviceHost
from aemu.devices.generic import GenericRegion
from aemu.devices.i8042 import I8042
from aemu.devices.misc import IOPort80, PCSpkState, Port92
from aemu.devices.pci import Q35_PCI_DEVICES, PCIHost
from aemu.devices.pit import PIT_FREQ, PITState
from aemu.devices.rtc import RTCState
from aemu.devices.serial import SerialState
from aemu.errors import ConfigError
from aemu.irq import IRQLine
from aemu.memory import AddressSpace, MemoryRegion, MemTxResult, mtree_text
from aemu.patches import PATCHES, SWITCHES, check_patches
from aemu.sync import bql_locked

D = TypeVar("D", bound=Device)
NS = 1_000_000_000
REFERENCE_MTREE = Path(__file__).parent / "data" / "qemu-7.2" / "info-mtree-q35.txt"


class Rig:
    """A DeviceHost, the I/O address space with the devices' regions, and a log of GSI changes."""

    def __init__(self) -> None:
        self.host = DeviceHost()
        self.irq_log: list[tuple[int, int, int]] = []  # (virtual ns, gsi, level)
        for n in range(24):
            self.host.connect_gsi(n, IRQLine(self._irq, n))
        self.root = MemoryRegion.container("io", 0x10000)
        self.space = AddressSpace("I/O", self.root, bql=self.host.bql, width_bits=16)

    def add(self, dev: D) -> D:
        for space, addr, mr in dev.mappings:
            assert space == "io"
            self.root.add_subregion(addr, mr)
        return dev

    def _irq(self, n: int, level: int) -> None:
        self.irq_log.append((clock.now_ns(), n, level))

    def edges(self, gsi: int) -> list[tuple[int, int]]:
        """(time, level) of each change of ``gsi``'s level."""
        out: list[tuple[int, int]] = []
        level = 0
        for t, n, lv in self.irq_log:
            if n == gsi and lv != level:
                out.append((t, lv))
                level = lv
        return out

    def level(self, gsi: int) -> int:
        return self.host.gsi(gsi).level

    async def inb(self, port: int, size: int = 1) -> int:
        value, result = await self.space.read(port, size)
        assert result == MemTxResult.OK, f"read {port:#x}: {result!r}"
        return value

    async def outb(self, port: int, value: int, size: int = 1) -> None:
        result = await self.space.write(port, value, size)
        assert result == MemTxResult.OK, f"write {port:#x}: {result!r}"

    def sites(self) -> dict[str, int]:
        """BQL acquisitions per call site."""
        return {s.site: s.acquisitions for s in self.host.bql.statistics().sites}


T = TypeVar("T")


def simulate(scenario: Callable[[Rig], Awaitable[T]]) -> T:
    """Run ``scenario`` on a fresh rig in virtual time, with the main loop running."""

    async def main() -> T:
        rig = Rig()
        rig.host.main_loop.start()
        try:
            return await scenario(rig)
        finally:
            await rig.host.main_loop.stop()

    return clock.run(main())


def reference_io_lines() -> set[str]:
    """The lines of the reference q35 ``info mtree`` under ``address-space: I/O``."""
    lines = REFERENCE_MTREE.read_text().splitlines()
    start = lines.index("address-space: I/O") + 1
    end = lines.index("", start)
    return set(lines[start:end])


# ---------------------------------------------------------------------------------------------
class TestBQLGuard:
    """``host.bql_guard(site)``, QEMU's ``BQL_LOCK_GUARD()``: the BQL for a block, unless held."""

    def test_takes_a_free_bql_at_its_site_and_releases_it(self) -> None:
        async def main() -> tuple[bool, bool, dict[str, int]]:
            host = DeviceHost()
            async with host.bql_guard("dev irq"):
                inside = bql_locked()
            return inside, bql_locked(), {s.site: s.acquisitions for s in host.bql.statistics().sites}

        assert clock.run(main()) == (True, False, {"dev irq": 1})

    def test_under_the_bql_it_is_a_ready_no_op(self) -> None:
        async def main() -> tuple[bool, dict[str, int]]:
            host = DeviceHost()
            async with host.bql.held("caller"):
                guard = host.bql_guard("dev irq")
                assert guard is host.bql_guard("other")  # one shared object, nothing made per use
                assert not inspect.iscoroutine(guard.__aenter__())
                async with guard:
                    assert host.bql.owner is asyncio.current_task()
                held = bql_locked()
            return held, {s.site: s.acquisitions for s in host.bql.statistics().sites}

        assert clock.run(main()) == (True, {"caller": 1})

    def test_waits_for_a_held_bql(self) -> None:
        async def main() -> tuple[list[tuple[str, int]], dict[str, int]]:
            host = DeviceHost()
            log: list[tuple[str, int]] = []

            async def holder() -> None:
                async with host.bql.held("holder"):
                    await clock.sleep_ns(1_000)
                    log.append(("holder out", clock.now_ns()))

            async def device() -> None:
                async with host.bql_guard("dev irq"):
                    log.append(("device in", clock.now_ns()))

            await asyncio.gather(holder(), device())
            return log, {s.site: s.contentions for s in host.bql.statistics().sites}

        log, contentions = clock.run(main())
        assert [what for what, _t in log] == ["holder out", "device in"]
        assert log[1][1] >= log[0][1] == 1_000
        assert contentions == {"holder": 0, "dev irq": 1}

    def test_an_exception_releases_the_bql_and_propagates(self) -> None:
        async def main() -> bool:
            host = DeviceHost()
            with pytest.raises(KeyError):
                async with host.bql_guard("dev irq"):
                    raise KeyError("x")
            return host.bql.locked()

        assert clock.run(main()) is False


class TestSwitches:
    """The switches of the series (:mod:`aemu.patches`) as a DeviceHost holds them."""

    def test_in_patch_order_with_prerequisites_first(self) -> None:
        assert list(PATCHES) == [p.name for p in SWITCHES] == [
            "lockless-io", "pmtimer-lockless", "hpet-lock", "hpet-counter-lockless", "irqchip-pre-run",
            "hpet-irq-bql"]
        order = list(PATCHES)
        for p in SWITCHES:
            assert PATCHES[p.name] == p.needs and p.part and p.summary
            assert all(order.index(pre) < order.index(p.name) for pre in p.needs)
        with pytest.raises(TypeError):
            PATCHES["x"] = ()  # type: ignore[index]

    def test_a_host_validates_its_set_in_any_order(self) -> None:
        host = DeviceHost(patches=("hpet-lock", "lockless-io"))
        assert host.patches == {"lockless-io", "hpet-lock"} and host.patch("hpet-lock")
        with pytest.raises(ConfigError, match="patch 'hpet-lock' needs 'lockless-io', which is off"):
            DeviceHost(patches=("hpet-lock",))
        with pytest.raises(ConfigError, match="unknown patch 'bogus'; accepted: lockless-io, "):
            check_patches(["lockless-io", "bogus"])

    def test_set_patch_checks_prerequisites_and_dependants(self) -> None:
        host = DeviceHost()
        with pytest.raises(ConfigError, match="patch 'hpet-counter-lockless' needs 'hpet-lock', which is off"):
            host.set_patch("hpet-counter-lockless", True)
        for name in ("lockless-io", "hpet-lock", "hpet-counter-lockless"):
            host.set_patch(name, True)
        with pytest.raises(ConfigError, match="cannot turn off 'lockless-io': 'hpet-lock' needs it"):
            host.set_patch("lockless-io", False)
        with pytest.raises(ConfigError, match="unknown patch 'hpet'"):
            host.set_patch("hpet", False)
        assert host.patches == {"lockless-io", "hpet-lock", "hpet-counter-lockless"}  # unchanged
        host.set_patch("hpet-counter-lockless", False)
        host.set_patch("hpet-counter-lockless", False)  # turning off an off switch is fine
        assert host.patches == {"lockless-io", "hpet-lock"}


# ---------------------------------------------------------------------------------------------
class TestSerial:
    def test_transmits_to_output_and_callback(self) -> None:
        seen: list[bytes] = []

        async def scenario(rig: Rig) -> SerialState:
            uart = rig.add(SerialState(rig.host, on_output=seen.append))
            for ch in b"hello\n":
                assert await rig.inb(0x3FD) & 0x20  # THRE: ready to transmit
                await rig.outb(0x3F8, ch)
            assert await rig.inb(0x3FD) == 0x60  # THRE | TEMT after the last byte
            return uart

        uart = simulate(scenario)
        assert uart.output == b"hello\n"
        assert b"".join(seen) == b"hello\n"
        assert (uart.reads, uart.writes) == (7, 6)

    def test_each_access_takes_the_bql(self) -> None:
        async def scenario(rig: Rig) -> dict[str, int]:
            rig.add(SerialState(rig.host))
            await rig.outb(0x3F8, ord("x"))
            await rig.inb(0x3FD)
            await rig.inb(0x3FD)
            return rig.sites()

        assert simulate(scenario) == {"serial write": 1, "serial read": 2}

    def test_thre_interrupt_raised_on_ier_write_and_acked_by_iir_read(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(SerialState(rig.host))
            seen = [rig.level(4)]
            await rig.outb(0x3F9, 0x02)  # IER: THRI
            seen += [rig.level(4), await rig.inb(0x3FA)]  # IIR: THRI pending
            seen += [rig.level(4), await rig.inb(0x3FA)]  # reading IIR acknowledged it
            await rig.outb(0x3F8, ord("a"))  # THR empties at once: THRI again
            seen += [rig.level(4), await rig.inb(0x3FA)]
            return seen

        assert simulate(scenario) == [0, 1, 0x02, 0, 0x01, 1, 0x02]

    def test_thr_write_gives_a_new_edge(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(SerialState(rig.host))
            await rig.outb(0x3F9, 0x02)
            await rig.outb(0x3F8, ord("a"))
            return [lv for _t, n, lv in rig.irq_log if n == 4]

        assert simulate(scenario) == [1, 0, 1]  # IER raise; THR write lowers, transmit raises

    def test_divisor_latch(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], SerialState]:
            uart = rig.add(SerialState(rig.host))
            await rig.outb(0x3FB, 0x80)  # DLAB
            await rig.outb(0x3F8, 0x01)
            await rig.outb(0x3F9, 0x00)
            regs = [await rig.inb(0x3F8), await rig.inb(0x3F9)]
            await rig.outb(0x3FB, 0x03)  # 8N1, DLAB off
            regs += [await rig.inb(0x3FB), await rig.inb(0x3F9)]
            return regs, uart

        regs, uart = simulate(scenario)
        assert regs == [0x01, 0x00, 0x03, 0x00]
        assert uart.baud == 115_200
        assert uart.char_transmit_time == (NS // 115_200) * 10

    def test_probe_registers(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(SerialState(rig.host))
            await rig.outb(0x3FF, 0xA5)  # scratch
            out = [await rig.inb(0x3FF)]
            await rig.outb(0x3F9, 0x0F)  # IER keeps 4 bits
            out.append(await rig.inb(0x3F9))
            await rig.outb(0x3F9, 0x00)
            await rig.outb(0x3FA, 0xE7)  # FCR: FIFO on -> IIR bits 7..6 say 16550A
            out.append(await rig.inb(0x3FA) >> 6)
            await rig.outb(0x3FC, 0x1A)  # MCR: loopback with RTS and OUT2
            out.append(await rig.inb(0x3FE) & 0xF0)  # MSR: CTS and DCD looped back
            out.append(await rig.inb(0x3FC))
            return out

        assert simulate(scenario) == [0xA5, 0x0F, 0x03, 0x90, 0x1A]

    def test_loopback_receives_what_it_transmits(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], bytes]:
            uart = rig.add(SerialState(rig.host))
            await rig.outb(0x3FC, 0x10)
            await rig.outb(0x3F8, 0x5A)
            got = [await rig.inb(0x3FD) & 0x01, await rig.inb(0x3F8), await rig.inb(0x3FD) & 0x01]
            return got, bytes(uart.output)

        assert simulate(scenario) == ([1, 0x5A, 0], b"")

    def test_feed_raises_rx_interrupt_byte_by_byte(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            uart = rig.add(SerialState(rig.host))
            await rig.outb(0x3F9, 0x01)  # IER: RDI
            await uart.feed(b"ab")
            out = [rig.level(4), await rig.inb(0x3FA), await rig.inb(0x3FD) & 0x01]
            out += [await rig.inb(0x3F8), rig.level(4)]  # 'a'; 'b' moves into RBR
            out += [await rig.inb(0x3F8), rig.level(4), await rig.inb(0x3FD) & 0x01]
            return out

        assert simulate(scenario) == [1, 0x04, 1, ord("a"), 1, ord("b"), 0, 0]

    def test_fifo_character_timeout(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], list[tuple[int, int]], int]:
            uart = rig.add(SerialState(rig.host))
            await rig.outb(0x3F9, 0x01)
            await rig.outb(0x3FA, 0xC1)  # FIFO on, trigger level 14
            await uart.feed(b"xyz")
            fed = clock.now_ns()
            out = [rig.level(4), await rig.inb(0x3FA)]  # 3 < 14: no interrupt yet
            await clock.sleep_ns(10_000_000)
            out += [await rig.inb(0x3FA)]  # character timeout
            out += [await rig.inb(0x3F8) for _ in range(3)]
            out += [rig.level(4), await rig.inb(0x3FD) & 0x01]
            return out, rig.edges(4), fed

        out, edges, fed = simulate(scenario)
        assert out == [0, 0xC1, 0xCC, ord("x"), ord("y"), ord("z"), 0, 0]
        # raised by the timeout timer 4 character times (9600 8N1) after the bytes arrived
        assert edges[0] == (fed + 4 * (NS // 9600) * 10 + DeviceHost().costs.timer_cb_ns, 1)


# ---------------------------------------------------------------------------------------------
async def cmos_read(rig: Rig, index: int) -> int:
    await rig.outb(0x70, index)
    return await rig.inb(0x71)


async def cmos_write(rig: Rig, index: int, value: int) -> None:
    await rig.outb(0x70, index)
    await rig.outb(0x71, value)


class TestRTC:
    DATE = datetime(2025, 1, 1, 23, 59, 58, tzinfo=timezone.utc)  # a Wednesday

    def test_time_in_bcd_advances_with_virtual_time(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], list[int]]:
            rig.add(RTCState(rig.host, date=self.DATE))
            regs = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)
            before = [await cmos_read(rig, r) for r in regs]
            await clock.sleep_ns(2 * NS)
            after = [await cmos_read(rig, r) for r in regs]
            return before, after

        before, after = simulate(scenario)
        assert before == [0x58, 0x59, 0x23, 0x04, 0x01, 0x01, 0x25, 0x20]
        assert after == [0x00, 0x00, 0x00, 0x05, 0x02, 0x01, 0x25, 0x20]

    def test_registers_after_reset(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(RTCState(rig.host))
            return [await cmos_read(rig, r) for r in (0x0A, 0x0B, 0x0C, 0x0D)] + [await rig.inb(0x70)]

        assert simulate(scenario) == [0x26, 0x02, 0x00, 0x80, 0xFF]

    def test_update_timer_sets_uf_and_irq8_and_reading_c_clears(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], list[tuple[int, int]]]:
            rig.add(RTCState(rig.host))
            await cmos_write(rig, 0x0B, 0x12)  # UIE, 24 hour
            await clock.sleep_ns(NS + 10_000)
            out = [rig.level(8), await cmos_read(rig, 0x0C), rig.level(8), await cmos_read(rig, 0x0C)]
            return out, rig.edges(8)

        out, edges = simulate(scenario)
        assert out == [1, 0x90, 0, 0x00]  # IRQF | UF, then clear
        assert edges[0] == (NS + DeviceHost().costs.timer_cb_ns, 1)  # at the second boundary

    def test_uf_without_uie_sets_no_irq(self) -> None:
        async def scenario(rig: Rig) -> tuple[int, list[tuple[int, int]]]:
            rig.add(RTCState(rig.host))
            await clock.sleep_ns(NS + 10_000)
            return await cmos_read(rig, 0x0C), rig.edges(8)

        assert simulate(scenario) == (0x10, [])

    def test_uip_before_the_update(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(RTCState(rig.host))
            out = [await cmos_read(rig, 0x0A)]
            await clock.sleep_ns(NS - 100_000 - clock.now_ns())  # within 244 us of the update
            out.append(await cmos_read(rig, 0x0A))
            await clock.sleep_ns(200_000)
            out.append(await cmos_read(rig, 0x0A))
            return out

        assert simulate(scenario) == [0x26, 0xA6, 0x26]

    def test_periodic_interrupt_at_rate_from_register_a(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[tuple[int, int]], int, int]:
            rig.add(RTCState(rig.host))
            await cmos_write(rig, 0x0A, 0x2F)  # rate 15: 2 Hz
            await rig.outb(0x70, 0x0B)
            await rig.outb(0x71, 0x42)  # PIE
            enabled = clock.now_ns()
            await clock.sleep_ns(600_000_000)
            return rig.edges(8), await cmos_read(rig, 0x0C), enabled

        edges, c, enabled = simulate(scenario)
        first = (enabled * 32768 // NS + 16384) * NS // 32768 + 1
        assert edges == [(first + DeviceHost().costs.timer_cb_ns, 1)]
        assert c == 0xC0  # IRQF | PF

    def test_alarm_interrupt(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[tuple[int, int]], int]:
            rig.add(RTCState(rig.host, date=self.DATE))
            for index, value in ((0x01, 0x01), (0x03, 0x00), (0x05, 0x00)):  # alarm at 00:00:01
                await cmos_write(rig, index, value)
            await cmos_write(rig, 0x0B, 0x22)  # AIE
            await clock.sleep_ns(3 * NS + 10_000)
            return rig.edges(8), await cmos_read(rig, 0x0C)

        edges, c = simulate(scenario)
        assert edges == [(3 * NS + DeviceHost().costs.timer_cb_ns, 1)]  # 23:59:58 + 3 s
        assert c == 0xB0  # IRQF | AF | UF (UF since the first update, without an interrupt)

    def test_alarm_dont_care_fires_every_second(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(RTCState(rig.host))
            for index in (0x01, 0x03, 0x05):
                await cmos_write(rig, index, 0xC0)
            await cmos_write(rig, 0x0B, 0x22)
            out = []
            for _ in range(3):
                await clock.sleep_ns(NS)
                out.append(await cmos_read(rig, 0x0C))
            return out

        assert simulate(scenario) == [0xB0, 0xB0, 0xB0]

    def test_index_nmi_bit_and_cmos_ram(self) -> None:
        async def scenario(rig: Rig) -> tuple[RTCState, int]:
            rtc = rig.add(RTCState(rig.host))
            await cmos_write(rig, 0x40, 0x5A)
            await rig.outb(0x70, 0xC0)  # NMI disabled, index 0x40
            return rtc, await rig.inb(0x71)

        rtc, value = simulate(scenario)
        assert (value, rtc.cmos_index, rtc.nmi_disabled) == (0x5A, 0x40, True)

    def test_set_mode_rebases_the_clock(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(RTCState(rig.host))
            await cmos_write(rig, 0x0B, 0x82)  # SET
            await cmos_write(rig, 0x04, 0x10)
            await cmos_write(rig, 0x02, 0x30)
            await cmos_write(rig, 0x0B, 0x02)
            await clock.sleep_ns(3 * NS)
            return [await cmos_read(rig, r) for r in (0x04, 0x02, 0x00)]

        assert simulate(scenario) == [0x10, 0x30, 0x03]

    def test_regions_and_bql_sites(self) -> None:
        async def scenario(rig: Rig) -> dict[str, int]:
            rig.add(RTCState(rig.host))
            await cmos_read(rig, 0x0A)
            return rig.sites()

        sites = simulate(scenario)
        assert sites["rtc-index write"] == 1 and sites["rtc read"] == 1


# ---------------------------------------------------------------------------------------------
class TestPIT:
    def test_mode2_fires_irq0_at_the_programmed_period(self) -> None:
        count = 1193  # ~1 ms

        async def scenario(rig: Rig) -> tuple[list[int], int]:
            pit = rig.add(PITState(rig.host))
            await rig.outb(0x43, 0x34)  # channel 0, LSB then MSB, mode 2
            await rig.outb(0x40, count & 0xFF)
            await rig.outb(0x40, count >> 8)
            load = pit.channels[0].count_load_time
            await clock.sleep_ns(4_500_000)
            return [t for t, lv in rig.edges(0) if lv], load

        rises, load = simulate(scenario)
        cb = DeviceHost().costs.timer_cb_ns

        def tick(n: int) -> int:  # when the n-th PIT tick after the load begins
            return load + n * NS // PIT_FREQ

        # OUT rises when the count wraps (tick k*count) and falls one tick later; the timer for
        # the rise is due one tick after the previous fall's, and the main loop runs callbacks
        # one after the other (cb ns each, under the BQL), so a rise waits for the fall before it.
        expected = [tick(count + 1) + cb]
        expected += [max(tick(k * count + 1), tick(k * count) + cb) + cb for k in (2, 3, 4)]
        assert rises == expected
        period = count * NS // PIT_FREQ
        assert all(abs(b - a - period) < cb for a, b in zip(rises, rises[1:]))

    def test_power_on_mode3_tick_and_irq_control(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], int]:
            pit = rig.add(PITState(rig.host))
            await clock.sleep_ns(200_000_000)
            rises = [t for t, lv in rig.edges(0) if lv]
            async with rig.host.bql.held("test"):
                pit.irq_control(False)  # what the HPET's legacy mode does
            await clock.sleep_ns(200_000_000)
            return rises, sum(1 for _t, lv in rig.edges(0) if lv)

        rises, after = simulate(scenario)
        # Reset leaves the line low while OUT is high, so (as in QEMU) the first callback, half a
        # period in, raises it; then OUT rises once per 0x10000 ticks (18.2 Hz).
        half = 0x8000 * NS // PIT_FREQ
        assert len(rises) == 4 and half <= rises[0] < half + 2 * DeviceHost().costs.timer_cb_ns
        assert [round((b - a) * PIT_FREQ / NS) for a, b in zip(rises[1:], rises[2:])] == [0x10000, 0x10000]
        assert after == len(rises)

    def test_mode0_channel2_count_and_out_through_port_61(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], int, int]:
            pit = rig.add(PITState(rig.host))
            rig.add(PCSpkState(rig.host, pit))
            await rig.outb(0x61, 0x01)  # gate channel 2 on, speaker off
            await rig.outb(0x43, 0xB0)  # channel 2, LSB then MSB, mode 0
            await rig.outb(0x42, 0xFF)
            await rig.outb(0x42, 0xFF)
            load = pit.channels[2].count_load_time
            out = [await rig.inb(0x61), await rig.inb(0x61)]  # refresh bit toggles, OUT low
            await clock.sleep_ns(1_000_000)
            t = clock.now_ns()
            lsb, msb = await rig.inb(0x42), await rig.inb(0x42)
            await clock.sleep_ns(60_000_000)  # past terminal count
            out.append(await rig.inb(0x61))
            return out, msb << 8 | lsb, (0xFFFF - (t - load) * PIT_FREQ // NS) & 0xFFFF

        out, count, expected = simulate(scenario)
        assert out == [0x11, 0x01, 0x31]
        assert count == expected

    def test_counter_latch_and_read_back_status(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], int]:
            pit = rig.add(PITState(rig.host))
            await rig.outb(0x43, 0x34)
            await rig.outb(0x40, 0x00)
            await rig.outb(0x40, 0x10)  # count 0x1000
            await clock.sleep_ns(100_000)
            await rig.outb(0x43, 0x00)  # latch channel 0
            expected = pit.channels[0].latched_count
            await clock.sleep_ns(100_000)  # the latch holds while time runs
            latched = await rig.inb(0x40) | await rig.inb(0x40) << 8
            await rig.outb(0x43, 0xE2)  # read-back: status of channel 0 only
            status = await rig.inb(0x40)
            return [latched, status, await rig.inb(0x43)], expected

        (latched, status, control), expected = simulate(scenario)
        assert latched == expected == 0x1000 - 100_000 * PIT_FREQ // NS
        assert status & 0x7F == 0x34  # LSB then MSB, mode 2, binary
        assert control == 0


# ---------------------------------------------------------------------------------------------
class TestMisc:
    def test_pcspk_without_a_pit_and_linked_later(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            spk = rig.add(PCSpkState(rig.host))
            await rig.outb(0x61, 0x03)
            out = [await rig.inb(0x61), await rig.inb(0x61)]
            spk.pit = rig.add(PITState(rig.host))  # QEMU's "pit" link
            out.append(await rig.inb(0x61))  # channel 2's gate is low until written
            await rig.outb(0x61, 0x01)
            out.append(await rig.inb(0x61))
            return out

        assert simulate(scenario) == [0x13, 0x03, 0x32, 0x21]  # mode 3 after reset: OUT high

    def test_port92_a20_and_reset_request(self) -> None:
        resets: list[str] = []

        async def scenario(rig: Rig) -> tuple[list[int], Port92]:
            p92 = rig.add(Port92(rig.host, on_reset=lambda: resets.append("reset")))
            out = [await rig.inb(0x92)]
            await rig.outb(0x92, 0x02)
            out.append(await rig.inb(0x92))
            assert p92.a20
            await rig.outb(0x92, 0x03)  # rising edge of bit 0
            await rig.outb(0x92, 0x03)  # no edge
            out.append(await rig.inb(0x92))
            return out, p92

        out, p92 = simulate(scenario)
        assert out == [0x00, 0x02, 0x03]
        assert p92.reset_requests == 1 and resets == ["reset"]
        assert (p92.reads, p92.writes) == (3, 3)

    def test_ioport80_ignores_writes_and_reads_all_ones(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], IOPort80, dict[str, int]]:
            p80 = rig.add(IOPort80(rig.host))
            await rig.outb(0x80, 0x00)
            return [await rig.inb(0x80)], p80, rig.sites()

        out, p80, sites = simulate(scenario)
        assert out == [0xFF] and (p80.reads, p80.writes) == (1, 1)
        assert sites == {"ioport80 write": 1, "ioport80 read": 1}


# ---------------------------------------------------------------------------------------------
def cfg(slot: int, fn: int, reg: int, bus: int = 0) -> int:
    return 0x8000_0000 | bus << 16 | slot << 11 | fn << 8 | reg


class TestPCI:
    async def read(self, rig: Rig, slot: int, fn: int, reg: int, size: int = 4) -> int:
        await rig.outb(0xCF8, cfg(slot, fn, reg & 0xFC), 4)
        return await rig.inb(0xCFC + (reg & 3), size)

    async def write(self, rig: Rig, slot: int, fn: int, reg: int, value: int, size: int = 4) -> None:
        await rig.outb(0xCF8, cfg(slot, fn, reg & 0xFC), 4)
        await rig.outb(0xCFC + (reg & 3), value, size)

    def test_ids_and_absent_functions(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], PCIHost]:
            pci = rig.add(PCIHost(rig.host))
            out = [await self.read(rig, 0x00, 0, 0x00),  # MCH vendor/device
                   await self.read(rig, 0x1F, 0, 0x00),  # ICH9 LPC
                   await self.read(rig, 0x1F, 2, 0x08),  # AHCI class 01.06.01, revision 2
                   await self.read(rig, 0x1F, 0, 0x0E, 1),  # header type: multifunction
                   await self.read(rig, 0x00, 0, 0x02, 2),  # word at 0xcfe
                   await self.read(rig, 0x00, 0, 0x01, 1),  # byte at 0xcfd
                   await self.read(rig, 0x05, 0, 0x00)]  # nothing in slot 5
            await rig.outb(0xCF8, cfg(0, 0, 0, bus=1), 4)
            out.append(await rig.inb(0xCFC, 4))  # no bus 1
            await rig.outb(0xCF8, 0x0000_0000, 4)  # enable bit clear
            out.append(await rig.inb(0xCFC, 4))
            out.append(await rig.inb(0xCFE, 2))
            return out, pci

        out, pci = simulate(scenario)
        assert out == [0x29C08086, 0x29188086, 0x01060102, 0x80, 0x29C0, 0x80,
                       0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF]
        assert (pci.config_reads, pci.config_writes) == (10, 0)

    def test_config_address_latch(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(PCIHost(rig.host))
            await rig.outb(0xCF8, 0x8000_F800, 4)
            out = [await rig.inb(0xCF8, 4)]
            await rig.outb(0xCF8, 0x12, 1)  # only 32-bit writes latch
            out.append(await rig.inb(0xCF8, 4))
            return out

        assert simulate(scenario) == [0x8000_F800, 0x8000_F800]

    def test_bar_sizing_and_writable_command(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(PCIHost(rig.host))
            e1000e, ahci = (0x02, 0), (0x1F, 2)
            out = [await self.read(rig, *ahci, 0x24), await self.read(rig, *e1000e, 0x18)]
            for slot_fn, reg in ((e1000e, 0x10), (e1000e, 0x18), ((0x01, 0), 0x10)):
                old = await self.read(rig, *slot_fn, reg)
                await self.write(rig, *slot_fn, reg, 0xFFFF_FFFF)
                out.append(await self.read(rig, *slot_fn, reg))
                await self.write(rig, *slot_fn, reg, old)
                out.append(await self.read(rig, *slot_fn, reg))
            await self.write(rig, *e1000e, 0x04, 0xFFFF, 2)
            out.append(await self.read(rig, *e1000e, 0x04, 2))
            await self.write(rig, *e1000e, 0x00, 0xFFFF_FFFF)  # IDs are read-only
            out.append(await self.read(rig, *e1000e, 0x00))
            await self.write(rig, *e1000e, 0x3C, 0x0B, 1)  # interrupt line
            out.append(await self.read(rig, *e1000e, 0x3C, 2))
            return out

        assert simulate(scenario) == [
            0xFEBD_5000, 0x0000_C041,
            0xFFFE_0000, 0xFEB8_0000,  # 128 KiB memory BAR
            0xFFFF_FFE1, 0x0000_C041,  # 32-byte I/O BAR
            0xFF00_0008, 0xFD00_0008,  # 16 MiB prefetchable
            0x0507, 0x10D38086, 0x010B,
        ]

    def test_power_on_bars_without_firmware(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(PCIHost(rig.host, firmware=False))
            return [await self.read(rig, 0x1F, 2, 0x24), await self.read(rig, 0x1F, 2, 0x04, 2)]

        assert simulate(scenario) == [0x0000_0000, 0x0000]

    def test_bql_sites(self) -> None:
        async def scenario(rig: Rig) -> dict[str, int]:
            rig.add(PCIHost(rig.host))
            await self.read(rig, 0, 0, 0)
            return rig.sites()

        assert simulate(scenario) == {"pci-conf-idx write": 1, "pci-conf-data read": 1}


# ---------------------------------------------------------------------------------------------
class TestI8042:
    def test_controller_commands(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(I8042(rig.host))
            out = [await rig.inb(0x64)]
            await rig.outb(0x64, 0xAA)  # self test
            out += [await rig.inb(0x64), await rig.inb(0x60), await rig.inb(0x64)]
            await rig.outb(0x64, 0xAB)  # keyboard interface test
            out += [await rig.inb(0x60)]
            await rig.outb(0x64, 0x20)  # read command byte
            out += [await rig.inb(0x60)]
            await rig.outb(0x64, 0x60)  # write command byte
            await rig.outb(0x60, 0x61)
            await rig.outb(0x64, 0x20)
            out += [await rig.inb(0x60)]
            return out

        assert simulate(scenario) == [0x18, 0x1D, 0x55, 0x1C, 0x00, 0x03, 0x61]

    def test_irq1_on_output_unless_disabled(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(I8042(rig.host))
            await rig.outb(0x64, 0xAA)
            out = [rig.level(1)]
            await rig.outb(0x64, 0xAD)  # keyboard disabled: no IRQ
            out.append(rig.level(1))
            await rig.outb(0x64, 0xAE)
            out.append(rig.level(1))
            await rig.inb(0x60)
            out.append(rig.level(1))
            await rig.outb(0x64, 0x60)
            await rig.outb(0x60, 0x00)  # interrupts off in the command byte
            await rig.outb(0x64, 0xAA)
            out.append(rig.level(1))
            return out

        assert simulate(scenario) == [1, 0, 1, 0, 0]

    def test_keyboard_reset_and_aux_loopback(self) -> None:
        async def scenario(rig: Rig) -> list[int]:
            rig.add(I8042(rig.host))
            await rig.outb(0x60, 0xFF)  # keyboard reset
            out = [await rig.inb(0x60), await rig.inb(0x60), rig.level(1)]
            await rig.outb(0x64, 0xD3)  # write to the aux output buffer
            await rig.outb(0x60, 0x5A)
            out += [await rig.inb(0x64), rig.level(12), await rig.inb(0x60), rig.level(12)]
            return out

        assert simulate(scenario) == [0xFA, 0xAA, 0, 0x39, 1, 0x5A, 0]

    def test_reset_request(self) -> None:
        async def scenario(rig: Rig) -> I8042:
            kbd = rig.add(I8042(rig.host))
            await rig.outb(0x64, 0xFE)
            await rig.outb(0x64, 0xFF)  # pulse nothing
            return kbd

        kbd = simulate(scenario)
        assert kbd.reset_requests == 1 and (kbd.reads, kbd.writes) == (0, 2)


# ---------------------------------------------------------------------------------------------
class TestGenericRegion:
    def test_read_value_masked_and_counts(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], GenericRegion, dict[str, int]]:
            fwcfg = rig.add(GenericRegion(rig.host, "fwcfg", 2, read_value=0x1234, addr=0x510))
            vga = rig.add(GenericRegion(rig.host, "vga", 2, addr=0x3B4))
            await rig.outb(0x510, 0x0000, 2)
            out = [await rig.inb(0x510, 2), await rig.inb(0x510), await rig.inb(0x3B5)]
            assert vga.reads == 1
            return out, fwcfg, rig.sites()

        out, fwcfg, sites = simulate(scenario)
        assert out == [0x1234, 0x34, 0xFF]
        assert (fwcfg.reads, fwcfg.writes) == (2, 1)
        assert sites == {"fwcfg write": 1, "fwcfg read": 2, "vga read": 1}

    def test_memory_mapping_and_bad_space(self) -> None:
        host = DeviceHost()
        ahci = GenericRegion(host, "ahci", 0x1000, read_value=0, space="memory", addr=0xFEBD5000)
        assert ahci.mappings == [("memory", 0xFEBD5000, ahci.region)]
        with pytest.raises(ValueError, match="space must be"):
            GenericRegion(host, "x", 1, space="mmio")


# ---------------------------------------------------------------------------------------------
class TestLocklessWhatIf:
    """A region made lockless by a what-if switch: the handler runs without the BQL and takes it
    only around its IRQ updates (qemu_set_irq needs it)."""

    def test_serial_irq_update_takes_the_bql(self) -> None:
        async def scenario(rig: Rig) -> tuple[list[int], dict[str, int]]:
            uart = rig.add(SerialState(rig.host))
            uart.region.enable_lockless_io()
            await rig.outb(0x3F9, 0x02)  # IER: THRI raises the line
            await rig.outb(0x3FF, 0x11)  # scratch: no IRQ update, no BQL
            await rig.inb(0x3FA)  # IIR read acknowledges: the line drops
            return [lv for _t, n, lv in rig.irq_log if n == 4], rig.sites()

        levels, sites = simulate(scenario)
        assert levels == [1, 0]
        assert sites == {"serial irq": 2}

    def test_rtc_register_c_read(self) -> None:
        async def scenario(rig: Rig) -> tuple[int, int, dict[str, int]]:
            rtc = rig.add(RTCState(rig.host))
            rtc.region.enable_lockless_io()
            rtc.index_region.enable_lockless_io()
            await cmos_write(rig, 0x0B, 0x12)
            await clock.sleep_ns(NS + 10_000)
            c = await cmos_read(rig, 0x0C)
            return c, rig.level(8), rig.sites()

        c, level, sites = simulate(scenario)
        assert (c, level) == (0x90, 0)
        assert sites == {"rtc irq": 2, "main-loop timers": 1}  # B write lowers, C read lowers


# ---------------------------------------------------------------------------------------------
def test_mtree_matches_the_reference() -> None:
    async def scenario(rig: Rig) -> str:
        pit = rig.add(PITState(rig.host))
        for dev in (SerialState(rig.host), RTCState(rig.host), pit, PCSpkState(rig.host, pit),
                    Port92(rig.host), IOPort80(rig.host), PCIHost(rig.host), I8042(rig.host)):
            if dev is not pit:
                rig.add(dev)
        return mtree_text(rig.space)

    lines = simulate(scenario).splitlines()
    assert lines[0] == "address-space: I/O"
    body = [ln for ln in lines[1:] if ln]
    assert len(body) == 12  # io, 10 device regions, rtc-index
    assert set(body) <= reference_io_lines(), sorted(set(body) - reference_io_lines())


def test_q35_table_matches_the_brief() -> None:
    ids = {(d.slot, d.function): (d.vendor_id, d.device_id) for d in Q35_PCI_DEVICES}
    assert ids == {(0x00, 0): (0x8086, 0x29C0), (0x1F, 0): (0x8086, 0x2918), (0x1F, 2): (0x8086, 0x2922),
                   (0x1F, 3): (0x8086, 0x2930), (0x01, 0): (0x1234, 0x1111), (0x02, 0): (0x8086, 0x10D3)}

"""The interrupt controllers: IOAPIC registers and delivery, the 8259 pair, LAPICs, MSIs, IPIs and
the IRQChip facade for kernel-irqchip=split|on|off, in virtual time with a recording fake vCPU."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from aemu import clock
from aemu.clock import now_ns
from aemu.devices.base import DeviceHost
from aemu.devices.ioapic import IOAPIC, MASKED, REMOTE_IRR, TRIGGER_LEVEL, gsi_lines, redirection_entry
from aemu.devices.lapic import (
    APIC_DEFAULT_ADDRESS,
    IRQChip,
    IRQChipStatistics,
    MSI_REGION_PRIORITY,
    msi_message,
)
from aemu.devices.pic import PIC
from aemu.errors import ConfigError
from aemu.irq import CPU_INTERRUPT_HARD, CPU_INTERRUPT_NMI
from aemu.memory import AddressSpace, MemoryRegion, mtree_text

T = TypeVar("T")

IOAPIC_BASE = 0xFEC00000
IOREGSEL = IOAPIC_BASE
IOWIN = IOAPIC_BASE + 0x10
IOEOI = IOAPIC_BASE + 0x40
IOAPIC_COST = 300  # CostModel handler_ns["ioapic"]
Event = tuple[str, int, int]  # (call, mask or vector, virtual ns)


class FakeVCPU:
    """An InterruptTarget that records what the irqchip asks of it, with the virtual time.

    ``interrupt_request`` changes are logged when a bit actually changes (the PIC drives INTR on
    every state update, as QEMU's ``pic_update_irq`` does); every ``kvm_inject`` is logged.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.interrupt_request = 0
        self.log: list[Event] = []

    def cpu_interrupt(self, mask: int) -> None:
        if ~self.interrupt_request & mask:
            self.log.append(("cpu_interrupt", mask, now_ns()))
        self.interrupt_request |= mask

    def cpu_reset_interrupt(self, mask: int) -> None:
        if self.interrupt_request & mask:
            self.log.append(("cpu_reset_interrupt", mask, now_ns()))
        self.interrupt_request &= ~mask

    def kvm_inject(self, vector: int) -> None:
        self.log.append(("kvm_inject", vector, now_ns()))

    def take_log(self) -> list[Event]:
        log, self.log = self.log, []
        return log


@dataclass
class Rig:
    host: DeviceHost
    vcpus: list[FakeVCPU]
    chip: IRQChip
    mem: AddressSpace
    io: AddressSpace

    async def write_entry(self, pin: int, entry: int) -> None:
        """Program a redirection entry through IOREGSEL/IOWIN, high word first (as Linux does)."""
        for sel, half in ((0x11 + 2 * pin, entry >> 32), (0x10 + 2 * pin, entry & 0xFFFFFFFF)):
            await self.mem.write(IOREGSEL, sel, 4)
            await self.mem.write(IOWIN, half, 4)

    async def ioapic_reg(self, sel: int) -> int:
        await self.mem.write(IOREGSEL, sel, 4)
        value, _ = await self.mem.read(IOWIN, 4)
        return value

    async def entry(self, pin: int) -> int:
        return await self.ioapic_reg(0x10 + 2 * pin) | await self.ioapic_reg(0x11 + 2 * pin) << 32

    async def outb(self, port: int, value: int) -> None:
        await self.io.write(port, value, 1)

    async def inb(self, port: int) -> int:
        value, _ = await self.io.read(port, 1)
        return value

    async def init_pic(self, master_imr: int = 0xFB, slave_imr: int = 0xFF) -> None:
        """The BIOS/Linux sequence: ICW1-4 on both chips (vectors 0x20 and 0x28), then the masks."""
        for base, vec, icw3 in ((0x20, 0x20, 0x04), (0xA0, 0x28, 0x02)):
            for port, val in ((base, 0x11), (base + 1, vec), (base + 1, icw3), (base + 1, 0x01)):
                await self.outb(port, val)
        await self.outb(0x21, master_imr)
        await self.outb(0xA1, slave_imr)


def make_rig(mode: str = "split", ncpus: int = 2, *, pic_masked: bool = True) -> Rig:
    """A chip with its regions mapped; by default the PIC is masked, as firmware leaves it for a
    guest that uses the IOAPIC (at reset its IMR is 0: every ISA IRQ would also reach vCPU 0)."""
    host = DeviceHost()
    vcpus = [FakeVCPU(i) for i in range(ncpus)]
    chip = IRQChip(host, vcpus, mode=mode)
    if pic_masked:
        chip.pic.master.imr = chip.pic.slave.imr = 0xFF
    memory = MemoryRegion.container("system", 1 << 64)
    io = MemoryRegion.container("io", 1 << 16)
    for dev in chip.devices:
        for space, addr, mr in dev.mappings:
            (memory if space == "memory" else io).add_subregion(addr, mr, chip.mapping_priority(mr))
    return Rig(host, vcpus, chip, AddressSpace("memory", memory, bql=host.bql),
               AddressSpace("I/O", io, bql=host.bql, width_bits=16))


def run_locked(rig: Rig, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run ``scenario`` on a virtual-time loop in a task holding the BQL."""

    async def main() -> T:
        async with rig.host.bql.held("test"):
            return await scenario()

    return clock.run(main())


def hard(t: int) -> Event:
    return ("cpu_interrupt", CPU_INTERRUPT_HARD, t)


def hard_reset(t: int) -> Event:
    return ("cpu_reset_interrupt", CPU_INTERRUPT_HARD, t)


# -- IOAPIC registers ----------------------------------------------------------------------------

class TestIOAPICRegisters:
    def test_id_version_arbitration_and_entries(self) -> None:
        rig = make_rig()

        async def scenario() -> None:
            assert await rig.ioapic_reg(0x01) == 0x00170020  # version 0x20, 24 entries
            await rig.mem.write(IOREGSEL, 0x00, 4)
            await rig.mem.write(IOWIN, 0x0F000000, 4)
            assert await rig.ioapic_reg(0x00) == 0x0F000000
            assert await rig.ioapic_reg(0x02) == 0x0F000000  # arbitration ID follows the ID
            assert await rig.entry(5) == MASKED  # reset: masked, everything else 0
            entry = redirection_entry(0x31, dest=1, level=True, active_low=True)
            await rig.write_entry(5, entry | REMOTE_IRR)  # remote IRR is read-only
            assert await rig.entry(5) == entry
            value, _ = await rig.mem.read(IOREGSEL, 4)
            assert value == 0x1B  # IOREGSEL reads back
            value, _ = await rig.mem.read(IOWIN, 2)
            assert value == 0  # IOWIN takes 4-byte accesses only
            await rig.mem.write(IOREGSEL, 0x01, 4)
            await rig.mem.write(IOWIN, 0x12345678, 4)  # version is read-only
            assert await rig.ioapic_reg(0x01) == 0x00170020

        run_locked(rig, scenario)

    def test_each_access_takes_the_bql_and_costs_the_handler(self) -> None:
        rig = make_rig()

        async def main() -> tuple[int, int]:
            await rig.mem.write(IOREGSEL, 0x01, 4)
            value, _ = await rig.mem.read(IOWIN, 4)
            return value, now_ns()

        assert clock.run(main()) == (0x00170020, 2 * IOAPIC_COST)
        assert rig.host.bql.statistics().acquisitions == 2

    def test_version_0x11_has_no_eoi_register(self) -> None:
        with pytest.raises(ConfigError, match="0x11 or 0x20"):
            IOAPIC(DeviceHost(), version=0x12)


# -- IOAPIC delivery -----------------------------------------------------------------------------

class TestIOAPICDelivery:
    def test_edge_split_injects_into_the_in_kernel_lapic(self) -> None:
        rig = make_rig("split")
        cpu0, cpu1 = rig.vcpus

        async def scenario() -> list[int]:
            await rig.write_entry(4, redirection_entry(0x30, dest=1))
            t0 = now_ns()
            line = rig.host.gsi(4)
            line.raise_()
            await clock.sleep_ns(1_000)
            line.lower()
            line.raise_()
            line.raise_()  # QEMU's IOAPIC keeps no input level: every assertion is an edge
            return [t0, t0 + 1_000]

        t0, t1 = run_locked(rig, scenario)
        assert t0 == 4 * IOAPIC_COST
        assert cpu1.log == [("kvm_inject", 0x30, t0), ("kvm_inject", 0x30, t1), ("kvm_inject", 0x30, t1)]
        assert cpu0.log == []
        st = rig.chip.statistics()
        assert (st.delivered, st.msis, st.ioapic_deliveries) == ((0, 3), 3, 3)

    def test_edge_off_sets_hard_and_pre_run_takes_the_vector(self) -> None:
        rig = make_rig("off")
        cpu1 = rig.vcpus[1]

        async def scenario() -> tuple[int, int, int]:
            await rig.write_entry(4, redirection_entry(0x30, dest=1))
            t = now_ns()
            rig.host.gsi(4).pulse()
            # kvm_arch_pre_run, BQL held: clear HARD, ask for the vector, inject it
            cpu1.cpu_reset_interrupt(CPU_INTERRUPT_HARD)
            vector = rig.chip.cpu_get_pic_interrupt(1)
            again = rig.chip.cpu_get_pic_interrupt(1)
            return t, vector, again

        t, vector, again = run_locked(rig, scenario)
        assert (vector, again) == (0x30, -1)
        assert cpu1.log == [hard(t), hard_reset(t)]
        assert rig.chip.lapic(1).isr == 1 << 0x30
        assert rig.vcpus[0].log == []

    def test_masked_pins(self) -> None:
        rig = make_rig("split")
        cpu0 = rig.vcpus[0]

        async def scenario() -> int:
            await rig.write_entry(3, redirection_entry(0x33, masked=True))
            rig.host.gsi(3).pulse()  # an edge on a masked pin is ignored, not latched
            await rig.write_entry(3, redirection_entry(0x33))
            assert cpu0.log == []
            await rig.write_entry(10, redirection_entry(0x3A, level=True, masked=True))
            rig.host.gsi(10).raise_()  # a masked level pin keeps its IRR ...
            assert cpu0.log == []
            await rig.write_entry(10, redirection_entry(0x3A, level=True))  # ... and delivers when unmasked
            return now_ns()

        t = run_locked(rig, scenario)
        assert cpu0.log == [("kvm_inject", 0x3A, t)]

    def test_level_remote_irr_and_eoi(self) -> None:
        rig = make_rig("split")
        cpu0 = rig.vcpus[0]
        lapic = rig.chip.lapic(0)

        async def scenario() -> list[int]:
            await rig.write_entry(9, redirection_entry(0x41, level=True))
            line = rig.host.gsi(9)
            times = [now_ns()]
            line.raise_()
            assert await rig.entry(9) & REMOTE_IRR
            line.lower()
            line.raise_()  # remote IRR set: held back
            assert cpu0.take_log() == [("kvm_inject", 0x41, times[0])]
            assert lapic.eoi_needs_bql(0x41)  # KVM_EXIT_IOAPIC_EOI: QEMU handles it under the BQL
            times.append(now_ns())
            assert lapic.eoi(0x41) == 0x41  # still asserted: delivered again
            assert cpu0.take_log() == [("kvm_inject", 0x41, times[1])]
            line.lower()
            assert lapic.pop_pending() == 0x41  # the guest takes it (KVM's IRR -> ISR)
            assert lapic.eoi() == 0x41  # EOI register: ends the highest in service
            assert not await rig.entry(9) & REMOTE_IRR
            line.raise_()
            times.append(now_ns())
            return times

        times = run_locked(rig, scenario)
        assert cpu0.log == [("kvm_inject", 0x41, times[2])]
        st = rig.chip.statistics()
        assert (st.eois, st.ioapic_eois, st.ioapic_coalesced, st.ioapic_deliveries) == (2, 2, 1, 3)

    def test_interrupt_storm_delays_the_redelivery(self) -> None:
        rig = make_rig("split", ncpus=1)
        cpu0 = rig.vcpus[0]
        lapic = rig.chip.lapic(0)

        async def main() -> None:
            rig.host.main_loop.start()
            async with rig.host.bql.held("test"):
                await rig.write_entry(9, redirection_entry(0x41, level=True))
                rig.host.gsi(9).raise_()
                for _ in range(10_000):  # a guest that EOIs a line it never quiets
                    lapic.eoi(0x41)
            assert len(cpu0.log) == 10_000  # the 10,000th re-delivery waits for a timer
            await clock.sleep_ns(20_000_000)
            await rig.host.main_loop.stop()

        clock.run(main())
        t = 4 * IOAPIC_COST + 10_000_000 + rig.host.costs.timer_cb_ns
        assert cpu0.log[-1] == ("kvm_inject", 0x41, t) and len(cpu0.log) == 10_001

    def test_eoi_register_and_eoi_without_bql(self) -> None:
        rig = make_rig("split")

        async def scenario() -> None:
            await rig.write_entry(11, redirection_entry(0x4B, level=True))
            rig.host.gsi(11).raise_()
            await rig.mem.write(IOEOI, 0x4B, 4)  # the IOAPIC's own EOI register (version 0x20)
            rig.host.gsi(11).lower()

        run_locked(rig, scenario)
        assert [e[:2] for e in rig.vcpus[0].log] == [("kvm_inject", 0x4B)] * 2

        async def unlocked() -> None:
            rig.chip.lapic(0).eoi(0x4B)

        with pytest.raises(RuntimeError, match="KVM_EXIT_IOAPIC_EOI"):
            clock.run(unlocked())

    def test_broadcast_and_logical_destinations(self) -> None:
        rig = make_rig("split", ncpus=4)

        async def scenario() -> None:
            await rig.write_entry(16, redirection_entry(0x60, dest=0xFF))
            await rig.write_entry(17, redirection_entry(0x61, dest=0b0101, logical=True))
            await rig.write_entry(18, redirection_entry(0x62, dest=0b0110, logical=True, delivery_mode=1))
            await rig.write_entry(19, redirection_entry(0x63, dest=7))  # no such APIC ID
            for gsi in (16, 17, 18, 19):
                rig.host.gsi(gsi).pulse()

        run_locked(rig, scenario)
        got = [[v for call, v, _ in cpu.log if call == "kvm_inject"] for cpu in rig.vcpus]
        assert got == [[0x60, 0x61], [0x60, 0x62], [0x60, 0x61], [0x60]]
        assert rig.chip.statistics().dropped == 1

    def test_isa_irq0_arrives_on_ioapic_pin_2(self) -> None:
        rig = make_rig("split")
        cpu0 = rig.vcpus[0]

        async def scenario() -> tuple[int, int]:
            await rig.init_pic(master_imr=0xFF)  # the PIC is masked, as with an IOAPIC-driven guest
            await rig.write_entry(0, redirection_entry(0x70))  # pin 0 is never used for ISA IRQ0
            await rig.write_entry(2, redirection_entry(0x50))
            t = now_ns()
            rig.host.gsi(0).pulse()
            await rig.outb(0x20, 0x0A)  # OCW3: read IRR
            return t, await rig.inb(0x20)

        t, pic_irr = run_locked(rig, scenario)
        assert cpu0.log == [("kvm_inject", 0x50, t)]
        assert pic_irr == 0x01  # ... and PIC pin 0 saw the same edge


# -- the 8259 pair -------------------------------------------------------------------------------

class TestPIC:
    def test_init_mask_interrupt_and_eoi(self) -> None:
        rig = make_rig("split")
        cpu0 = rig.vcpus[0]
        chip = rig.chip

        async def scenario() -> list[int]:
            await rig.init_pic(master_imr=0xF9)  # IRQ1 and the cascade unmasked
            assert await rig.inb(0x21) == 0xF9
            rig.host.gsi(3).pulse()  # masked
            assert cpu0.take_log() == []
            t = now_ns()
            rig.host.gsi(1).pulse()
            assert cpu0.take_log() == [hard(t)]
            cpu0.cpu_reset_interrupt(CPU_INTERRUPT_HARD)  # kvm_arch_pre_run
            vector = chip.cpu_get_pic_interrupt(0)
            assert cpu0.take_log() == [hard_reset(t)]
            await rig.outb(0x20, 0x0B)  # OCW3: read ISR
            isr = await rig.inb(0x20)
            await rig.outb(0x20, 0x0A)  # OCW3: read IRR
            irr = await rig.inb(0x20)
            await rig.outb(0x20, 0x20)  # OCW2: non-specific EOI
            await rig.outb(0x20, 0x0B)
            isr_after = await rig.inb(0x20)
            await rig.outb(0x21, 0xF1)  # unmask IRQ3: its edge was latched in IRR
            t3 = now_ns()
            vector3 = chip.cpu_get_pic_interrupt(0)
            await rig.outb(0x20, 0x63)  # OCW2: specific EOI for IRQ3
            return [vector, isr, irr, isr_after, t3, vector3, chip.pic.master.isr]

        vector, isr, irr, isr_after, t3, vector3, isr3 = run_locked(rig, scenario)
        assert (vector, isr, irr, isr_after) == (0x21, 0x02, 0x08, 0x00)
        assert cpu0.log == [hard(t3), hard_reset(t3)]
        assert (vector3, isr3) == (0x23, 0)

    def test_cascade_through_the_slave(self) -> None:
        rig = make_rig("split")
        cpu0 = rig.vcpus[0]

        async def scenario() -> tuple[int, int, int, int]:
            await rig.init_pic(master_imr=0xFB, slave_imr=0xEF)  # IRQ12 (slave pin 4)
            t = now_ns()
            rig.host.gsi(12).pulse()
            assert cpu0.take_log() == [hard(t)]
            vector = rig.chip.cpu_get_pic_interrupt(0)
            pic = rig.chip.pic
            in_service = (pic.master.isr, pic.slave.isr)
            await rig.outb(0xA0, 0x20)
            await rig.outb(0x20, 0x20)
            return vector, *in_service, pic.master.isr | pic.slave.isr

        assert run_locked(rig, scenario) == (0x2C, 0x04, 0x10, 0)

    def test_spurious_vectors(self) -> None:
        rig = make_rig("split")

        async def scenario() -> tuple[int, int]:
            await rig.init_pic(master_imr=0xDB, slave_imr=0xFB)  # IRQ5, cascade, IRQ10
            await rig.outb(0x4D0, 0x20)  # ELCR: IRQ5 and IRQ10 level-triggered
            await rig.outb(0x4D1, 0x04)
            assert (await rig.inb(0x4D0), await rig.inb(0x4D1)) == (0x20, 0x04)
            for gsi in (5, 10):
                rig.host.gsi(gsi).raise_()
                rig.host.gsi(gsi).lower()  # gone before the CPU acknowledged it
            # IRQ5's request vanished with the line; the cascade input is edge-triggered, so the
            # master still asks for IRQ2 and finds nothing on the slave
            slave_spurious = rig.chip.cpu_get_pic_interrupt(0)
            master_spurious = rig.chip.cpu_get_pic_interrupt(0)
            return master_spurious, slave_spurious

        assert run_locked(rig, scenario) == (0x27, 0x2F)
        assert rig.chip.statistics().pic_spurious == 2

    def test_elcr_keeps_fixed_edge_pins(self) -> None:
        rig = make_rig("split")

        async def scenario() -> tuple[int, int]:
            await rig.outb(0x4D0, 0xFF)
            await rig.outb(0x4D1, 0xFF)
            return await rig.inb(0x4D0), await rig.inb(0x4D1)

        assert run_locked(rig, scenario) == (0xF8, 0xDE)  # IRQ0-2, 8 and 13 are always edge

    def test_pic_read_needs_the_bql(self) -> None:
        rig = make_rig("split")

        async def unlocked() -> int:
            rig.chip.pic.set_irq(1, 1)  # the master's INTR is an IRQ line too
            return 0

        with pytest.raises(RuntimeError, match="without the BQL"):
            clock.run(unlocked())


# -- kernel-irqchip=on ---------------------------------------------------------------------------

class TestInKernelIrqchip:
    def test_pic_and_ioapic_inject_directly(self) -> None:
        rig = make_rig("on")
        cpu0, cpu1 = rig.vcpus
        chip = rig.chip

        async def scenario() -> int:
            for val in (0x11, 0x30, 0x04, 0x01, 0xFD):  # KVM's PIC: programmed without QEMU
                chip.pic.master.write(0 if val == 0x11 else 1, val)
            for pin, entry in ((5, redirection_entry(0x55, dest=1, level=True)), (6, redirection_entry(0x56, dest=1))):
                chip.ioapic.write_entry(pin, entry >> 32, high=True)
                chip.ioapic.write_entry(pin, entry & 0xFFFFFFFF, high=False)
            t = now_ns()
            rig.host.gsi(1).pulse()  # device side: still an IRQ line under the BQL
            rig.host.gsi(5).raise_()
            rig.host.gsi(6).raise_()
            rig.host.gsi(6).raise_()  # KVM's IOAPIC sees rising edges only
            return t

        t = run_locked(rig, scenario)
        assert cpu0.log == [("kvm_inject", 0x31, t)]
        assert cpu1.log == [("kvm_inject", 0x55, t), ("kvm_inject", 0x56, t)]
        lapic1 = chip.lapic(1)
        assert not lapic1.eoi_needs_bql(0x55)

        async def eoi_without_bql() -> int:
            return lapic1.eoi(0x55)  # KVM's IOAPIC: no exit, no BQL

        assert clock.run(eoi_without_bql()) == 0x55
        assert chip.cpu_get_pic_interrupt(0) == -1
        assert [d.name for d in chip.devices] == ["kvm-apic[0]"]
        assert [mr.name for _, _, mr in chip.devices[0].mappings] == ["kvm-apic-msi"]


# -- MSIs, IPIs, the LAPIC -----------------------------------------------------------------------

class TestMSIAndIPI:
    def test_msi_write_split(self) -> None:
        rig = make_rig("split")

        async def scenario() -> tuple[int, int]:
            address, data = msi_message(1, 0x45)
            assert address == APIC_DEFAULT_ADDRESS | 1 << 12
            await rig.mem.write(address, data, 4)
            t = now_ns()
            value, _ = await rig.mem.read(APIC_DEFAULT_ADDRESS, 4)
            return t, value

        t, value = run_locked(rig, scenario)
        assert rig.vcpus[1].log == [("kvm_inject", 0x45, t)]
        assert t == 300  # the apic-msi handler cost
        assert value == 0xFFFFFFFF  # kvm_apic_mem_read
        assert rig.chip.statistics().msis == 1

    def test_msi_and_register_window_off(self) -> None:
        rig = make_rig("off")
        cpu1 = rig.vcpus[1]
        chip = rig.chip
        current: list[int | None] = [None]
        chip.current_cpu = lambda: current[0]

        async def scenario() -> list[int]:
            await rig.write_entry(6, redirection_entry(0x46, dest=1, level=True))
            rig.host.gsi(6).raise_()
            cpu1.cpu_reset_interrupt(CPU_INTERRUPT_HARD)
            vector = chip.cpu_get_pic_interrupt(1)
            unknown, _ = await rig.mem.read(APIC_DEFAULT_ADDRESS + 0x20, 4)
            current[0] = 1
            apic_id, _ = await rig.mem.read(APIC_DEFAULT_ADDRESS + 0x20, 4)
            isr1, _ = await rig.mem.read(APIC_DEFAULT_ADDRESS + 0x100 + 0x10 * (0x46 // 32), 4)
            rig.host.gsi(6).lower()
            await rig.mem.write(APIC_DEFAULT_ADDRESS + 0xB0, 0, 4)  # EOI register: level -> IOAPIC
            remote_irr = await rig.entry(6) & REMOTE_IRR
            address, data = msi_message(0, 0x47)
            await rig.mem.write(address, data, 4)  # offset 0: an MSI even in the register page
            return [vector, unknown, apic_id, isr1, remote_irr, chip.cpu_get_pic_interrupt(0)]

        assert run_locked(rig, scenario) == [0x46, 0, 1 << 24, 1 << (0x46 % 32), 0, 0x47]
        assert chip.statistics().ioapic_eois == 1
        assert [mr.name for _, _, mr in chip.bsp.mappings] == ["apic-msi"]

    def test_ipi_split_costs_ipi_ns_without_the_bql(self) -> None:
        rig = make_rig("split", ncpus=3)

        async def main() -> None:
            await rig.chip.lapic(0).send_ipi(2, 0xF0)
            await rig.chip.lapic(1).send_ipi(0, 0xF1, shorthand=3)  # all excluding self

        clock.run(main())
        ipi = rig.host.costs.ipi_ns
        assert rig.vcpus[2].log == [("kvm_inject", 0xF0, ipi), ("kvm_inject", 0xF1, 2 * ipi)]
        assert rig.vcpus[0].log == [("kvm_inject", 0xF1, 2 * ipi)]
        assert rig.vcpus[1].log == []
        assert rig.host.bql.statistics().acquisitions == 0
        assert rig.chip.statistics().ipis == 2

    def test_ipi_off_takes_the_bql(self) -> None:
        rig = make_rig("off")

        async def main() -> None:
            await rig.chip.lapic(0).send_ipi(1, 0xF0)
            await rig.chip.lapic(0).send_ipi(1, 0, delivery_mode=4)  # NMI

        clock.run(main())
        costs = rig.host.costs
        t = costs.mmio_exit_ns + costs.handler("apic-msi")
        assert rig.vcpus[1].log == [hard(t), ("cpu_interrupt", CPU_INTERRUPT_NMI, 2 * t)]
        assert rig.host.bql.statistics().acquisitions == 2

    def test_chip_eoi_takes_the_bql_only_through_qemu(self) -> None:
        rig = make_rig("split")
        chip = rig.chip

        async def program() -> None:
            async with rig.host.bql.held("test"):
                await rig.write_entry(9, redirection_entry(0x41, level=True))
                rig.host.gsi(9).raise_()
                rig.host.gsi(9).lower()
            chip.lapic(0).deliver(0x42)  # an edge vector (an MSI)

        async def main() -> tuple[int, int, int, int]:
            await program()
            before = rig.host.bql.statistics().acquisitions
            t = now_ns()
            edge = await chip.eoi(0, 0x42)  # handled in KVM: no BQL, no time
            level = await chip.eoi(0, 0x41)  # KVM_EXIT_IOAPIC_EOI: the BQL, the ioapic handler
            result = edge, level, rig.host.bql.statistics().acquisitions - before, now_ns() - t
            chip.send_ipi(1, 0, 0xF2)  # the synchronous form: delivery only
            return result

        assert clock.run(main()) == (0x42, 0x41, 1, IOAPIC_COST)
        assert rig.vcpus[0].log[-1] == ("kvm_inject", 0xF2, IOAPIC_COST + 4 * IOAPIC_COST)

    def test_lapic_priority_and_spurious(self) -> None:
        rig = make_rig("off")
        lapic = rig.chip.lapic(1)

        async def scenario() -> list[int]:
            lapic.deliver(0x51)
            got = [lapic.pop_pending()]  # 0x51 in service
            lapic.deliver(0x52)  # same priority class: blocked
            got.append(lapic.pop_pending())
            lapic.deliver(0x61)  # higher class: taken
            got.append(lapic.pop_pending())
            got += [lapic.eoi(), lapic.eoi(), lapic.pop_pending(), lapic.eoi(), lapic.eoi()]
            return got

        assert run_locked(rig, scenario) == [0x51, 0xFF, 0x61, 0x61, 0x51, 0x52, 0x52, -1]


# -- wiring, the BQL rule, the facade ------------------------------------------------------------

class TestWiring:
    def test_irq_line_without_the_bql_raises(self) -> None:
        rig = make_rig("split")

        async def main() -> None:
            rig.host.gsi(4).raise_()

        with pytest.raises(RuntimeError, match="'gsi4' set without the BQL"):
            clock.run(main())

    def test_gsi_lines_standalone(self) -> None:
        host = DeviceHost()
        cpu = FakeVCPU(0)
        pic = PIC(host, cpu)
        sent: list[tuple[int, int]] = []
        ioapic = IOAPIC(host, lambda a, d: sent.append((a, d)), pic=pic)
        lines = gsi_lines(host, ioapic, pic)
        assert [line.name for line in lines] == [f"gsi{n}" for n in range(24)]
        assert host.gsi(23) is lines[23]
        ioapic.write_entry(20, redirection_entry(0x90, dest=3, level=True), high=False)
        ioapic.write_entry(20, redirection_entry(0x90, dest=3) >> 32, high=True)

        async def main() -> None:
            async with host.bql.held("test"):
                lines[20].raise_()

        clock.run(main())
        assert sent == [msi_message(3, 0x90, level=True)]

    def test_mtree_names_and_priorities(self) -> None:
        rig = make_rig("split")
        io = mtree_text(rig.io)
        mem = mtree_text(rig.mem)
        assert "0000000000000020-0000000000000021 (prio 0, i/o): pic" in io
        assert "00000000000000a0-00000000000000a1 (prio 0, i/o): pic" in io
        assert "00000000000004d0-00000000000004d0 (prio 0, i/o): elcr" in io
        assert "00000000000004d1-00000000000004d1 (prio 0, i/o): elcr" in io
        assert "00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic" in mem
        assert f"00000000fee00000-00000000feefffff (prio {MSI_REGION_PRIORITY}, i/o): kvm-apic-msi" in mem

    def test_program_like_linux(self) -> None:
        rig = make_rig("split", pic_masked=False)
        rig.chip.program_like_linux(dest=1)

        async def scenario() -> tuple[int, int]:
            for gsi in (0, 4):  # edge: the PIT (ISA IRQ0) and the serial port
                rig.host.gsi(gsi).pulse()
            for gsi in (9, 20):  # level: the SCI and a PCI INTx line
                rig.host.gsi(gsi).raise_()
            return now_ns(), await rig.ioapic_reg(0x10 + 2 * 9)

        t, sci_low = run_locked(rig, scenario)
        assert rig.vcpus[1].log == [("kvm_inject", v, t) for v in (0x30, 0x34, 0x39, 0x44)]
        assert rig.vcpus[0].log == []  # the PIC is masked: no CPU_INTERRUPT_HARD
        assert sci_low == 0x39 | TRIGGER_LEVEL | REMOTE_IRR

    def test_bad_configurations(self) -> None:
        with pytest.raises(ConfigError, match="kernel-irqchip='auto'"):
            IRQChip(DeviceHost(), [FakeVCPU(0)], mode="auto")
        with pytest.raises(ConfigError, match="at least one vCPU"):
            IRQChip(DeviceHost(), [])
        with pytest.raises(ConfigError, match="unique"):
            IRQChip(DeviceHost(), [FakeVCPU(0), FakeVCPU(0)])

    def test_statistics_are_frozen(self) -> None:
        st = make_rig("off", ncpus=3).chip.statistics()
        assert isinstance(st, IRQChipStatistics)
        assert (st.mode, st.delivered) == ("off", (0, 0, 0))
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.msis = 1  # type: ignore[misc]

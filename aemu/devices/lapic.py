"""Local APICs and the machine's interrupt controllers as one piece: :class:`LAPIC`, :class:`IRQChip`.

:class:`IRQChip` is the irqchip a q35 machine gets for ``-accel kvm,kernel-irqchip=MODE``; it builds
the :class:`~aemu.devices.ioapic.IOAPIC`, the :class:`~aemu.devices.pic.PIC` and one
:class:`LAPIC` per vCPU, wires the 24 GSIs (``host.gsi(n)``) and lists in ``devices`` what lives in
userspace and has regions to map:

* ``split``: LAPICs in KVM; IOAPIC and PIC in QEMU -- regions ``ioapic``, ``pic``, ``elcr``,
  ``kvm-apic-msi``;
* ``on``: everything in KVM -- only ``kvm-apic-msi``;
* ``off``: everything in QEMU -- ``ioapic``, ``pic``, ``elcr``, ``apic-msi``.

How an interrupt reaches a vCPU (the :class:`aemu.irq.InterruptTarget` protocol), and what the
vCPU does about it:

* LAPIC in KVM (``split``/``on``): :meth:`LAPIC.deliver` records the vector in IRR and calls
  ``vcpu.kvm_inject(vector)`` -- KVM injects it at the next guest entry and wakes the vCPU from
  HLT, without QEMU and without the BQL.
* userspace LAPIC (``off``): :meth:`LAPIC.deliver` records the vector and sets
  ``CPU_INTERRUPT_HARD`` (``apic_update_irq``).
* PIC (``split``/``off``): INTR sets/clears ``CPU_INTERRUPT_HARD`` on the BSP (vCPU 0). With
  ``on`` KVM's PIC injects into the BSP with ``kvm_inject``.
* On ``CPU_INTERRUPT_HARD`` the vCPU, in ``kvm_arch_pre_run`` with the BQL held, clears the bit and
  calls :meth:`IRQChip.cpu_get_pic_interrupt` (userspace LAPIC first, then the PIC) and injects
  the vector it returns (KVM_INTERRUPT); the chip sets the bit again if more is pending.
* When the guest ends an interrupt it calls :meth:`IRQChip.eoi` (``await``): it takes the BQL
  only when the EOI goes through QEMU (a level-triggered vector from a userspace IOAPIC, or any
  EOI of a userspace LAPIC). IPIs: :meth:`LAPIC.send_ipi` (charges the exit) or
  :meth:`IRQChip.send_ipi` (delivery only).

The MSI window at 0xfee00000 (0x100000 bytes, mapped with priority 0x1000 over the rest of
memory, as ``apic_common_realize`` maps the BSP's region) takes the BQL like any region. A 4-byte
write of ``data`` at ``0xfee00000 | dest << 12 | dest_mode << 2`` sends an MSI. With the LAPIC in
KVM it is QEMU's ``kvm-apic-msi`` (``kvm_apic_mem_write`` -> ``kvm_send_msi``; reads return
all-ones). With the userspace LAPIC it is ``apic-msi`` (``apic_mem_write``): writes above 0xfff, or
at offset 0, are MSIs; below that they reach the xAPIC registers of the *current* vCPU
(``IRQChip.current_cpu``; only ID, version, ISR/TMR/IRR, EOI and ICR are modelled) and reads
return those registers (0 when the current vCPU is unknown).

Destinations: physical mode names an APIC ID, and the APIC ID of a vCPU is its index; 0xff is a
broadcast in either mode. Logical mode is the flat model with logical ID ``1 << index``, so the
destination byte is a bitmask of vCPUs 0-7 (clustered mode and x2APIC are not modelled).
Lowest-priority delivery picks the lowest APIC ID among the destinations (every vCPU has the same
task priority here, which is where QEMU's ``apic_lowest_prio`` ends up). NMI, SMI, INIT and SIPI set
``CPU_INTERRUPT_NMI``/``SMI``/``INIT``/``SIPI`` with the userspace LAPIC; with the LAPIC in KVM an
NMI is ``kvm_inject(2)`` and SMI/INIT/SIPI are counted in ``unmodelled``.

Note: QEMU itself refuses a userspace APIC under KVM ("KVM does not support userspace APIC");
mode ``off`` models the userspace-LAPIC path of hw/intc/apic.c as a what-if, driven through the
userspace-irqchip branch of ``kvm_arch_pre_run``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..irq import (
    CPU_INTERRUPT_HARD,
    CPU_INTERRUPT_INIT,
    CPU_INTERRUPT_NMI,
    CPU_INTERRUPT_SIPI,
    CPU_INTERRUPT_SMI,
    IRQLine,
    InterruptTarget,
)
from ..memory import MemoryRegion
from .base import Device, DeviceHost
from .ioapic import (
    DM_EXTINT,
    DM_FIXED,
    DM_INIT,
    DM_LOWEST,
    DM_NMI,
    DM_SMI,
    IOAPIC,
    gsi_lines,
    redirection_entry,
)
from .pic import PIC

__all__ = [
    "APIC_DEFAULT_ADDRESS", "APIC_SPACE_SIZE", "IRQCHIP_MODES", "IRQChip", "IRQChipStatistics",
    "LAPIC", "MSI_REGION_PRIORITY", "msi_message",
]

APIC_DEFAULT_ADDRESS = 0xFEE00000
APIC_SPACE_SIZE = 0x100000
#: ``memory_region_add_subregion_overlap(..., 0x1000)`` in apic_common_realize (``info mtree``: prio 4096)
MSI_REGION_PRIORITY = 0x1000
#: ``-accel kvm,kernel-irqchip=`` values
IRQCHIP_MODES = ("split", "on", "off")

APIC_VERSION = 0x14
_APIC_LVT_NB = 6
SPURIOUS_VECTOR = 0xFF
BROADCAST = 0xFF
NMI_VECTOR = 2
DM_SIPI = 6

# ICR destination shorthands
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3

# xAPIC register indices ((offset >> 4) in the APIC page)
_REG_ID, _REG_VERSION, _REG_EOI = 0x02, 0x03, 0x0B
_REG_ISR, _REG_TMR, _REG_IRR = 0x10, 0x18, 0x20
_REG_ICR_LO, _REG_ICR_HI = 0x30, 0x31

_SITE_MSI = "apic-msi"
#: what a userspace LAPIC raises for the delivery modes that carry no vector
_CPU_INTERRUPT_FOR = {DM_SMI: CPU_INTERRUPT_SMI, DM_INIT: CPU_INTERRUPT_INIT, DM_SIPI: CPU_INTERRUPT_SIPI}


def msi_message(dest: int, vector: int, *, logical: bool = False, delivery_mode: int = DM_FIXED,
                level: bool = False) -> tuple[int, int]:
    """``(address, data)`` of an MSI (include/hw/i386/apic-msidef.h layout)."""
    address = APIC_DEFAULT_ADDRESS | (dest & 0xFF) << 12 | int(logical) << 2
    data = (vector & 0xFF) | (delivery_mode & 7) << 8 | int(level) << 15
    return address, data


class LAPIC(Device):
    """One vCPU's local APIC: IRR/ISR/TMR as 256-bit masks (higher vector = higher priority).

    ``in_kernel`` is KVM's LAPIC (``kernel-irqchip=split|on``): no BQL, no userspace exit,
    deliveries go to ``vcpu.kvm_inject``. Otherwise it is QEMU's ``apic`` (``kernel-irqchip=off``):
    deliveries set ``CPU_INTERRUPT_HARD`` and the vCPU takes them with :meth:`pop_pending`.
    """

    type_name = "apic"

    def __init__(self, host: DeviceHost, cpu: InterruptTarget, chip: IRQChip, *, in_kernel: bool) -> None:
        kind = "kvm-apic" if in_kernel else "apic"
        super().__init__(host, f"{kind}[{cpu.index}]")
        self.cpu = cpu
        self.chip = chip
        self.in_kernel = in_kernel
        self.apic_id = cpu.index
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.icr = [0, 0]
        #: LVT0 in ExtINT mode (virtual wire): the PIC's INTR reaches this CPU (the BSP)
        self.accepts_pic = False
        #: vectors accepted, EOIs, IPIs sent
        self.delivered = 0
        self.eois = 0
        self.ipis_sent = 0

    # -- accepting interrupts ----------------------------------------------------------------------
    def deliver(self, vector: int, trigger_level: bool = False) -> None:
        """Accept ``vector`` (``apic_set_irq``): IRR (and TMR for level), then notify the vCPU."""
        bit = 1 << (vector & 0xFF)
        self.irr |= bit
        if trigger_level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self.delivered += 1
        if self.in_kernel:
            self.cpu.kvm_inject(vector & 0xFF)
        else:
            self.update_irq()

    def deliver_nmi(self) -> None:
        """An NMI for this CPU (``CPU_INTERRUPT_NMI``, or KVM's own NMI injection)."""
        self.delivered += 1
        if self.in_kernel:
            self.cpu.kvm_inject(NMI_VECTOR)
        else:
            self.cpu.cpu_interrupt(CPU_INTERRUPT_NMI)

    def irq_pending(self) -> int:
        """``apic_irq_pending``: 0 if IRR is empty, -1 if blocked by the in-service priority, else the vector."""
        irr = self.irr
        if not irr:
            return 0
        irrv = irr.bit_length() - 1
        isr = self.isr
        ppr = (isr.bit_length() - 1) & 0xF0 if isr else 0  # the task priority is taken as 0
        if ppr and (irrv & 0xF0) <= ppr:
            return -1
        return irrv

    def update_irq(self) -> None:
        """``apic_update_irq`` (userspace LAPIC): HARD while something can be taken (or the PIC asserts)."""
        if self.in_kernel:
            return
        if self.irq_pending() > 0:
            self.cpu.cpu_interrupt(CPU_INTERRUPT_HARD)
        elif not (self.accepts_pic and self.chip.pic.output()):
            self.cpu.cpu_reset_interrupt(CPU_INTERRUPT_HARD)

    def deliver_pic_intr(self, level: int) -> None:
        """``apic_deliver_pic_intr`` with LVT0 in ExtINT mode: the PIC's INTR changed."""
        if level:
            self.cpu.cpu_interrupt(CPU_INTERRUPT_HARD)
        else:
            self.update_irq()

    def pop_pending(self) -> int:
        """``apic_get_interrupt``: move the best IRR vector to ISR and return it.

        -1 if nothing can be taken (or, on the BSP of a userspace LAPIC, the PIC asserts INTR:
        the caller reads the PIC first, as ExtINT ignores priorities); the spurious vector 0xff
        if IRR holds only vectors blocked by the one in service. With the LAPIC in KVM this is
        the IRR-to-ISR move KVM does when it injects; a vCPU calls it when the guest takes the
        interrupt, so that :meth:`eoi` finds it in service.
        """
        intno = self.irq_pending()
        if intno == 0:
            return -1
        if not self.in_kernel and self.accepts_pic and self.chip.pic.output():
            self.cpu.cpu_interrupt(CPU_INTERRUPT_HARD)
            return -1
        if intno < 0:
            return SPURIOUS_VECTOR
        bit = 1 << intno
        self.irr &= ~bit
        self.isr |= bit
        self.update_irq()
        return intno

    # -- end of interrupt --------------------------------------------------------------------------
    def eoi(self, vector: int | None = None) -> int:
        """A write to the EOI register (``apic_eoi``): end the highest in-service vector.

        With ``vector`` given, end that one; a vector KVM injected that was never taken with
        :meth:`pop_pending` counts as in service. A level-triggered vector is broadcast to the
        IOAPIC (``ioapic_eoi_broadcast``): for a userspace IOAPIC that needs the BQL (see
        :meth:`eoi_needs_bql`). Returns the vector ended, or -1 if none was in service.
        """
        if vector is None:
            if not self.isr:
                return -1
            vector = self.isr.bit_length() - 1
            self.isr &= ~(1 << vector)
        else:
            bit = 1 << (vector & 0xFF)
            if self.isr & bit:
                self.isr &= ~bit
            elif self.irr & bit:
                self.irr &= ~bit
            else:
                return -1
        self.eois += 1
        if self.tmr >> vector & 1:
            self.chip.eoi_broadcast(vector)
        self.update_irq()
        return vector

    def eoi_needs_bql(self, vector: int | None = None) -> bool:
        """Whether the EOI of ``vector`` (default: the highest in service) goes through QEMU.

        Always with a userspace LAPIC (an MMIO exit into ``apic-msi``); with KVM's LAPIC only for a
        level-triggered vector from a userspace IOAPIC (KVM_EXIT_IOAPIC_EOI, split irqchip).
        """
        if not self.in_kernel:
            return True
        if self.chip.ioapic.in_kernel:
            return False
        if vector is None:
            vector = self.isr.bit_length() - 1 if self.isr else -1
        return vector >= 0 and bool(self.tmr >> vector & 1)

    # -- IPIs --------------------------------------------------------------------------------------
    async def send_ipi(self, dest: int, vector: int, *, dest_mode: int = 0, delivery_mode: int = DM_FIXED,
                       shorthand: int = SH_NONE, level: bool = False) -> None:
        """The guest writes the ICR: send an IPI, paying for the exit.

        LAPIC in KVM: ``costs.ipi_ns`` (an ICR-write exit handled in the kernel, no BQL); the
        sender's run-ahead time is synced first so the target sees the IPI at the sender's time.
        Userspace LAPIC: an MMIO exit (``costs.mmio_exit_ns``) then the ``apic-msi`` handler under
        the BQL (taken here unless the caller holds it).
        """
        host = self.host
        if self.in_kernel:
            await host.delay(host.costs.ipi_ns)
            keeper = host.keeper()
            if keeper is not None and keeper.offset_ns:
                await keeper.sync()
            self.send_icr(dest, vector, dest_mode, delivery_mode, shorthand, level)
            return
        await host.delay(host.costs.mmio_exit_ns)
        async with host.bql_guard("apic_mem_write ICR"):
            await host.delay(host.costs.handler(_SITE_MSI))
            self.send_icr(dest, vector, dest_mode, delivery_mode, shorthand, level)

    def send_icr(self, dest: int, vector: int, dest_mode: int = 0, delivery_mode: int = DM_FIXED,
                 shorthand: int = SH_NONE, level: bool = False) -> None:
        """``apic_deliver``: the delivery an ICR write makes, without costs."""
        chip = self.chip
        if shorthand == SH_NONE:
            targets = chip.destinations(dest, dest_mode)
        elif shorthand == SH_SELF:
            targets = [self]
        elif shorthand == SH_ALL:
            targets = chip.lapics
        else:
            targets = [lapic for lapic in chip.lapics if lapic is not self]
        self.ipis_sent += 1
        chip.ipis += 1
        chip.bus_deliver(targets, delivery_mode, vector, level)

    # -- xAPIC registers (userspace LAPIC, reached through apic-msi) -------------------------------
    def register_read(self, index: int) -> int:
        """``apic_register_read`` for the modelled registers (others read 0)."""
        if index == _REG_ID:
            return (self.apic_id & 0xFF) << 24
        if index == _REG_VERSION:
            return APIC_VERSION | (_APIC_LVT_NB - 1) << 16
        for base, bits in ((_REG_ISR, self.isr), (_REG_TMR, self.tmr), (_REG_IRR, self.irr)):
            if base <= index < base + 8:
                return (bits >> (32 * (index - base))) & 0xFFFFFFFF
        if index == _REG_ICR_LO:
            return self.icr[0]
        if index == _REG_ICR_HI:
            return self.icr[1]
        return 0

    def register_write(self, index: int, val: int) -> None:
        """``apic_register_write`` for the modelled registers: EOI and the ICR (others ignored)."""
        if index == _REG_EOI:
            self.eoi()
        elif index == _REG_ICR_LO:
            self.icr[0] = val & 0xFFFFFFFF
            icr = self.icr[0]
            self.send_icr(self.icr[1] >> 24, icr & 0xFF, (icr >> 11) & 1, (icr >> 8) & 7,
                          (icr >> 18) & 3, bool(icr >> 15 & 1))
        elif index == _REG_ICR_HI:
            self.icr[1] = val & 0xFFFFFFFF

    def __repr__(self) -> str:
        return (f"<LAPIC {self.name!r} irr={_vectors(self.irr)} isr={_vectors(self.isr)} "
                f"delivered={self.delivered}>")


@dataclass(frozen=True, slots=True)
class IRQChipStatistics:
    """A snapshot of the irqchip's counters."""

    mode: str
    #: vectors accepted per vCPU (in vCPU order): LAPIC deliveries, plus PIC vectors on the BSP
    delivered: tuple[int, ...]
    #: MSIs sent (IOAPIC messages and writes to the MSI window)
    msis: int
    #: LAPIC EOIs, and those broadcast to the IOAPIC (level-triggered vectors)
    eois: int
    ioapic_eois: int
    ipis: int
    #: vectors handed out by the PIC (``pic_read_irq``), spurious ones among them
    pic_acks: int
    pic_spurious: int
    #: IOAPIC messages, and level deliveries held back by remote IRR
    ioapic_deliveries: int
    ioapic_coalesced: int
    #: messages whose destination named no vCPU; in-kernel SMI/INIT/SIPI not modelled
    dropped: int
    unmodelled: int


class IRQChip:
    """IOAPIC + PIC + one LAPIC per vCPU for ``kernel-irqchip=mode`` (see the module docstring).

    ``vcpus`` implement :class:`aemu.irq.InterruptTarget`; their ``index`` is their APIC ID and
    the vCPU with index 0 is the BSP. Connects ``host.gsi(0..23)``.
    """

    def __init__(self, host: DeviceHost, vcpus: Sequence[InterruptTarget], mode: str = "split") -> None:
        if mode not in IRQCHIP_MODES:
            raise ConfigError(f"kernel-irqchip={mode!r} is not supported; use one of {', '.join(IRQCHIP_MODES)}")
        cpus = list(vcpus)
        if not cpus:
            raise ConfigError("an irqchip needs at least one vCPU")
        ids = [c.index for c in cpus]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"vCPU indexes (APIC IDs) must be unique, got {ids}")
        self.host = host
        self.mode = mode
        self.vcpus = cpus
        kernel_lapic = mode != "off"
        kernel_chips = mode == "on"
        bsp_cpu = next((c for c in cpus if c.index == 0), cpus[0])
        self.pic = PIC(host, bsp_cpu, in_kernel=kernel_chips)
        self.ioapic = IOAPIC(host, self.send_msi, pic=self.pic, in_kernel=kernel_chips)
        self.lapics = [LAPIC(host, cpu, self, in_kernel=kernel_lapic) for cpu in cpus]
        self._by_id = {lapic.apic_id: lapic for lapic in self.lapics}
        self.bsp = self._by_id[bsp_cpu.index]
        self.bsp.accepts_pic = True
        if mode == "off":
            self.pic.cpu_intr = self.bsp.deliver_pic_intr
        #: the 24 GSI lines (also ``host.gsi(n)``)
        self.gsi: list[IRQLine] = gsi_lines(host, self.ioapic, self.pic)
        self._msi_cost = host.costs.handler(_SITE_MSI)
        self.msi_region: MemoryRegion = self.bsp.region_io(
            "kvm-apic-msi" if kernel_lapic else "apic-msi", APIC_SPACE_SIZE, self._msi_read, self._msi_write)
        self.bsp.map_mmio(APIC_DEFAULT_ADDRESS, self.msi_region)
        #: the devices whose ``mappings`` the machine maps (see :meth:`mapping_priority`)
        self.devices: list[Device] = [d for d in (self.ioapic, self.pic, self.bsp) if d.mappings]
        #: ``current_cpu`` for the userspace LAPIC's register window: the accessing vCPU's index
        self.current_cpu: Callable[[], int | None] | None = None
        self.msis = 0
        self.ipis = 0
        self.ioapic_eois = 0
        self.dropped = 0
        self.unmodelled = 0

    # -- layout ------------------------------------------------------------------------------------
    def mapping_priority(self, mr: MemoryRegion) -> int:
        """The priority to map ``mr`` with (the MSI window overlaps memory with 0x1000)."""
        return MSI_REGION_PRIORITY if mr is self.msi_region else 0

    def map_into(self, memory: MemoryRegion, io: MemoryRegion) -> None:
        """Add every region of :attr:`devices` to the memory and I/O root containers."""
        for dev in self.devices:
            for space, addr, mr in dev.mappings:
                (memory if space == "memory" else io).add_subregion(addr, mr, self.mapping_priority(mr))

    def program_like_linux(self, dest: int = 0) -> None:
        """Leave the PIC and IOAPIC as a booted Linux guest has them (no time passes, no BQL).

        At reset the PIC's IMR is 0 and every IOAPIC entry is masked, so without this an ISA GSI
        reaches only the PIC and raises ``CPU_INTERRUPT_HARD`` on vCPU 0. Here the PIC is
        initialised (vectors 0x30 and 0x38) with every line but the cascade masked, and the
        IOAPIC routes each ISA IRQ ``n`` to vector ``0x30 + n`` (edge; IRQ0 on pin 2; the SCI,
        IRQ9, level) and GSI 16-23 to vectors 0x40-0x47 (level, active low), physical
        destination ``dest``. Vector numbers are Linux's boot-time ``ISA_IRQ_VECTOR`` layout;
        a running Linux reallocates them, which changes nothing here.
        """
        for chip, base, imr in ((self.pic.master, 0x30, 0xFB), (self.pic.slave, 0x38, 0xFF)):
            chip.reset()
            chip.irq_base = base
            chip.imr = imr
        table = self.ioapic.ioredtbl
        for irq in (1, *range(3, 16)):  # IRQ2 is the cascade: its pin carries ISA IRQ0
            table[irq] = redirection_entry(0x30 + irq, dest=dest, level=irq == 9)
        table[2] = redirection_entry(0x30, dest=dest)
        for gsi in range(16, 24):
            table[gsi] = redirection_entry(0x40 + gsi - 16, dest=dest, level=True, active_low=True)

    def lapic(self, index: int) -> LAPIC:
        """The LAPIC of the vCPU with ``index`` (its APIC ID)."""
        try:
            return self._by_id[index]
        except KeyError:
            raise ConfigError(f"no vCPU with index {index} (have {sorted(self._by_id)})") from None

    # -- the vCPU side -----------------------------------------------------------------------------
    def cpu_get_pic_interrupt(self, index: int) -> int:
        """``cpu_get_pic_interrupt`` for ``kvm_arch_pre_run``: the vector to inject, or -1.

        Call with the BQL held after clearing ``CPU_INTERRUPT_HARD`` (QEMU's order); the chip sets
        HARD again if more is pending. ``split``: the PIC's vector (``pic_read_irq``). ``off``:
        the userspace LAPIC's vector, else the PIC's on the BSP. ``on``: always -1 (KVM injects).
        """
        if self.mode == "on":
            return -1
        lapic = self.lapic(index)
        if self.mode == "off":
            intno = lapic.pop_pending()
            if intno >= 0:
                return intno
            if not lapic.accepts_pic:
                return -1
        return self.pic.read_irq()

    def get_interrupt(self, index: int) -> int:
        """Same as :meth:`cpu_get_pic_interrupt`."""
        return self.cpu_get_pic_interrupt(index)

    async def eoi(self, index: int, vector: int | None = None) -> int:
        """The guest on vCPU ``index`` writes its EOI register (see :meth:`LAPIC.eoi`).

        When the EOI goes through QEMU (:meth:`LAPIC.eoi_needs_bql`: KVM_EXIT_IOAPIC_EOI with a
        split irqchip, an MMIO exit into ``apic-msi`` with ``off``) it runs under the BQL (taken
        here unless held) and pays the ``ioapic`` / ``apic-msi`` handler cost under it. The exit
        itself is the vCPU's to charge. Returns the vector ended, or -1.
        """
        lapic = self.lapic(index)
        if not lapic.eoi_needs_bql(vector):
            return lapic.eoi(vector)
        host = self.host
        if self.mode == "off":
            cost, site = self._msi_cost, "apic_mem_write EOI"
        else:
            cost, site = host.costs.handler("ioapic"), "kvm_arch_handle_exit IOAPIC_EOI"
        async with host.bql_guard(site):
            await host.delay(cost)
            return lapic.eoi(vector)

    def send_ipi(self, src: int, dest: int, vector: int, *, dest_mode: int = 0,
                 delivery_mode: int = DM_FIXED, shorthand: int = SH_NONE, level: bool = False) -> None:
        """vCPU ``src`` writes its ICR: deliver at once, costs left to the caller (the awaitable
        :meth:`LAPIC.send_ipi` charges the exit as well)."""
        self.lapic(src).send_icr(dest, vector, dest_mode, delivery_mode, shorthand, level)

    # -- the APIC bus ------------------------------------------------------------------------------
    def send_msi(self, address: int, data: int) -> None:
        """``apic_send_msi`` / ``kvm_irqchip_send_msi``: decode and deliver one MSI."""
        self.msis += 1
        self.apic_deliver_irq((address >> 12) & 0xFF, (address >> 2) & 1, (data >> 8) & 7,
                              data & 0xFF, (data >> 15) & 1)

    def apic_deliver_irq(self, dest: int, dest_mode: int, delivery_mode: int, vector: int,
                         trigger_mode: int) -> None:
        """``apic_deliver_irq``: deliver to the LAPICs ``dest``/``dest_mode`` names."""
        self.bus_deliver(self.destinations(dest, dest_mode), delivery_mode, vector, bool(trigger_mode))

    def destinations(self, dest: int, dest_mode: int) -> list[LAPIC]:
        """The LAPICs a destination names (physical: APIC ID; logical: flat bitmask; 0xff: all)."""
        if dest == BROADCAST:
            return self.lapics
        if not dest_mode:
            lapic = self._by_id.get(dest)
            return [lapic] if lapic is not None else []
        return [lapic for lapic in self.lapics if lapic.apic_id < 8 and dest >> lapic.apic_id & 1]

    def bus_deliver(self, targets: list[LAPIC], delivery_mode: int, vector: int, level: bool) -> None:
        """``apic_bus_deliver``: hand one message to its target LAPICs."""
        if not targets:
            self.dropped += 1
            return
        if delivery_mode in (DM_FIXED, DM_EXTINT):
            for lapic in targets:
                lapic.deliver(vector, level)
        elif delivery_mode == DM_LOWEST:
            min(targets, key=_apic_id).deliver(vector, level)
        elif delivery_mode == DM_NMI:
            for lapic in targets:
                lapic.deliver_nmi()
        elif targets[0].in_kernel:
            self.unmodelled += 1
        else:
            mask = _CPU_INTERRUPT_FOR.get(delivery_mode)
            if mask is None:  # reserved delivery mode 3
                self.dropped += 1
                return
            for lapic in targets:
                lapic.cpu.cpu_interrupt(mask)

    def eoi_broadcast(self, vector: int) -> None:
        """A LAPIC ended level-triggered ``vector``: tell the IOAPIC (``ioapic_eoi_broadcast``)."""
        self.ioapic_eois += 1
        self.ioapic.eoi_broadcast(vector)

    # -- the MSI window ----------------------------------------------------------------------------
    def msi_read(self, offset: int, size: int) -> int:
        """A read of the MSI window: all-ones (``kvm_apic_mem_read``) or a userspace LAPIC register."""
        if self.mode != "off":
            return (1 << (8 * size)) - 1
        lapic = self._current_lapic()
        if lapic is None or size < 4 or offset > 0xFFF:
            return 0
        return lapic.register_read(offset >> 4)

    def msi_write(self, offset: int, value: int, size: int) -> None:
        """A write to the MSI window: an MSI, or (userspace LAPIC, offsets 0x10-0xfff) a register."""
        index = offset >> 4
        if self.mode != "off" or offset > 0xFFF or index == 0:
            self.send_msi(APIC_DEFAULT_ADDRESS | offset, value & 0xFFFFFFFF)
            return
        lapic = self._current_lapic()
        if lapic is not None and size == 4:
            lapic.register_write(index, value)

    def _current_lapic(self) -> LAPIC | None:
        if self.current_cpu is None:
            return None
        index = self.current_cpu()
        return None if index is None else self._by_id.get(index)

    async def _msi_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._msi_cost)
        return self.msi_read(offset, size)

    async def _msi_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._msi_cost)
        # held unless a what-if switch made the region lockless: delivery still needs the BQL
        async with self.host.bql_guard("apic-msi write"):
            self.msi_write(offset, value, size)

    # -- statistics --------------------------------------------------------------------------------
    def statistics(self) -> IRQChipStatistics:
        """A frozen snapshot of the counters."""
        pic = self.pic
        return IRQChipStatistics(
            mode=self.mode,
            delivered=tuple(lapic.delivered + (pic.acks if lapic is self.bsp else 0) for lapic in self.lapics),
            msis=self.msis,
            eois=sum(lapic.eois for lapic in self.lapics),
            ioapic_eois=self.ioapic_eois,
            ipis=self.ipis,
            pic_acks=pic.acks,
            pic_spurious=pic.spurious,
            ioapic_deliveries=self.ioapic.deliveries,
            ioapic_coalesced=self.ioapic.coalesced,
            dropped=self.dropped,
            unmodelled=self.unmodelled,
        )

    def __repr__(self) -> str:
        return f"<IRQChip kernel-irqchip={self.mode} vcpus={len(self.lapics)} msis={self.msis}>"


def _apic_id(lapic: LAPIC) -> int:
    return lapic.apic_id


def _vectors(mask: int) -> str:
    return "[" + ",".join(f"{v:#x}" for v in range(256) if mask >> v & 1) + "]"

"""The PC's pair of 8259 interrupt controllers (QEMU's ``isa-i8259`` master and slave).

Models hw/intc/i8259.c and hw/intc/i8259_common.c: each chip (:class:`PICState`, QEMU's
``PICCommonState``) has IRR, IMR, ISR, the ICW1-ICW4 initialisation sequence, OCW2 end-of-interrupt
commands (non-specific, specific, with rotation), OCW3 (IRR/ISR read select, poll, special mask),
and an ELCR that makes a pin level- instead of edge-triggered. The slave's output is the master's
pin 2 (cascade). :meth:`PIC.read_irq` is ``pic_read_irq``: acknowledge the highest-priority request
and return its vector, or the spurious vector ``irq_base + 7`` of the chip that had none.

Ports, with QEMU 7.2's ``info mtree`` names: ``pic`` at 0x20-0x21 (master) and 0xa0-0xa1 (slave),
``elcr`` at 0x4d0 (master) and 0x4d1 (slave). Every region takes the BQL (it is an ordinary region).

The master's INTR output is QEMU's ``pic_irq_request`` (hw/i386/x86-cpu.c), an :class:`IRQLine`:

* userspace PIC (``kernel-irqchip=split|off``): INTR raised sets ``CPU_INTERRUPT_HARD`` on the BSP
  (vCPU 0) with ``cpu_interrupt``, INTR lowered clears it with ``cpu_reset_interrupt``. The vCPU
  then calls :meth:`PIC.read_irq` under the BQL in ``kvm_arch_pre_run`` (``cpu_get_pic_interrupt``)
  and injects the vector with KVM_INTERRUPT. With ``kernel-irqchip=off`` the BSP's userspace LAPIC
  sits in between (``apic_deliver_pic_intr``): :class:`aemu.devices.lapic.IRQChip` replaces
  :attr:`PIC.cpu_intr` for that.
* in-kernel PIC (``kernel-irqchip=on``, QEMU's ``kvm-i8259``): the same model, but KVM acknowledges
  the interrupt itself as soon as INTR rises and injects it into the BSP with ``kvm_inject`` -- no
  userspace exit, no BQL (the PIC registers are KVM's, so no userspace region is mapped). aemu
  acknowledges at once; real KVM waits until the BSP can take the interrupt (IF set).

Not modelled (as in QEMU, or unused by PC guests): special fully nested mode is kept but only used
for the priority computation; single mode; buffered mode; level-sensitive mode via ICW1 (QEMU only
logs it).
"""

from __future__ import annotations

from collections.abc import Callable

from ..irq import CPU_INTERRUPT_HARD, IRQLine, InterruptTarget
from ..memory import MemoryRegion
from .base import Device, DeviceHost

__all__ = ["ISA_NUM_IRQS", "PIC", "PICState"]

#: ISA interrupt lines (8 per chip).
ISA_NUM_IRQS = 16

#: (port base, ELCR port, ELCR writable bits) of the master and the slave (hw/i386/pc.c and
#: hw/intc/i8259.c ``i8259_init_chip``): IRQ0-2 and IRQ8/IRQ13 are always edge-triggered.
_MASTER = (0x20, 0x4D0, 0xF8)
_SLAVE = (0xA0, 0x4D1, 0xDE)


class PICState:
    """One 8259 chip (QEMU's ``PICCommonState``) with the register logic of hw/intc/i8259.c.

    ``int_out(level)`` is called whenever the output may have changed (``pic_update_irq``).
    """

    __slots__ = (
        "master", "iobase", "elcr_addr", "elcr_mask", "int_out",
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
        "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "single_mode", "elcr",
    )

    def __init__(self, master: bool, int_out: Callable[[int], None]) -> None:
        self.master = master
        self.iobase, self.elcr_addr, self.elcr_mask = _MASTER if master else _SLAVE
        self.int_out = int_out
        self.elcr = 0
        self.last_irr = self.irr = self.imr = self.isr = 0
        self.priority_add = self.irq_base = self.read_reg_select = self.poll = 0
        self.special_mask = self.init_state = self.auto_eoi = self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = self.init4 = self.single_mode = 0

    def reset(self) -> None:
        """``pic_reset_common``: back to the power-on state; ELCR and asserted level pins stay."""
        self.last_irr = 0
        self.irr &= self.elcr
        self.imr = self.isr = 0
        self.priority_add = self.irq_base = self.read_reg_select = self.poll = 0
        self.special_mask = self.init_state = self.auto_eoi = self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = self.init4 = self.single_mode = 0

    # -- priority logic ----------------------------------------------------------------------------
    def get_priority(self, mask: int) -> int:
        """``get_priority``: the best priority (0 = highest) set in ``mask``, 8 if none."""
        if mask == 0:
            return 8
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def get_irq(self) -> int:
        """``pic_get_irq``: the pin this chip wants to signal, or -1."""
        priority = self.get_priority(self.irr & ~self.imr)
        if priority == 8:
            return -1
        mask = self.isr
        if self.special_mask:
            mask &= ~self.imr
        if self.special_fully_nested_mode and self.master:
            mask &= ~(1 << 2)
        if priority < self.get_priority(mask):
            return (priority + self.priority_add) & 7
        return -1

    def update_irq(self) -> None:
        """``pic_update_irq``: drive the output from the current state."""
        self.int_out(1 if self.get_irq() >= 0 else 0)

    def set_irq(self, irq: int, level: int) -> None:
        """``pic_set_irq``: an input pin changed; edge pins latch IRR on a rising edge."""
        mask = 1 << irq
        if self.elcr & mask:  # level triggered
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:  # edge triggered
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self.update_irq()

    def intack(self, irq: int) -> None:
        """``pic_intack``: the CPU took ``irq``: set ISR (unless auto-EOI), clear an edge IRR."""
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):
            self.irr &= ~(1 << irq)
        self.update_irq()

    # -- ports -----------------------------------------------------------------------------------
    def write(self, addr: int, val: int) -> None:
        """``pic_ioport_write``: ICW1/OCW2/OCW3 at offset 0, ICW2-4/OCW1 (IMR) at offset 1."""
        val &= 0xFF
        if addr == 0:
            if val & 0x10:  # ICW1
                self.reset()
                self.update_irq()
                self.init_state = 1
                self.init4 = val & 1
                self.single_mode = val & 2
            elif val & 0x08:  # OCW3
                if val & 0x04:
                    self.poll = 1
                if val & 0x02:
                    self.read_reg_select = val & 1
                if val & 0x40:
                    self.special_mask = (val >> 5) & 1
            else:  # OCW2
                cmd = val >> 5
                if cmd in (0, 4):  # (clear/set) rotate in auto-EOI mode
                    self.rotate_on_auto_eoi = cmd >> 2
                elif cmd in (1, 5):  # non-specific EOI (5: and rotate)
                    priority = self.get_priority(self.isr)
                    if priority != 8:
                        irq = (priority + self.priority_add) & 7
                        self.isr &= ~(1 << irq)
                        if cmd == 5:
                            self.priority_add = (irq + 1) & 7
                        self.update_irq()
                elif cmd == 3:  # specific EOI
                    self.isr &= ~(1 << (val & 7))
                    self.update_irq()
                elif cmd == 6:  # set priority
                    self.priority_add = (val + 1) & 7
                    self.update_irq()
                elif cmd == 7:  # specific EOI and rotate
                    irq = val & 7
                    self.isr &= ~(1 << irq)
                    self.priority_add = (irq + 1) & 7
                    self.update_irq()
            return
        state = self.init_state
        if state == 0:  # OCW1: interrupt mask
            self.imr = val
            self.update_irq()
        elif state == 1:  # ICW2: vector base
            self.irq_base = val & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single_mode else 2
        elif state == 2:  # ICW3: cascade wiring (nothing to keep)
            self.init_state = 3 if self.init4 else 0
        else:  # ICW4
            self.special_fully_nested_mode = (val >> 4) & 1
            self.auto_eoi = (val >> 1) & 1
            self.init_state = 0

    def read(self, addr: int) -> int:
        """``pic_ioport_read``: poll result, IRR or ISR (OCW3 select) at offset 0, IMR at offset 1."""
        if self.poll:
            irq = self.get_irq()
            if irq >= 0:
                self.intack(irq)
                ret = irq | 0x80
            else:
                ret = 0
            self.poll = 0
            return ret
        if addr == 0:
            return self.isr if self.read_reg_select else self.irr
        return self.imr

    def __repr__(self) -> str:
        return (f"<PICState {'master' if self.master else 'slave'} irr={self.irr:#04x} "
                f"imr={self.imr:#04x} isr={self.isr:#04x} irq_base={self.irq_base:#04x} "
                f"elcr={self.elcr:#04x}>")


class PIC(Device):
    """Master and slave 8259 with the cascade, the ELCRs and the INTR output to the BSP.

    ``bsp`` is the vCPU that INTR drives (vCPU 0, QEMU's ``qemu_get_cpu(0)``); ``in_kernel``
    makes it KVM's PIC (``kernel-irqchip=on``): no userspace regions, and INTR injects straight
    into the BSP with ``kvm_inject`` (see the module docstring).
    """

    type_name = "isa-i8259"

    def __init__(self, host: DeviceHost, bsp: InterruptTarget | None = None, *,
                 in_kernel: bool = False, name: str | None = None) -> None:
        super().__init__(host, name or ("kvm-i8259" if in_kernel else "isa-i8259"))
        self.bsp = bsp
        self.in_kernel = in_kernel
        #: vectors handed out by :meth:`read_irq` (spurious ones included), and the spurious ones
        self.acks = 0
        self.spurious = 0
        self._acking = False
        #: ``pic_irq_request(level)`` for a userspace PIC; IRQChip(mode="off") routes it via the LAPIC.
        self.cpu_intr: Callable[[int], None] = self._cpu_intr
        #: the master's INTR pin (``int_out[0]``); the BQL rule holds for the userspace PIC
        self.intr = IRQLine(self._pic_irq_request, 0, "pic-intr", check_bql=not in_kernel)
        self.master = PICState(True, self.intr.set)
        self.slave = PICState(False, self._slave_out)
        if not in_kernel:
            for chip in (self.master, self.slave):
                self.map_io(chip.iobase, self._pic_region(chip))
                self.map_io(chip.elcr_addr, self._elcr_region(chip))

    # -- inputs ------------------------------------------------------------------------------------
    def set_irq(self, irq: int, level: int) -> None:
        """ISA IRQ ``irq`` (0-15) changed level (``pic_set_irq`` on the master or the slave)."""
        if not 0 <= irq < ISA_NUM_IRQS:
            raise ValueError(f"PIC input {irq} does not exist (0..{ISA_NUM_IRQS - 1})")
        chip = self.master if irq < 8 else self.slave
        chip.set_irq(irq & 7, 1 if level else 0)

    def _slave_out(self, level: int) -> None:
        self.master.set_irq(2, level)

    # -- the CPU side ------------------------------------------------------------------------------
    def output(self) -> bool:
        """``pic_get_output``: whether INTR is asserted."""
        return self.master.get_irq() >= 0

    def read_irq(self) -> int:
        """``pic_read_irq``: acknowledge the best request and return its vector (spurious: base+7).

        A userspace PIC must be read with the BQL held (``kvm_arch_pre_run`` takes it).
        """
        master, slave = self.master, self.slave
        irq = master.get_irq()
        if irq >= 0:
            if irq == 2:
                irq2 = slave.get_irq()
                if irq2 >= 0:
                    slave.intack(irq2)
                else:  # spurious IRQ on the slave
                    irq2 = 7
                    self.spurious += 1
                vector = slave.irq_base + irq2
            else:
                vector = master.irq_base + irq
            master.intack(irq)
        else:  # spurious IRQ on the master
            vector = master.irq_base + 7
            self.spurious += 1
        self.acks += 1
        return vector

    def _pic_irq_request(self, n: int, level: int) -> None:
        if self.in_kernel:
            self._kvm_pic_intr(level)
        else:
            self.cpu_intr(level)

    def _cpu_intr(self, level: int) -> None:
        """``pic_irq_request`` with the LAPIC in the kernel: HARD on the BSP follows INTR."""
        bsp = self.bsp
        if bsp is None:
            return
        if level:
            bsp.cpu_interrupt(CPU_INTERRUPT_HARD)
        else:
            bsp.cpu_reset_interrupt(CPU_INTERRUPT_HARD)

    def _kvm_pic_intr(self, level: int) -> None:
        """In-kernel PIC: KVM acknowledges and injects while INTR is asserted (never re-entered)."""
        if not level or self._acking or self.bsp is None:
            return
        self._acking = True
        try:
            while self.master.get_irq() >= 0:
                self.bsp.kvm_inject(self.read_irq())
        finally:
            self._acking = False

    def reset(self) -> None:
        """``pic_reset`` on both chips: ELCR cleared, registers to power-on values."""
        for chip in (self.slave, self.master):
            chip.elcr = 0
            chip.reset()
            chip.update_irq()

    # -- regions -----------------------------------------------------------------------------------
    def _pic_region(self, chip: PICState) -> MemoryRegion:
        cost = self.host.costs.handler("pic")
        host = self.host
        # The chip's state is BQL-protected: a handler takes the BQL itself (site "pic") if a
        # what-if switch made the region lockless, as the HPET does around IRQ updates.

        async def read(offset: int, size: int) -> int:
            await host.delay(cost)
            async with host.bql_guard("pic"):
                return chip.read(offset)

        async def write(offset: int, value: int, size: int) -> None:
            await host.delay(cost)
            async with host.bql_guard("pic"):
                chip.write(offset, value)

        return self.region_io("pic", 2, read, write, impl_min=1, impl_max=1)

    def _elcr_region(self, chip: PICState) -> MemoryRegion:
        cost = self.host.costs.handler("elcr")
        host = self.host

        async def read(offset: int, size: int) -> int:
            await host.delay(cost)
            return chip.elcr

        async def write(offset: int, value: int, size: int) -> None:
            await host.delay(cost)
            chip.elcr = value & chip.elcr_mask

        return self.region_io("elcr", 1, read, write, impl_min=1, impl_max=1)

    def __repr__(self) -> str:
        return (f"<PIC {self.name!r} master irr={self.master.irr:#04x} imr={self.master.imr:#04x} "
                f"isr={self.master.isr:#04x} slave irr={self.slave.irr:#04x} "
                f"imr={self.slave.imr:#04x} isr={self.slave.isr:#04x}>")

"""The I/O APIC (QEMU's ``ioapic``, hw/intc/ioapic.c) and the GSI wiring (``gsi_handler``).

:class:`IOAPIC` is the userspace IOAPIC used with ``kernel-irqchip=split`` (and ``off``): one MMIO
region ``ioapic`` at 0xfec00000 (0x1000 bytes; IOREGSEL at 0x00, IOWIN at 0x10, the EOI register
at 0x40 for version 0x20), an ID, a version register (0x20 with 24 pins: 0x00170020), the
arbitration register, and 24 redirection entries of 64 bits: vector (bits 0-7), delivery mode
(8-10), destination mode (11), delivery status (12, read-only), polarity (13), remote IRR (14,
read-only), trigger mode (15), mask (16), destination (56-63). Entries reset masked.

Behaviour follows ``ioapic_set_irq`` / ``ioapic_service`` / ``ioapic_eoi_broadcast``:

* edge-triggered pin: asserting an unmasked pin latches IRR and delivers (assertions of a masked
  pin are ignored, as the 82093AA manual says). Like QEMU's ``ioapic_set_irq``, the userspace
  IOAPIC does not remember the input level: *every* ``set_irq(pin, 1)`` is an edge, so a device
  that raises an already raised line delivers again (QEMU devices pulse, or lower before
  raising). KVM's IOAPIC (``in_kernel``) delivers on rising edges only (``kvm_ioapic_set_irq``);
* level-triggered pin: IRR follows the line; while it is asserted, the pin delivers when remote IRR
  is clear and sets remote IRR; a masked pin keeps IRR latched and delivers when unmasked;
* an EOI for a vector (from a LAPIC, or the EOI register) clears remote IRR of the level entries
  with that vector and re-delivers a line still asserted. After 10,000 successive re-deliveries
  (an interrupt storm) the re-delivery is delayed by 10 ms on a QEMU timer, as QEMU does.

ISA IRQ0 arrives on pin 2: like QEMU, ``set_irq(0, level)`` drives pin 2 (the ACPI interrupt
source override IRQ0 -> GSI 2), so a device raising ISA IRQ0 uses ``host.gsi(0)`` (which also
reaches PIC pin 0).

Delivery builds the MSI QEMU builds (``ioapic_entry_parse``): address ``0xfee00000 | dest << 12 |
dest_mode << 2``, data ``vector | delivery_mode << 8 | trigger_mode << 15``, and hands it to
``send_msi(address, data)`` -- the LAPIC layer (:meth:`aemu.devices.lapic.IRQChip.send_msi`): with
``kernel-irqchip=split`` that is KVM's MSI route into the in-kernel LAPIC (``kvm_set_irq`` on the
pin's route), with ``off`` the userspace LAPIC (``stl_le_phys`` into ``apic-msi``). ExtINT entries
take their vector from the PIC (``pic_read_irq``).

With ``in_kernel=True`` the same model stands for KVM's IOAPIC (``kernel-irqchip=on``,
``kvm-ioapic``): no userspace region is mapped and its EOI broadcasts need no BQL.

The IOAPIC's state is BQL-protected: its region takes the BQL, its inputs are :class:`IRQLine` s
(whose ``set`` checks the BQL), and :meth:`IOAPIC.eoi_broadcast` of a userspace IOAPIC checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..irq import IRQLine
from ..sync import bql_locked
from .base import Device, DeviceHost
from .pic import ISA_NUM_IRQS

if TYPE_CHECKING:
    from .pic import PIC

__all__ = [
    "IOAPIC", "IOAPIC_DEFAULT_ADDRESS", "IOAPIC_NUM_PINS", "IOAPIC_VERSION", "MSISink",
    "gsi_lines", "redirection_entry",
]

#: ``send_msi(address, data)``: where the IOAPIC's messages go.
MSISink = Callable[[int, int], None]

IOAPIC_DEFAULT_ADDRESS = 0xFEC00000
IOAPIC_NUM_PINS = 24
IOAPIC_VERSION = 0x20
APIC_DEFAULT_ADDRESS = 0xFEE00000

# registers (hw/intc/ioapic_internal.h)
IOREGSEL = 0x00
IOWIN = 0x10
IOEOI = 0x40
REG_ID = 0x00
REG_VER = 0x01
REG_ARB = 0x02
REG_REDTBL_BASE = 0x10
_ID_SHIFT = 24
_ID_MASK = 0xF
_VER_ENTRIES_SHIFT = 16

# redirection entry fields
_VECTOR_MASK = 0xFF
_DELIV_MODE_SHIFT = 8
_DM_MASK = 0x7
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT = 0, 1, 2, 4, 5, 7
_DEST_MODE_SHIFT = 11
_DELIV_STATUS = 1 << 12
_POLARITY = 1 << 13
REMOTE_IRR = 1 << 14
_TRIGGER_SHIFT = 15
TRIGGER_LEVEL = 1 << _TRIGGER_SHIFT
MASKED = 1 << 16
_DEST_IDX_SHIFT = 48
_DEST_SHIFT = 56
_RO_BITS = REMOTE_IRR | _DELIV_STATUS
_RW_BITS = ((1 << 64) - 1) & ~_RO_BITS

#: re-deliveries from successive EOIs before QEMU delays the next one (interrupt storm)
SUCCESSIVE_IRQ_MAX_COUNT = 10_000
_STORM_DELAY_NS = 10_000_000


def redirection_entry(vector: int, *, dest: int = 0, delivery_mode: int = DM_FIXED, logical: bool = False,
                      level: bool = False, masked: bool = False, active_low: bool = False) -> int:
    """A 64-bit redirection-table entry, for tests and firmware-like set-up code."""
    return ((vector & _VECTOR_MASK) | (delivery_mode & _DM_MASK) << _DELIV_MODE_SHIFT
            | int(logical) << _DEST_MODE_SHIFT | (_POLARITY if active_low else 0)
            | (TRIGGER_LEVEL if level else 0) | (MASKED if masked else 0) | (dest & 0xFF) << _DEST_SHIFT)


class IOAPIC(Device):
    """QEMU's ``ioapic`` (or ``kvm-ioapic`` with ``in_kernel``): see the module docstring.

    ``send_msi(address, data)`` receives the messages; ``pic`` supplies ExtINT vectors.
    """

    type_name = "ioapic"

    def __init__(self, host: DeviceHost, send_msi: MSISink | None = None, *, pic: PIC | None = None,
                 in_kernel: bool = False, version: int = IOAPIC_VERSION,
                 address: int = IOAPIC_DEFAULT_ADDRESS, name: str | None = None) -> None:
        if version not in (0x11, 0x20):
            raise ConfigError(f"IOAPIC only supports version 0x11 or 0x20 (default: 0x20), got {version:#x}")
        super().__init__(host, name or ("kvm-ioapic" if in_kernel else "ioapic"))
        self.send_msi: MSISink = send_msi if send_msi is not None else _drop_msi
        self.pic = pic
        self.in_kernel = in_kernel
        self.version = version
        self.address = address
        self.id = 0
        self.ioregsel = 0
        self.irr = 0
        #: input levels as last set (KVM's IOAPIC uses them to see rising edges)
        self.line_levels = 0
        self.ioredtbl = [MASKED] * IOAPIC_NUM_PINS
        self.irq_eoi = [0] * IOAPIC_NUM_PINS
        #: messages sent, level assertions held back by remote IRR, EOIs that cleared remote IRR
        self.deliveries = 0
        self.coalesced = 0
        self.eoi_clears = 0
        self.delayed_service_timer = host.timer_new_ns(f"{self.name}-delayed-service", self.service)
        self._cost = host.costs.handler("ioapic")
        if not in_kernel:
            self.region = self.region_io("ioapic", 0x1000, self._mmio_read, self._mmio_write)
            self.map_mmio(address, self.region)

    # -- inputs ------------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: int) -> None:
        """``ioapic_set_irq``: input ``pin`` changed level (ISA IRQ0 drives pin 2)."""
        if pin == 0:
            pin = 2
        if not 0 <= pin < IOAPIC_NUM_PINS:
            return
        mask = 1 << pin
        was_high = self.line_levels & mask
        if level:
            self.line_levels |= mask
        else:
            self.line_levels &= ~mask
        entry = self.ioredtbl[pin]
        if entry & TRIGGER_LEVEL:
            if level:
                self.irr |= mask
                if not entry & REMOTE_IRR:
                    self.service()
                else:
                    self.coalesced += 1  # the guest still works on the previous one
            else:
                self.irr &= ~mask
        elif level and not entry & MASKED and not (was_high and self.in_kernel):
            self.irr |= mask
            self.service()

    def service(self) -> None:
        """``ioapic_service``: deliver every pending, unmasked pin (level pins set remote IRR)."""
        irr = self.irr
        if not irr:
            return
        for pin in range(IOAPIC_NUM_PINS):
            mask = 1 << pin
            if not irr & mask:
                continue
            entry = self.ioredtbl[pin]
            if entry & MASKED:
                continue
            if entry & TRIGGER_LEVEL:
                if entry & REMOTE_IRR:  # the guest still works on the previous one
                    continue
                self.ioredtbl[pin] = entry | REMOTE_IRR
            else:
                self.irr &= ~mask
            self._deliver(entry)

    def _deliver(self, entry: int) -> None:
        """Turn an entry into its MSI (``ioapic_entry_parse``) and send it."""
        delivery_mode = (entry >> _DELIV_MODE_SHIFT) & _DM_MASK
        if delivery_mode == DM_EXTINT:
            vector = self.pic.read_irq() if self.pic is not None else 0
        else:
            vector = entry & _VECTOR_MASK
        dest_idx = (entry >> _DEST_IDX_SHIFT) & 0xFFFF
        address = APIC_DEFAULT_ADDRESS | dest_idx << 4 | ((entry >> _DEST_MODE_SHIFT) & 1) << 2
        data = vector | delivery_mode << 8 | ((entry >> _TRIGGER_SHIFT) & 1) << 15
        self.deliveries += 1
        self.send_msi(address, data)

    def eoi_broadcast(self, vector: int) -> None:
        """``ioapic_eoi_broadcast``: a LAPIC ended level-triggered ``vector``.

        Clears remote IRR of the level entries with that vector and re-delivers a line that is
        still asserted. A userspace IOAPIC needs the BQL (with a split irqchip this runs in the
        vCPU thread on KVM_EXIT_IOAPIC_EOI, which takes it).
        """
        if not self.in_kernel and not bql_locked():
            raise RuntimeError(
                f"{self.name}: EOI broadcast for vector {vector:#x} without the BQL; with a userspace "
                f"IOAPIC the EOI of a level-triggered vector exits to QEMU (KVM_EXIT_IOAPIC_EOI), "
                f"which handles it under the BQL")
        for pin in range(IOAPIC_NUM_PINS):
            entry = self.ioredtbl[pin]
            if (entry & _VECTOR_MASK) != vector or not entry & TRIGGER_LEVEL:
                continue
            if not entry & REMOTE_IRR:
                continue
            self.ioredtbl[pin] = entry & ~REMOTE_IRR
            self.eoi_clears += 1
            if not entry & MASKED and self.irr & (1 << pin):
                self.irq_eoi[pin] += 1
                if self.irq_eoi[pin] >= SUCCESSIVE_IRQ_MAX_COUNT:
                    # real hardware does not re-deliver at once; let a storming guest make progress
                    self.irq_eoi[pin] = 0
                    t = self.delayed_service_timer
                    when = self.host.now_ns() + _STORM_DELAY_NS
                    if not t.pending or t.expire_ns > when:
                        t.mod_ns(when)
                else:
                    self.service()
            else:
                self.irq_eoi[pin] = 0

    # -- registers ---------------------------------------------------------------------------------
    def mem_read(self, addr: int, size: int) -> int:
        """``ioapic_mem_read``: IOREGSEL, or the selected register through IOWIN (4-byte reads only)."""
        addr &= 0xFF
        if addr == IOREGSEL:
            return self.ioregsel
        if addr != IOWIN or size != 4:
            return 0
        sel = self.ioregsel
        if sel in (REG_ID, REG_ARB):
            return self.id << _ID_SHIFT
        if sel == REG_VER:
            return self.version | (IOAPIC_NUM_PINS - 1) << _VER_ENTRIES_SHIFT
        index = (sel - REG_REDTBL_BASE) >> 1
        if 0 <= index < IOAPIC_NUM_PINS:
            entry = self.ioredtbl[index]
            return entry >> 32 if sel & 1 else entry & 0xFFFFFFFF
        return 0

    def mem_write(self, addr: int, val: int, size: int) -> None:
        """``ioapic_mem_write``: select a register, write it through IOWIN, or EOI a vector."""
        addr &= 0xFF
        if addr == IOREGSEL:
            self.ioregsel = val & 0xFF
        elif addr == IOWIN:
            if size != 4:
                return
            sel = self.ioregsel
            if sel == REG_ID:
                self.id = (val >> _ID_SHIFT) & _ID_MASK
            elif sel in (REG_VER, REG_ARB):
                pass
            else:
                index = (sel - REG_REDTBL_BASE) >> 1
                if 0 <= index < IOAPIC_NUM_PINS:
                    self.write_entry(index, val, high=bool(sel & 1))
        elif addr == IOEOI:
            if size == 4 and self.version == 0x20:  # explicit EOI: version 0x20 only
                self.eoi_broadcast(val & 0xFF)

    def write_entry(self, index: int, val: int, *, high: bool) -> None:
        """Write one half of redirection entry ``index`` (read-only bits kept), then service."""
        old = self.ioredtbl[index]
        ro_bits = old & _RO_BITS
        val &= 0xFFFFFFFF
        entry = (old & 0xFFFFFFFF) | val << 32 if high else (old & ~0xFFFFFFFF) | val
        entry = (entry & _RW_BITS) | ro_bits
        if not entry & TRIGGER_LEVEL:  # ioapic_fix_edge_remote_irr (Linux's __eoi_ioapic_pin trick)
            entry &= ~REMOTE_IRR
        self.ioredtbl[index] = entry
        self.irq_eoi[index] = 0
        self.service()

    def reset(self) -> None:
        """``ioapic_reset_common``: ID 0, IOREGSEL 0, IRR clear, every entry masked."""
        self.id = 0
        self.ioregsel = 0
        self.irr = 0
        self.ioredtbl = [MASKED] * IOAPIC_NUM_PINS
        self.irq_eoi = [0] * IOAPIC_NUM_PINS
        self.delayed_service_timer.delete()

    async def _mmio_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        return self.mem_read(offset, size)

    async def _mmio_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        # held unless a what-if switch made the region lockless: the state still needs the BQL
        async with self.host.bql_guard("ioapic write"):
            self.mem_write(offset, value, size)

    def __repr__(self) -> str:
        return f"<IOAPIC {self.name!r} irr={self.irr:#08x} deliveries={self.deliveries}>"


def _drop_msi(address: int, data: int) -> None:
    """The sink of an IOAPIC wired to nothing."""


def gsi_lines(host: DeviceHost, ioapic: IOAPIC, pic: PIC | None) -> list[IRQLine]:
    """QEMU's ``gsi_handler``: the 24 GSI lines, connected to ``host`` (``host.gsi(n)``).

    GSI 0-15 (the ISA IRQs) drive PIC pin ``n`` and IOAPIC input ``n``; GSI 16-23 the IOAPIC only.
    The IOAPIC takes input 0 on pin 2 (ISA IRQ0 -> GSI 2 override). As in QEMU, GSI 2 also reaches
    PIC pin 2, the cascade input: devices should raise ISA IRQ0 on ``host.gsi(0)``, never GSI 2.
    With ``kernel-irqchip=on`` KVM routes the same way (``kvm_pc_setup_irq_routing``).
    Each line is an :class:`IRQLine`, so raising or lowering it needs the BQL.
    """

    def gsi_handler(n: int, level: int) -> None:
        if n < ISA_NUM_IRQS and pic is not None:
            pic.set_irq(n, level)
        ioapic.set_irq(n, level)

    lines = [IRQLine(gsi_handler, n, f"gsi{n}") for n in range(IOAPIC_NUM_PINS)]
    for n, line in enumerate(lines):
        host.connect_gsi(n, line)
    return lines

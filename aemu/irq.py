"""QEMU's ``qemu_irq``: an interrupt line into a device model or an interrupt controller.

``IRQLine(handler, n)`` is ``qemu_allocate_irq(handler, opaque, n)``; ``line.set(level)`` is
``qemu_set_irq``. Since QEMU's follow-up to the BQL-free series (Sept 2025), raising or lowering
a line needs the BQL: :meth:`IRQLine.set` checks it and raises ``RuntimeError`` otherwise, so a
device on a lockless path must take the BQL around its IRQ updates (as the HPET does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .sync import bql_locked

__all__ = [
    "CPU_INTERRUPT_HARD", "CPU_INTERRUPT_INIT", "CPU_INTERRUPT_NMI", "CPU_INTERRUPT_SIPI",
    "CPU_INTERRUPT_SMI", "CPU_INTERRUPT_TPR", "IRQHandler", "IRQLine", "InterruptTarget",
]

# cpu->interrupt_request bits (include/exec/cpu-interrupt.h, target/i386/cpu.h).
CPU_INTERRUPT_HARD = 0x0002   # external interrupt pending (from the PIC / a userspace LAPIC)
CPU_INTERRUPT_SMI = 0x0040    # CPU_INTERRUPT_TGT_EXT_2
CPU_INTERRUPT_NMI = 0x0200    # CPU_INTERRUPT_TGT_EXT_3
CPU_INTERRUPT_INIT = 0x0400   # CPU_INTERRUPT_RESET
CPU_INTERRUPT_SIPI = 0x0800   # CPU_INTERRUPT_TGT_INT_1
CPU_INTERRUPT_TPR = 0x2000    # CPU_INTERRUPT_TGT_INT_2


class InterruptTarget(Protocol):
    """What interrupt controllers need of a vCPU (``aemu.cpu.VCPU`` implements it)."""

    #: vCPU index, also its APIC ID.
    index: int

    def cpu_interrupt(self, mask: int) -> None:
        """QEMU's ``cpu_interrupt()``: set ``interrupt_request`` bits and kick the vCPU."""

    def cpu_reset_interrupt(self, mask: int) -> None:
        """QEMU's ``cpu_reset_interrupt()``: clear ``interrupt_request`` bits."""

    def kvm_inject(self, vector: int) -> None:
        """The in-kernel LAPIC accepted ``vector``: KVM injects it at the next guest entry
        without QEMU's help (and wakes the vCPU from HLT). Used with kernel-irqchip=split|on."""

#: ``handler(n, level)``: what a line drives (``qemu_irq_handler`` without the opaque).
IRQHandler = Callable[[int, int], None]

#: The active :class:`aemu.check.Checker` while ``aemu check`` runs, else None: a line set without
#: the BQL is then reported (``irq-without-bql``) and applied instead of raising.
checker: Any = None


class IRQLine:
    """One interrupt line (``qemu_irq``): ``set(level)``, ``raise_()``, ``lower()``, ``pulse()``."""

    __slots__ = ("handler", "n", "name", "level", "raises", "check_bql")

    def __init__(self, handler: IRQHandler, n: int = 0, name: str = "", *, check_bql: bool = True) -> None:
        self.handler = handler
        self.n = n
        self.name = name or f"irq{n}"
        self.level = 0
        self.raises = 0
        self.check_bql = check_bql

    def set(self, level: int) -> None:
        """``qemu_set_irq``: drive the line to ``level`` (the caller must hold the BQL)."""
        if self.check_bql and not bql_locked() and (checker is None or not checker.irq_without_bql(self)):
            raise RuntimeError(
                f"IRQ line {self.name!r} set without the BQL; since QEMU's follow-up to the "
                f"BQL-free series, qemu_set_irq needs the BQL held")
        level = 1 if level else 0
        if level and not self.level:
            self.raises += 1
        self.level = level
        self.handler(self.n, level)

    def raise_(self) -> None:
        """``qemu_irq_raise``."""
        self.set(1)

    def lower(self) -> None:
        """``qemu_irq_lower``."""
        self.set(0)

    def pulse(self) -> None:
        """``qemu_irq_pulse``: raise then lower (an edge)."""
        self.set(1)
        self.set(0)

    def __repr__(self) -> str:
        return f"<IRQLine {self.name!r} level={self.level}>"

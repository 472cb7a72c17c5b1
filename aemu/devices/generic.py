"""A stand-in for regions aemu has no model of, and the IRQ helper the BQL-bound devices share.

:class:`GenericRegion` is a named region (``vga``, ``ahci``, ``fwcfg``, ``acpi-cnt``, ...) that
reads a configured value and ignores writes, so a trace or a boot mix can touch every region QEMU
has while the lock and the handler cost are those of a real device: like every device region it is
normal (dispatch takes the BQL) and charges ``host.costs.handler(name)``.

:class:`IRQOut` is a device's interrupt output. Since QEMU's follow-up to the BQL-free series
``qemu_set_irq`` needs the BQL; a handler normally runs under it (its region takes the BQL), but a
what-if switch may make any region lockless, and then the update is applied under the BQL taken
at the end of the handler.
"""

from __future__ import annotations

from .. import irq as _irq
from ..errors import ConfigError
from ..sync import bql_locked
from .base import Device, DeviceHost

__all__ = ["GenericRegion", "IRQOut"]

_MASK = tuple((1 << (8 * n)) - 1 for n in range(9))


class IRQOut:
    """A device's output line to GSI ``gsi`` (the ``qemu_irq`` a device drives).

    :meth:`set` is ``qemu_set_irq``: applied at once when the caller holds the BQL (the normal
    case: BQL-bound handlers and timer callbacks), else queued; a handler that may run without
    the BQL ends with ``if irq.pending: await irq.flush()``, which applies the queued levels in
    order under the BQL. The line is looked up at each update, so the machine may wire the
    irqchip after the device is built.
    """

    __slots__ = ("host", "gsi", "site", "pending")

    def __init__(self, host: DeviceHost, gsi: int, site: str) -> None:
        self.host = host
        self.gsi = gsi
        self.site = site
        self.pending: list[int] = []

    @property
    def level(self) -> int:
        """The level the line was last driven to (0 if it is not wired yet)."""
        try:
            return self.host.gsi(self.gsi).level
        except ConfigError:
            return 0

    def set(self, level: int) -> None:
        """Drive the line now under the BQL, or queue the update for :meth:`flush`."""
        if bql_locked():
            if self.pending:
                self._apply()
            self.host.gsi(self.gsi).set(level)
        else:  # QEMU's device would call qemu_set_irq here, without the BQL: aemu check says so
            if _irq.checker is not None:
                _irq.checker.irq_without_bql(self.host.gsi(self.gsi), deferred=True)
            self.pending.append(level)

    async def flush(self) -> None:
        """Apply queued updates, taking the BQL if the caller does not hold it."""
        if not self.pending:
            return
        async with self.host.bql_guard(self.site):
            self._apply()

    def _apply(self) -> None:
        line = self.host.gsi(self.gsi)
        levels, self.pending = self.pending, []
        for level in levels:
            line.set(level)

    def __repr__(self) -> str:
        return f"<IRQOut GSI {self.gsi} level={self.level}{' pending' if self.pending else ''}>"


class GenericRegion(Device):
    """A named region that reads ``read_value`` (masked to the access size) and ignores writes.

    ``space`` is ``"io"`` (``addr`` is a port) or ``"memory"`` (``addr`` is guest-physical). Any
    access size 1..8, aligned or not, is accepted and dispatched whole: a trace decides the shapes.
    """

    type_name = "generic"

    def __init__(self, host: DeviceHost, name: str, size: int, *, read_value: int = 0xFFFF_FFFF_FFFF_FFFF,
                 space: str = "io", addr: int = 0) -> None:
        if space not in ("io", "memory"):
            raise ValueError(f"GenericRegion {name!r}: space must be 'io' or 'memory', got {space!r}")
        super().__init__(host, name)
        self.read_value = read_value & _MASK[8]
        self.reads = 0
        self.writes = 0
        self._cost = host.costs.handler(name)
        self.region = self.region_io(name, size, self._read, self._write, valid_max=8,
                                     valid_unaligned=True, impl_max=8)
        if space == "io":
            self.map_io(addr, self.region)
        else:
            self.map_mmio(addr, self.region)

    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        return self.read_value & _MASK[size]

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1

"""Small PC ports a boot touches: ``pcspk`` (0x61), ``port92`` (0x92) and ``ioport80`` (0x80).

* :class:`PCSpkState` -- QEMU's hw/audio/pcspk.c without the audio: port 0x61 bit 0 is PIT
  channel 2's gate, bit 1 the speaker data enable; reads return the gate, the data enable, the
  PIT channel 2 OUT in bit 5 and a "refresh" bit 4 that toggles on every read (what the kernel's
  delay and calibration loops poll).
* :class:`Port92` -- QEMU's hw/i386/port92.c, "system control port A": bit 1 drives A20, a rising
  edge of bit 0 requests a system reset (recorded; the machine decides what a reset does).
* :class:`IOPort80` -- the POST/delay port of hw/i386/pc.c: writes are ignored, reads return
  all-ones.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Device, DeviceHost
from .pit import PITState

__all__ = ["IOPort80", "PCSpkState", "Port92"]


class PCSpkState(Device):
    """QEMU's ``PCSpkState`` (``isa-pcspk``): port 0x61, wired to the PIT's channel 2.

    ``pit`` is QEMU's ``pit`` link property; it may be set after construction. Without a PIT the
    gate bit reads back as written and OUT reads 0.
    """

    type_name = "isa-pcspk"

    def __init__(self, host: DeviceHost, pit: PITState | None = None, *, iobase: int = 0x61) -> None:
        super().__init__(host, "pcspk")
        self.pit = pit
        self.iobase = iobase
        self.gate = 0  # used only without a PIT
        self.data_on = 0
        self.dummy_refresh_clock = 0
        self.reads = 0
        self.writes = 0
        self._cost = host.costs.handler("pcspk")
        self.region = self.region_io("pcspk", 1, self._read, self._write, impl_max=1)
        self.map_io(iobase, self.region)

    async def _read(self, offset: int, size: int) -> int:
        """``pcspk_io_read``."""
        await self.host.delay(self._cost)
        self.reads += 1
        if self.pit is not None:
            gate, _mode, _count, out = self.pit.channel_info(2)
        else:
            gate, out = self.gate, 0
        self.dummy_refresh_clock ^= 0x10
        return gate | (self.data_on << 1) | self.dummy_refresh_clock | (out << 5)

    async def _write(self, offset: int, value: int, size: int) -> None:
        """``pcspk_io_write``."""
        await self.host.delay(self._cost)
        self.writes += 1
        self.data_on = (value >> 1) & 1
        self.gate = value & 1
        if self.pit is not None:
            self.pit.set_gate(2, self.gate)


class Port92(Device):
    """QEMU's ``Port92State`` (``port92``): A20 gate and fast reset.

    ``outport`` starts at QEMU's power-on value 0; SeaBIOS leaves 0x02 (A20 on), which is what a
    traced Linux boot reads, so a machine that starts at the kernel passes ``outport=0x02``.
    ``on_reset`` is called on each reset request, after :attr:`reset_requests` counts it.
    """

    type_name = "port92"

    def __init__(self, host: DeviceHost, *, iobase: int = 0x92, outport: int = 0,
                 on_reset: Callable[[], None] | None = None) -> None:
        super().__init__(host, "port92")
        self.iobase = iobase
        self.outport = outport & 0xFF
        self.on_reset = on_reset
        self.reset_requests = 0
        self.reads = 0
        self.writes = 0
        self._cost = host.costs.handler("port92")
        self.region = self.region_io("port92", 1, self._read, self._write, impl_max=1)
        self.map_io(iobase, self.region)

    @property
    def a20(self) -> bool:
        """Whether the A20 line is enabled (bit 1, QEMU's ``a20_out``)."""
        return bool(self.outport & 0x02)

    def reset(self) -> None:
        """``port92_reset``: the reset bit clears, A20 keeps its state."""
        self.outport &= ~1

    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        return self.outport

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1
        old = self.outport
        self.outport = value & 0xFF
        if value & 1 and not old & 1:
            self.reset_requests += 1
            if self.on_reset is not None:
                self.on_reset()


class IOPort80(Device):
    """The ``ioport80`` region: the guest's I/O delay and POST code port."""

    type_name = "ioport80"

    def __init__(self, host: DeviceHost, *, iobase: int = 0x80) -> None:
        super().__init__(host, "ioport80")
        self.iobase = iobase
        self.reads = 0
        self.writes = 0
        #: the last byte written (a POST code, or the kernel's delay write)
        self.last_write = 0
        self._cost = host.costs.handler("ioport80")
        self.region = self.region_io("ioport80", 1, self._read, self._write, impl_max=1)
        self.map_io(iobase, self.region)

    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        return 0xFF

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1
        self.last_write = value & 0xFF

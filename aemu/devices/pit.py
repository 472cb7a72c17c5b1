"""The i8254 programmable interval timer (``pit`` at 0x40-0x43; channel 0 drives ISA IRQ 0).

After QEMU's hw/timer/i8254.c and i8254_common.c. Counters run at 1.193182 MHz from the virtual
clock: a channel keeps the time its count was loaded and derives its counter and OUT from the
ticks elapsed since, so nothing runs between accesses. Channel 0 has a QEMU timer that fires at
each transition of OUT and drives IRQ 0 to OUT's level -- once per period in mode 2 (QEMU's OUT is
high for the one tick the count wraps), twice per period in mode 3 (square wave), once at terminal
count in mode 0. The irqchip maps ISA IRQ 0 where it belongs (IOAPIC pin 2, PIC input 0).

Accepted: the control word (counter latch, read/write LSB, MSB or LSB-then-MSB, modes 0-5 with 6
and 7 as the hardware aliases of 2 and 3), the read-back command (count and status latches),
and gates (channel 2's from port 0x61, see :class:`aemu.devices.misc.PCSpkState`). As in QEMU the
BCD bit is stored but counting is binary, and the gate only matters in modes 1, 2, 3 and 5
(a rising edge restarts the count). :meth:`PITState.irq_control` is the input the HPET uses to
silence channel 0 in legacy-replacement mode (QEMU's ``pit_irq_control``).

Reset (QEMU's): every channel in mode 3 with count 0x10000, gates of channels 0 and 1 high, and
channel 0's timer armed (18.2 Hz). Timers need a running event loop: a PIT built outside one arms
channel 0 at :meth:`PITState.reset` (the machine calls it at start) or when the guest loads it.
"""

from __future__ import annotations

import asyncio

from .base import Device, DeviceHost
from .generic import IRQOut

__all__ = ["PIT_FREQ", "PITChannelState", "PITState"]

#: The PIT's input clock in Hz.
PIT_FREQ = 1_193_182
_NS_PER_S = 1_000_000_000

RW_STATE_LSB, RW_STATE_MSB, RW_STATE_WORD0, RW_STATE_WORD1 = 1, 2, 3, 4


class PITChannelState:
    """One counter of the 8254 (QEMU's ``PITChannelState``)."""

    __slots__ = ("count", "latched_count", "count_latched", "status_latched", "status", "read_state",
                 "write_state", "write_latch", "rw_mode", "mode", "bcd", "gate", "count_load_time",
                 "next_transition_time", "irq_disabled")

    def __init__(self, gate: int, now: int) -> None:
        self.count = 0x10000
        self.latched_count = 0
        self.count_latched = 0
        self.status_latched = 0
        self.status = 0
        self.read_state = 0
        self.write_state = 0
        self.write_latch = 0
        self.rw_mode = 0
        self.mode = 3
        self.bcd = 0
        self.gate = gate
        self.count_load_time = now
        self.next_transition_time = -1
        self.irq_disabled = False

    def _mode(self) -> int:
        return self.mode - 4 if self.mode >= 6 else self.mode  # 6, 7 alias 2, 3

    def _ticks(self, now: int) -> int:
        return max(0, now - self.count_load_time) * PIT_FREQ // _NS_PER_S

    def get_count(self, now: int) -> int:
        """``pit_get_count``: the counter as the guest would latch it at ``now``."""
        d = self._ticks(now)
        mode = self._mode()
        if mode in (0, 1, 4, 5):
            return (self.count - d) & 0xFFFF
        if mode == 3:
            return self.count - (2 * d) % self.count
        return self.count - d % self.count

    def get_out(self, now: int) -> int:
        """``pit_get_out``: the OUT pin at ``now``."""
        d = self._ticks(now)
        mode, count = self._mode(), self.count
        if mode == 0:
            return 1 if d >= count else 0
        if mode == 1:
            return 1 if d < count else 0
        if mode == 2:
            return 1 if d % count == 0 and d != 0 else 0
        if mode == 3:
            return 1 if d % count < (count + 1) >> 1 else 0
        return 1 if d == count else 0  # modes 4 and 5: a one-tick strobe

    def next_transition(self, now: int) -> int:
        """``pit_get_next_transition_time``: when OUT next changes after ``now``, or -1 if never."""
        d = self._ticks(now)
        mode, count = self._mode(), self.count
        if mode in (0, 1):
            if d >= count:
                return -1
            next_ticks = count
        elif mode == 2:
            base = d - d % count
            next_ticks = base + count if d == base and d != 0 else base + count + 1
        elif mode == 3:
            base = d - d % count
            half = (count + 1) >> 1
            next_ticks = base + half if d - base < half else base + count
        else:
            if d < count:
                next_ticks = count
            elif d == count:
                next_ticks = count + 1
            else:
                return -1
        t = self.count_load_time + next_ticks * _NS_PER_S // PIT_FREQ
        return t if t > now else now + 1


class PITState(Device):
    """QEMU's ``PITCommonState`` (``isa-pit``): three channels at ``iobase``, IRQ from channel 0."""

    type_name = "isa-pit"

    def __init__(self, host: DeviceHost, *, iobase: int = 0x40, isa_irq: int = 0) -> None:
        super().__init__(host, "pit")
        self.iobase = iobase
        self.reads = 0
        self.writes = 0
        self.irq = IRQOut(host, isa_irq, "pit irq")
        self.irq_timer = host.timer_new_ns("pit", self._irq_timer)
        self._cost = host.costs.handler("pit")
        now = _now_if_running(host)
        self.channels = [PITChannelState(1 if i != 2 else 0, 0 if now is None else now) for i in range(3)]
        self.region = self.region_io("pit", 4, self._read, self._write, impl_max=1)
        self.map_io(iobase, self.region)
        if now is not None:
            self.reset()
        else:
            self._reset_at_start = True

    def reset(self) -> None:
        """``pit_reset``: mode 3, count 0x10000, channel 0's timer armed (needs a running loop)."""
        now = self.host.now_ns()
        for i, s in enumerate(self.channels):
            s.mode = 3
            s.gate = 1 if i != 2 else 0
            s.count_load_time = now
            s.count = 0x10000
        s = self.channels[0]
        if not s.irq_disabled:
            s.next_transition_time = s.next_transition(now)
            self.irq_timer.mod_ns(s.next_transition_time)

    # -- inputs from other devices (under the BQL) -------------------------------------------------
    def set_gate(self, channel: int, val: int) -> None:
        """``pit_set_gate``: a rising edge restarts the count in modes 1, 2, 3 and 5."""
        s = self.channels[channel]
        if s._mode() in (1, 2, 3, 5) and s.gate < val:
            s.count_load_time = self.host.now_ns()
            if channel == 0:
                self._irq_timer_update(s, s.count_load_time)
        s.gate = val

    def channel_info(self, channel: int) -> tuple[int, int, int, int]:
        """``pit_get_channel_info``: (gate, mode, initial count, OUT now)."""
        s = self.channels[channel]
        return s.gate, s.mode, s.count, s.get_out(self.host.now_ns())

    def irq_control(self, enable: bool) -> None:
        """``pit_irq_control``: the HPET's legacy replacement turns channel 0's IRQ off and on."""
        s = self.channels[0]
        if enable:
            s.irq_disabled = False
            self._irq_timer_update(s, self.host.now_ns())
        else:
            s.irq_disabled = True
            self.irq_timer.delete()

    # -- region handlers ---------------------------------------------------------------------------
    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        return self._ioport_read(offset & 3)

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1
        self._ioport_write(offset & 3, value & 0xFF)
        if self.irq.pending:
            await self.irq.flush()

    # -- pit_ioport_read / pit_ioport_write ---------------------------------------------------------
    def _ioport_write(self, addr: int, val: int) -> None:
        if addr == 3:
            channel = val >> 6
            if channel == 3:  # read-back command
                now = self.host.now_ns()
                for i, s in enumerate(self.channels):
                    if not val & (2 << i):
                        continue
                    if not val & 0x20:
                        self._latch_count(s)
                    if not val & 0x10 and not s.status_latched:
                        s.status = (s.get_out(now) << 7) | (s.rw_mode << 4) | (s.mode << 1) | s.bcd
                        s.status_latched = 1
                return
            s = self.channels[channel]
            access = (val >> 4) & 3
            if access == 0:
                self._latch_count(s)
            else:
                s.rw_mode = s.read_state = s.write_state = access
                s.mode = (val >> 1) & 7
                s.bcd = val & 1
            return
        s = self.channels[addr]
        if s.write_state == RW_STATE_MSB:
            self._load_count(addr, val << 8)
        elif s.write_state == RW_STATE_WORD0:
            s.write_latch = val
            s.write_state = RW_STATE_WORD1
        elif s.write_state == RW_STATE_WORD1:
            self._load_count(addr, s.write_latch | (val << 8))
            s.write_state = RW_STATE_WORD0
        else:
            self._load_count(addr, val)

    def _ioport_read(self, addr: int) -> int:
        if addr == 3:
            return 0  # the control word register is write-only
        s = self.channels[addr]
        if s.status_latched:
            s.status_latched = 0
            return s.status
        if s.count_latched:
            if s.count_latched == RW_STATE_MSB:
                s.count_latched = 0
                return s.latched_count >> 8
            if s.count_latched == RW_STATE_WORD0:
                s.count_latched = RW_STATE_MSB
                return s.latched_count & 0xFF
            s.count_latched = 0
            return s.latched_count & 0xFF
        count = s.get_count(self.host.now_ns())
        if s.read_state == RW_STATE_MSB:
            return (count >> 8) & 0xFF
        if s.read_state == RW_STATE_WORD0:
            s.read_state = RW_STATE_WORD1
            return count & 0xFF
        if s.read_state == RW_STATE_WORD1:
            s.read_state = RW_STATE_WORD0
            return (count >> 8) & 0xFF
        return count & 0xFF

    def _latch_count(self, s: PITChannelState) -> None:
        """``pit_latch_count``: freeze the counter until read (a second latch is ignored)."""
        if not s.count_latched:
            s.latched_count = s.get_count(self.host.now_ns())
            s.count_latched = s.rw_mode

    def _load_count(self, channel: int, val: int) -> None:
        """``pit_load_count``: 0 means 0x10000; counting restarts now."""
        s = self.channels[channel]
        s.count = val or 0x10000
        s.count_load_time = self.host.now_ns()
        if channel == 0:
            self._irq_timer_update(s, s.count_load_time)

    # -- channel 0's interrupt ----------------------------------------------------------------------
    def _irq_timer_update(self, s: PITChannelState, current_time: int) -> None:
        """``pit_irq_timer_update``: drive IRQ 0 to OUT and arm the timer for OUT's next change."""
        if s.irq_disabled:
            return
        expire = s.next_transition(current_time)
        self.irq.set(s.get_out(current_time))
        s.next_transition_time = expire
        if expire != -1:
            self.irq_timer.mod_ns(expire)
        else:
            self.irq_timer.delete()

    def _irq_timer(self) -> None:
        """``pit_irq_timer`` (main loop, BQL held)."""
        s = self.channels[0]
        self._irq_timer_update(s, s.next_transition_time)

    def __repr__(self) -> str:
        c = self.channels
        return (f"<PITState {self.name!r} at {self.iobase:#x} "
                + " ".join(f"ch{i}:mode{s.mode}/{s.count:#x}" for i, s in enumerate(c)) + ">")


def _now_if_running(host: DeviceHost) -> int | None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return host.now_ns()

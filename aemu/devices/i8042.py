"""The i8042 keyboard controller (``i8042-data`` at 0x60, ``i8042-cmd`` at 0x64; ISA IRQ 1 and 12).

After QEMU's hw/input/pckbd.c with a minimal PS/2 keyboard and mouse behind it (hw/input/ps2.c):
enough for the Linux i8042 and atkbd probes. The status register (0x64 read) has OBF while output
waits, MOUSE_OBF when it comes from the auxiliary port, SELFTEST after a successful self test.
Controller commands (0x64 write): read/write the command byte (0x20/0x60), self test 0xAA -> 0x55,
interface tests 0xAB/0xA9 -> 0x00, keyboard disable/enable 0xAD/0xAE, mouse disable/enable
0xA7/0xA8, read input/output port 0xC0/0xD0, write output port 0xD1, write to the keyboard or
aux output buffer 0xD2/0xD3, send to the mouse 0xD4, A20 0xDD/0xDF, and pulses 0xF0-0xFF (0xFE:
CPU reset). A reset request is counted in :attr:`I8042.reset_requests` (and ``on_reset`` called);
the machine decides what a reset does.

Output is queued per port; keyboard output raises IRQ 1 when the command byte enables it (bit 0)
and the keyboard is not disabled (bit 4), aux output raises IRQ 12 when bit 1 is set. As in QEMU,
reading a byte lowers the line and raises it again if more output waits (a new edge per byte).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .base import Device, DeviceHost
from .generic import IRQOut

__all__ = ["I8042"]

# status register
STAT_OBF, STAT_SELFTEST, STAT_CMD, STAT_UNLOCKED, STAT_MOUSE_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
# command byte ("mode")
MODE_KBD_INT, MODE_MOUSE_INT, MODE_DISABLE_KBD, MODE_DISABLE_MOUSE, MODE_KCC = 0x01, 0x02, 0x10, 0x20, 0x40
# output port
OUT_RESET, OUT_A20, OUT_OBF, OUT_MOUSE_OBF, OUT_ONES = 0x01, 0x02, 0x10, 0x20, 0xCC
# replies
ACK, RESEND, POR = 0xFA, 0xFE, 0xAA
#: PS/2 devices buffer at most this many bytes (QEMU's PS2_QUEUE_SIZE)
QUEUE_SIZE = 16

_KBD, _AUX = 1, 2


class I8042(Device):
    """QEMU's ``ISAKBDState`` (``i8042``) with a PS/2 keyboard and mouse."""

    type_name = "i8042"

    def __init__(self, host: DeviceHost, *, data_port: int = 0x60, cmd_port: int = 0x64, kbd_irq: int = 1,
                 mouse_irq: int = 12, mode: int = MODE_KBD_INT | MODE_MOUSE_INT,
                 on_reset: Callable[[], None] | None = None) -> None:
        super().__init__(host, "i8042")
        self.on_reset = on_reset
        self.reset_requests = 0
        self.reads = 0
        self.writes = 0
        self.irq_kbd = IRQOut(host, kbd_irq, "i8042 irq")
        self.irq_mouse = IRQOut(host, mouse_irq, "i8042 irq")
        self.kbd_queue: deque[int] = deque()
        self.aux_queue: deque[int] = deque()
        self._data_cost = host.costs.handler("i8042-data")
        self._cmd_cost = host.costs.handler("i8042-cmd")
        self.reset()
        self.mode = mode & 0xFF
        self.data_region = self.region_io("i8042-data", 1, self._data_read, self._data_write, impl_max=1)
        self.cmd_region = self.region_io("i8042-cmd", 1, self._cmd_read, self._cmd_write, impl_max=1)
        self.map_io(data_port, self.data_region)
        self.map_io(cmd_port, self.cmd_region)

    def reset(self) -> None:
        """``kbd_reset`` (QEMU's power-on values; SeaBIOS leaves the command byte at 0x61)."""
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.write_cmd = 0
        self.kbd_queue.clear()
        self.aux_queue.clear()
        self._kbd_last = 0
        self._aux_last = 0
        self._kbd_expect = 0  # keyboard command waiting for its parameter byte
        self._aux_expect = 0
        self.kbd_scanning = True
        self.scancode_set = 2
        self.leds = 0

    @property
    def a20(self) -> bool:
        """Whether the controller drives A20 on (output port bit 1)."""
        return bool(self.outport & OUT_A20)

    # -- region handlers -------------------------------------------------------------------------
    async def _cmd_read(self, offset: int, size: int) -> int:
        """``kbd_read_status``."""
        await self.host.delay(self._cmd_cost)
        self.reads += 1
        return self.status

    async def _cmd_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cmd_cost)
        self.writes += 1
        self._write_command(value & 0xFF)
        await self._flush_irqs()

    async def _data_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._data_cost)
        self.reads += 1
        value = self._read_data()
        await self._flush_irqs()
        return value

    async def _data_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._data_cost)
        self.writes += 1
        self._write_data(value & 0xFF)
        await self._flush_irqs()

    async def _flush_irqs(self) -> None:
        if self.irq_kbd.pending:
            await self.irq_kbd.flush()
        if self.irq_mouse.pending:
            await self.irq_mouse.flush()

    # -- the controller (kbd_write_command / kbd_read_data / kbd_write_data) ------------------------
    def _write_command(self, val: int) -> None:
        if val & 0xF0 == 0xF0:  # pulse output port bits 3..0: only bit 0 (CPU reset) matters
            val = 0xFE if not val & 1 else 0xFF
        if val == 0x20:
            self._queue(self.mode, _KBD)
        elif val in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.write_cmd = val
        elif val == 0xA7:
            self.mode |= MODE_DISABLE_MOUSE
        elif val == 0xA8:
            self.mode &= ~MODE_DISABLE_MOUSE
        elif val in (0xA9, 0xAB):  # mouse / keyboard interface test: no error
            self._queue(0x00, _KBD)
        elif val == 0xAA:
            self.status |= STAT_SELFTEST
            self._queue(0x55, _KBD)
        elif val == 0xAD:
            self.mode |= MODE_DISABLE_KBD
            self._update_irq()
        elif val == 0xAE:
            self.mode &= ~MODE_DISABLE_KBD
            self._update_irq()
        elif val == 0xC0:
            self._queue(0x80, _KBD)
        elif val == 0xD0:
            self._queue(self.outport, _KBD)
        elif val == 0xDF:
            self.outport |= OUT_A20
        elif val == 0xDD:
            self.outport &= ~OUT_A20
        elif val == 0xFE:
            self._reset_request()
        # 0xFF and unknown commands do nothing (QEMU logs the unknown ones)

    def _write_data(self, val: int) -> None:
        cmd, self.write_cmd = self.write_cmd, 0
        if cmd == 0:
            self._keyboard_command(val)
        elif cmd == 0x60:
            self.mode = val
            self._update_irq()
        elif cmd == 0xD1:
            self.outport = val
            if not val & OUT_RESET:
                self._reset_request()
        elif cmd == 0xD2:
            self._queue(val, _KBD)
        elif cmd == 0xD3:
            self._queue(val, _AUX)
        elif cmd == 0xD4:
            self._mouse_command(val)

    def _read_data(self) -> int:
        """``kbd_read_data`` / ``ps2_read_data``: an empty port repeats its last byte."""
        pending = self._pending()
        if pending == _AUX:
            q, source = self.aux_queue, _AUX
        else:
            q, source = self.kbd_queue, _KBD
        if not q:
            return self._aux_last if source == _AUX else self._kbd_last
        value = q.popleft()
        if source == _AUX:
            self._aux_last = value
        else:
            self._kbd_last = value
        self._update_irq(lower=source)  # the device drops its line, then raises it if more waits
        self._update_irq()
        return value

    def _reset_request(self) -> None:
        self.reset_requests += 1
        if self.on_reset is not None:
            self.on_reset()

    # -- the PS/2 devices (a minimal ps2_write_keyboard / ps2_write_mouse) --------------------------
    def _keyboard_command(self, val: int) -> None:
        expect, self._kbd_expect = self._kbd_expect, 0
        if expect == 0xED:  # set LEDs
            self.leds = val & 0x07
            self._queue(ACK, _KBD)
        elif expect == 0xF3:  # typematic rate
            self._queue(ACK, _KBD)
        elif expect == 0xF0:  # scancode set: 0 asks, 1..3 sets
            self._queue(ACK, _KBD)
            if val == 0:
                translated = {1: 0x43, 2: 0x41, 3: 0x3F}
                self._queue(translated[self.scancode_set] if self.mode & MODE_KCC else self.scancode_set, _KBD)
            elif 1 <= val <= 3:
                self.scancode_set = val
        elif val in (0xED, 0xF3, 0xF0):
            self._kbd_expect = val
            self._queue(ACK, _KBD)
        elif val == 0xEE:  # echo
            self._queue(0xEE, _KBD)
        elif val == 0xF2:  # identify: an MF2 keyboard
            for b in (ACK, 0xAB, 0x41 if self.mode & MODE_KCC else 0x83):
                self._queue(b, _KBD)
        elif val == 0xF4:
            self.kbd_scanning = True
            self._queue(ACK, _KBD)
        elif val in (0xF5, 0xF6):
            self.kbd_scanning = val == 0xF6
            self._queue(ACK, _KBD)
        elif val == 0xFF:  # reset: ACK, then the power-on self-test result
            self.kbd_scanning = True
            self.scancode_set = 2
            self._queue(ACK, _KBD)
            self._queue(POR, _KBD)
        else:
            self._queue(RESEND, _KBD)

    def _mouse_command(self, val: int) -> None:
        expect, self._aux_expect = self._aux_expect, 0
        if expect:  # the parameter of set resolution / sample rate
            self._queue(ACK, _AUX)
        elif val in (0xE8, 0xF3):
            self._aux_expect = val
            self._queue(ACK, _AUX)
        elif val == 0xE9:  # status request: status, resolution, sample rate
            for b in (ACK, 0x00, 0x02, 100):
                self._queue(b, _AUX)
        elif val == 0xEB:  # poll: an empty movement packet
            for b in (ACK, 0x08, 0x00, 0x00):
                self._queue(b, _AUX)
        elif val == 0xF2:  # get type: a standard PS/2 mouse
            self._queue(ACK, _AUX)
            self._queue(0x00, _AUX)
        elif val == 0xFF:
            for b in (ACK, POR, 0x00):
                self._queue(b, _AUX)
        else:
            self._queue(ACK, _AUX)

    # -- output and interrupts ---------------------------------------------------------------------
    def _queue(self, value: int, source: int) -> None:
        """``kbd_queue``: a byte from the keyboard side or the aux side of the controller."""
        q = self.aux_queue if source == _AUX else self.kbd_queue
        if len(q) < QUEUE_SIZE:
            q.append(value & 0xFF)
        self._update_irq()

    def _pending(self) -> int:
        return (_KBD if self.kbd_queue else 0) | (_AUX if self.aux_queue else 0)

    def _update_irq(self, lower: int = 0) -> None:
        """``kbd_update_irq``: OBF bits, and IRQ 1 / IRQ 12 from whichever output waits."""
        pending = self._pending() & ~lower
        kbd_level = mouse_level = 0
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF)
        if pending:
            self.status |= STAT_OBF
            self.outport |= OUT_OBF
            if pending == _AUX:  # keyboard output goes first
                self.status |= STAT_MOUSE_OBF
                self.outport |= OUT_MOUSE_OBF
                mouse_level = 1 if self.mode & MODE_MOUSE_INT else 0
            elif self.mode & MODE_KBD_INT and not self.mode & MODE_DISABLE_KBD:
                kbd_level = 1
        self.irq_kbd.set(kbd_level)
        self.irq_mouse.set(mouse_level)

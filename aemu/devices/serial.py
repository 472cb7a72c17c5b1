"""The 16550A UART (``serial`` at 0x3f8, ISA IRQ 4), after QEMU's hw/char/serial.c.

What a Linux boot does with it: probe the registers (scratch, IER, FIFO, loopback), set the divisor
through DLAB, then write the console byte by byte, polling LSR for THRE or taking the THRE
interrupt. Transmission is instantaneous as in QEMU (the chardev takes each byte at once), so THRE
and TEMT are set again by the time the write returns. Transmitted bytes go to :attr:`output` and
to the optional ``on_output`` callback; :meth:`SerialState.feed` queues input, which enters the
receiver as fast as RBR or the FIFO can take it (QEMU's ``serial_can_receive``), sets DR and
raises the receive interrupt (at the FIFO trigger level, or after four character times with the
FIFO on).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .base import Device, DeviceHost
from .generic import IRQOut

__all__ = ["SerialState"]

_NS_PER_S = 1_000_000_000

# registers (offsets) and bits, 16550A data sheet names
LCR_DLAB = 0x80
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_ID = 0x01, 0x06
IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FE = 0xC0
MCR_LOOP, MCR_OUT2 = 0x10, 0x08
MSR_DCD, MSR_DSR, MSR_CTS, MSR_ANY_DELTA = 0x80, 0x20, 0x10, 0x0F
LSR_DR, LSR_OE, LSR_BI, LSR_THRE, LSR_TEMT, LSR_INT_ANY = 0x01, 0x02, 0x10, 0x20, 0x40, 0x1E
FCR_FE, FCR_RFR, FCR_XFR = 0x01, 0x02, 0x04
FIFO_LENGTH = 16
#: receive FIFO trigger level by FCR bits 7..6
_ITL = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}


class SerialState(Device):
    """QEMU's ``SerialState`` on the ISA bus (``isa-serial``): 8 registers at ``iobase``."""

    type_name = "isa-serial"

    def __init__(self, host: DeviceHost, *, iobase: int = 0x3F8, isa_irq: int = 4, baudbase: int = 115_200,
                 on_output: Callable[[bytes], None] | None = None) -> None:
        super().__init__(host, "serial")
        self.iobase = iobase
        self.baudbase = baudbase
        #: every byte the guest transmitted (loopback mode excepted)
        self.output = bytearray()
        self.on_output = on_output
        self.reads = 0
        self.writes = 0
        self.irq = IRQOut(host, isa_irq, "serial irq")
        self._cost = host.costs.handler("serial")
        self._input: deque[int] = deque()  # fed by the host, not yet taken by the receiver
        self.recv_fifo: deque[int] = deque()
        self.fifo_timeout_timer = host.timer_new_ns("serial-fifo-timeout", self._fifo_timeout)
        self.reset()
        self.region = self.region_io("serial", 8, self._read, self._write, valid_unaligned=True, impl_max=1)
        self.map_io(iobase, self.region)

    def reset(self) -> None:
        """``serial_reset``: 9600 baud 8N1, OUT2 set, nothing pending."""
        self.rbr = 0
        self.thr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.lcr = 0
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.mcr = MCR_OUT2
        self.scr = 0
        self.fcr = 0
        self.divider = 0x0C
        self.thr_ipending = 0
        self.timeout_ipending = 0
        self.recv_fifo_itl = 1
        self.recv_fifo.clear()
        self.char_transmit_time = (_NS_PER_S // 9600) * 10
        self.fifo_timeout_timer.delete()

    @property
    def baud(self) -> int:
        """Line speed set by the divisor latch."""
        return self.baudbase // self.divider if self.divider else 0

    # -- host side ----------------------------------------------------------------------------------
    async def feed(self, data: bytes) -> None:
        """Queue input from the outside world (the chardev) and let the receiver take what it can."""
        self._input.extend(data)
        async with self.host.bql_guard("serial feed"):
            self._accept_input()

    # -- region handlers ----------------------------------------------------------------------------
    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        value = self._ioport_read(offset)
        if self.irq.pending:
            await self.irq.flush()
        return value

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1
        self._ioport_write(offset, value)
        if self.irq.pending:
            await self.irq.flush()

    # -- registers (serial_ioport_read / serial_ioport_write) --------------------------------------
    def _ioport_read(self, offset: int) -> int:
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            if self.fcr & FCR_FE:
                ret = self.recv_fifo.popleft() if self.recv_fifo else 0
                if not self.recv_fifo:
                    self.lsr &= ~(LSR_DR | LSR_BI)
                else:
                    self.fifo_timeout_timer.mod_ns(self.host.now_ns() + self.char_transmit_time * 4)
                self.timeout_ipending = 0
            else:
                ret = self.rbr
                self.lsr &= ~(LSR_DR | LSR_BI)
            self._update_irq()
            if not self.mcr & MCR_LOOP:  # in loopback mode the outside world is cut off
                self._accept_input()
            return ret
        if offset == 1:
            return (self.divider >> 8) & 0xFF if self.lcr & LCR_DLAB else self.ier
        if offset == 2:
            ret = self.iir
            if ret & IIR_ID == IIR_THRI:  # reading IIR acknowledges the THRE interrupt
                self.thr_ipending = 0
                self._update_irq()
            return ret
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            ret = self.lsr
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return ret
        if offset == 6:
            if self.mcr & MCR_LOOP:  # modem outputs wired back to the inputs
                m = self.mcr
                return ((m & 0x0C) << 4) | ((m & 0x02) << 3) | ((m & 0x01) << 5)
            ret = self.msr
            if self.msr & MSR_ANY_DELTA:
                self.msr &= 0xF0
                self._update_irq()
            return ret
        return self.scr

    def _ioport_write(self, offset: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
                self._update_parameters()
                return
            self.thr = value
            self.thr_ipending = 0
            self.lsr &= ~(LSR_THRE | LSR_TEMT)
            self._update_irq()
            self._xmit()
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
                self._update_parameters()
                return
            changed = (self.ier ^ value) & 0x0F
            self.ier = value & 0x0F
            if changed & IER_THRI:
                # enabling THRI while THR is empty raises the interrupt (Windows and Linux rely on it)
                self.thr_ipending = 1 if self.ier & IER_THRI and self.lsr & LSR_THRE else 0
            if changed:
                self._update_irq()
        elif offset == 2:
            if (value ^ self.fcr) & FCR_FE:  # switching the FIFOs on or off flushes them
                value |= FCR_XFR | FCR_RFR
            if value & FCR_RFR:
                self.lsr &= ~(LSR_DR | LSR_BI)
                self.fifo_timeout_timer.delete()
                self.timeout_ipending = 0
                self.recv_fifo.clear()
            if value & FCR_XFR:
                self.lsr |= LSR_THRE
                self.thr_ipending = 1
            self.fcr = value & 0xC9
            if self.fcr & FCR_FE:
                self.iir |= IIR_FE
                self.recv_fifo_itl = _ITL[value & 0xC0]
            else:
                self.iir &= ~IIR_FE
            self._update_irq()
            self._accept_input()
        elif offset == 3:
            self.lcr = value
            self._update_parameters()
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
        # 5 (LSR) and 6 (MSR) are read-only

    # -- internals -----------------------------------------------------------------------------------
    def _update_irq(self) -> None:
        """``serial_update_irq``: the highest-priority pending source goes into IIR and the line."""
        ier, lsr = self.ier, self.lsr
        if ier & IER_RLSI and lsr & LSR_INT_ANY:
            iid = IIR_RLSI
        elif ier & IER_RDI and self.timeout_ipending:
            iid = IIR_CTI
        elif ier & IER_RDI and lsr & LSR_DR and (
                not self.fcr & FCR_FE or len(self.recv_fifo) >= self.recv_fifo_itl):
            iid = IIR_RDI
        elif ier & IER_THRI and self.thr_ipending:
            iid = IIR_THRI
        elif ier & IER_MSI and self.msr & MSR_ANY_DELTA:
            iid = IIR_MSI
        else:
            iid = IIR_NO_INT
        self.iir = iid | (self.iir & 0xF0)
        self.irq.set(0 if iid == IIR_NO_INT else 1)

    def _xmit(self) -> None:
        """``serial_xmit``: the chardev takes the byte at once; THR is empty again."""
        byte = self.thr
        if self.mcr & MCR_LOOP:
            self._receive(bytes((byte,)))
        else:
            self.output.append(byte)
            if self.on_output is not None:
                self.on_output(bytes((byte,)))
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_ipending = 1
        self._update_irq()

    def _update_parameters(self) -> None:
        """``serial_update_parameters``: character time from divisor and line format."""
        if not self.divider:
            return
        lcr = self.lcr
        frame = 1 + ((lcr & 0x03) + 5) + (1 if lcr & 0x08 else 0) + (2 if lcr & 0x04 else 1)
        speed = max(1, self.baudbase // self.divider)
        self.char_transmit_time = (_NS_PER_S // speed) * frame

    def _can_receive(self) -> int:
        """``serial_can_receive``: how many bytes the receiver takes now."""
        if self.fcr & FCR_FE:
            n = len(self.recv_fifo)
            if n >= FIFO_LENGTH:
                return 0
            return self.recv_fifo_itl - n if n <= self.recv_fifo_itl else 1
        return 0 if self.lsr & LSR_DR else 1

    def _accept_input(self) -> None:
        """``qemu_chr_accept_input``: move fed bytes into the receiver while it has room."""
        backlog = self._input
        while backlog:
            n = self._can_receive()
            if n <= 0:
                return
            self._receive(bytes(backlog.popleft() for _ in range(min(n, len(backlog)))))

    def _receive(self, data: bytes) -> None:
        """``serial_receive1``."""
        if self.fcr & FCR_FE:
            for byte in data:
                if len(self.recv_fifo) < FIFO_LENGTH:
                    self.recv_fifo.append(byte)
                else:  # overruns do not overwrite the FIFO
                    self.lsr |= LSR_OE
            self.lsr |= LSR_DR
            self.fifo_timeout_timer.mod_ns(self.host.now_ns() + self.char_transmit_time * 4)
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = data[0]
            self.lsr |= LSR_DR
        self._update_irq()

    def _fifo_timeout(self) -> None:
        """``fifo_timeout_int`` (main loop, BQL held): data sat below the trigger level too long."""
        if self.recv_fifo:
            self.timeout_ipending = 1
            self._update_irq()

    def __repr__(self) -> str:
        return (f"<SerialState {self.name!r} at {self.iobase:#x} {self.baud} baud, "
                f"{len(self.output)} bytes out, {len(self._input)} queued in>")

"""The MC146818 RTC and CMOS (``rtc`` at 0x70-0x71 with ``rtc-index`` over 0x70; ISA IRQ 8).

After QEMU's hw/rtc/mc146818rtc.c. As in QEMU, ``rtc`` is a 2-port I/O region and ``rtc-index``
a 1-port I/O region with the same callbacks placed over its first port (in QEMU so that KVM can
coalesce the index writes), so an access to 0x70 dispatches to ``rtc-index`` and one to 0x71 to
``rtc``. ``rtc`` asks for a coalesced-MMIO flush before each access, as QEMU's does.

Time is kept as QEMU keeps it: the guest's RTC time in ns is
``base_rtc * 1e9 + now - last_update + offset``; the time registers are refreshed from it when read
(BCD or binary, 24 or 12 hour, by register B), and a guest write of a time register re-bases it.
Register A selects the periodic rate and holds UIP (set in the last 244 us before each update);
register C holds the update-ended (UF), alarm (AF) and periodic (PF) flags and IRQF, and reading it
clears them and lowers IRQ 8. An update timer fires at each second boundary (QEMU's
``rtc_update_timer``), sets UF (and AF at the alarm time) and raises IRQ 8 when register B enables
the flag; like QEMU it stops ticking while UF is already set and no alarm can become due, and is
re-armed when the guest reads register C. The periodic timer runs only while PIE is set (QEMU's
choice), with the ``discard`` lost-tick policy.

Timers need a running event loop: a device built outside one arms them at :meth:`RTCState.reset`
(the machine calls it at start) or at the first guest access that needs them.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from datetime import datetime, timezone

from .base import Device, DeviceHost
from .generic import IRQOut

__all__ = ["DEFAULT_RTC_DATE", "RTCState", "RTC_CLOCK_RATE"]

_NS_PER_S = 1_000_000_000
#: The RTC's base clock (32.768 kHz).
RTC_CLOCK_RATE = 32_768
#: UIP is set this long before each update (eight 32 kHz cycles, ~244 us).
UIP_HOLD_LENGTH = 8 * _NS_PER_S // RTC_CLOCK_RATE
#: The date the RTC starts at when none is given (a fixed date keeps runs deterministic).
DEFAULT_RTC_DATE = datetime(2025, 1, 1, tzinfo=timezone.utc)

# CMOS indexes
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 10, 11, 12, 13
CENTURY = 0x32
IBM_PS2_CENTURY_BYTE = 0x37
_TIME_REGS = frozenset((SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY))
# register bits
REG_A_UIP = 0x80
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE, REG_B_SQWE = 0x80, 0x40, 0x20, 0x10, 0x08
REG_B_DM, REG_B_24H = 0x04, 0x02
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF, REG_C_MASK = 0x80, 0x40, 0x20, 0x10, 0x70


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def periodic_period_to_clock(period_code: int) -> int:
    """Register A's rate select (low 4 bits) as a period in 32 kHz cycles; 0 = off."""
    if not period_code:
        return 0
    if period_code <= 2:
        period_code += 7
    return 1 << (period_code - 1)


class RTCState(Device):
    """QEMU's ``MC146818RtcState`` (``mc146818rtc``): 128 bytes of CMOS, the clock and IRQ 8."""

    type_name = "mc146818rtc"

    def __init__(self, host: DeviceHost, *, iobase: int = 0x70, isa_irq: int = 8,
                 date: datetime = DEFAULT_RTC_DATE, base_year: int = 0) -> None:
        super().__init__(host, "rtc")
        self.iobase = iobase
        #: QEMU's ``base_year`` (pc machines pass 2000, which QEMU turns into 0: the year is full).
        self.base_year = base_year
        self.cmos = bytearray(128)
        self.cmos_index = 0
        #: bit 7 of the last index write (NMI disable on real hardware; QEMU ignores it)
        self.nmi_disabled = False
        self.reads = 0
        self.writes = 0
        self.irq = IRQOut(host, isa_irq, "rtc irq")
        self._cost = host.costs.handler("rtc")
        self._index_cost = host.costs.handler("rtc-index")
        self.periodic_timer = host.timer_new_ns("rtc-periodic", self._periodic_timer)
        self.update_timer = host.timer_new_ns("rtc-update", self._update_timer)
        self.next_periodic_time = 0
        self.period = 0
        self.next_alarm_time = 0
        self._armed = False
        # rtc_realizefn
        self.cmos[REG_A] = 0x26
        self.cmos[REG_B] = REG_B_24H
        self.cmos[REG_C] = 0x00
        self.cmos[REG_D] = 0x80
        now = host.now_ns() if _loop_running() else 0
        self.base_rtc = calendar.timegm(date.utctimetuple())
        self.last_update = now
        self.offset = 0
        self._set_cmos(time.gmtime(self.base_rtc))
        self.region = self.region_io("rtc", 2, self._read, self._write, impl_max=1)
        self.region.flush_coalesced_mmio = True
        self.index_region = self.region_io("rtc-index", 1, self._index_read, self._index_write, impl_max=1)
        self.region.add_subregion(0, self.index_region)
        self.map_io(iobase, self.region)
        if _loop_running():
            self.reset()
        else:
            self._reset_at_start = True

    # -- CMOS for the machine (mc146818rtc_set_cmos_data / _get_cmos_data) ------------------------
    def set_cmos_data(self, addr: int, value: int) -> None:
        """Set a CMOS byte as board code does (memory size, boot order, ...)."""
        if 0 <= addr < 128:
            self.cmos[addr] = value & 0xFF

    def get_cmos_data(self, addr: int) -> int:
        """A CMOS byte as stored (time registers as of their last refresh)."""
        return self.cmos[addr]

    def reset(self) -> None:
        """``rtc_reset``: interrupts off, flags clear, update timer armed (needs a running loop)."""
        self.cmos[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE)
        self.cmos[REG_C] &= ~(REG_C_UF | REG_C_IRQF | REG_C_PF | REG_C_AF)
        self._armed = True
        self._check_update_timer()
        self._periodic_timer_update(self.host.now_ns(), 0, False)

    # -- region handlers ---------------------------------------------------------------------------
    async def _index_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._index_cost)
        self.reads += 1
        return 0xFF  # the index port is write-only

    async def _index_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._index_cost)
        self.writes += 1
        self.cmos_index = value & 0x7F
        self.nmi_disabled = bool(value & 0x80)

    async def _read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        if not offset & 1:
            return 0xFF
        if not self._armed:
            self.reset()
        value = self._cmos_read()
        if self.irq.pending:
            await self.irq.flush()
        return value

    async def _write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._cost)
        self.writes += 1
        if not offset & 1:
            self.cmos_index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
            return
        if not self._armed:
            self.reset()
        self._cmos_write(value & 0xFF)
        if self.irq.pending:
            await self.irq.flush()

    # -- cmos_ioport_read / cmos_ioport_write -------------------------------------------------------
    def _cmos_read(self) -> int:
        index = self.cmos_index
        if index == IBM_PS2_CENTURY_BYTE:
            index = self.cmos_index = CENTURY
        if index in _TIME_REGS:
            if self._running():
                self._update_time()
            return self.cmos[index]
        if index == REG_A:
            ret = self.cmos[REG_A]
            if self._update_in_progress():
                ret |= REG_A_UIP
            return ret
        if index == REG_C:
            ret = self.cmos[REG_C]
            self.irq.set(0)
            self.cmos[REG_C] = 0
            if ret & (REG_C_UF | REG_C_AF):
                self._check_update_timer()
            return ret
        return self.cmos[index]

    def _cmos_write(self, data: int) -> None:
        index = self.cmos_index
        cmos = self.cmos
        if index in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM):
            cmos[index] = data
            self._check_update_timer()
        elif index in _TIME_REGS or index == IBM_PS2_CENTURY_BYTE:
            if index == IBM_PS2_CENTURY_BYTE:
                index = self.cmos_index = CENTURY
            cmos[index] = data
            if self._running():  # in SET mode the clock is not re-based until SET is cleared
                self._set_time()
                self._check_update_timer()
        elif index == REG_A:
            update_periodic = (cmos[REG_A] ^ data) & 0x0F
            old_period = self._periodic_clock_ticks()
            if data & 0x60 == 0x60:  # divider chain held in reset
                if self._running():
                    self._update_time()
                cmos[REG_A] &= ~REG_A_UIP
            elif cmos[REG_A] & 0x60 == 0x60 and data & 0x70 <= 0x20:
                # leaving divider reset: the first update comes half a second later
                if not cmos[REG_B] & REG_B_SET:
                    self.offset = 500_000_000
                    self._set_time()
                cmos[REG_A] &= ~REG_A_UIP
            cmos[REG_A] = (data & ~REG_A_UIP) | (cmos[REG_A] & REG_A_UIP)  # UIP is read-only
            if update_periodic:
                self._periodic_timer_update(self.host.now_ns(), old_period, True)
            self._check_update_timer()
        elif index == REG_B:
            update_periodic = (cmos[REG_B] ^ data) & REG_B_PIE
            old_period = self._periodic_clock_ticks()
            if data & REG_B_SET:
                if self._running():  # freeze the registers at the time the clock stops
                    self._update_time()
                cmos[REG_A] &= ~REG_A_UIP
                data &= ~REG_B_UIE
            elif cmos[REG_B] & REG_B_SET and cmos[REG_A] & 0x70 <= 0x20:
                self.offset = self._guest_rtc_ns() % _NS_PER_S
                self._set_time()
            # a flag already set when its interrupt becomes enabled interrupts at once
            if data & cmos[REG_C] & REG_C_MASK:
                cmos[REG_C] |= REG_C_IRQF
                self.irq.set(1)
            else:
                cmos[REG_C] &= ~REG_C_IRQF
                self.irq.set(0)
            cmos[REG_B] = data
            if update_periodic:
                self._periodic_timer_update(self.host.now_ns(), old_period, True)
            self._check_update_timer()
        elif index in (REG_C, REG_D):
            pass  # read-only
        else:
            cmos[index] = data

    # -- the clock ------------------------------------------------------------------------------------
    def _running(self) -> bool:
        """``rtc_running``: not in SET mode and the divider chain runs."""
        return not self.cmos[REG_B] & REG_B_SET and self.cmos[REG_A] & 0x70 <= 0x20

    def _guest_rtc_ns(self) -> int:
        return self.base_rtc * _NS_PER_S + self.host.now_ns() - self.last_update + self.offset

    def _to_bcd(self, a: int) -> int:
        return a if self.cmos[REG_B] & REG_B_DM else ((a // 10) << 4) | (a % 10)

    def _from_bcd(self, a: int) -> int:
        if a & 0xC0 == 0xC0:
            return -1  # "don't care" in the alarm registers
        return a if self.cmos[REG_B] & REG_B_DM else (a >> 4) * 10 + (a & 0x0F)

    def _set_cmos(self, tm: time.struct_time) -> None:
        """``rtc_set_cmos``: write a broken-down UTC time into the time registers."""
        cmos, bcd = self.cmos, self._to_bcd
        cmos[SECONDS] = bcd(tm.tm_sec)
        cmos[MINUTES] = bcd(tm.tm_min)
        if cmos[REG_B] & REG_B_24H:
            cmos[HOURS] = bcd(tm.tm_hour)
        else:
            cmos[HOURS] = bcd(tm.tm_hour % 12 or 12) | (0x80 if tm.tm_hour >= 12 else 0)
        cmos[DAY_OF_WEEK] = bcd((tm.tm_wday + 1) % 7 + 1)  # Python: Monday=0; RTC: Sunday=1
        cmos[DAY_OF_MONTH] = bcd(tm.tm_mday)
        cmos[MONTH] = bcd(tm.tm_mon)
        year = tm.tm_year - self.base_year
        cmos[YEAR] = bcd(year % 100)
        cmos[CENTURY] = bcd(year // 100)

    def _update_time(self) -> None:
        """``rtc_update_time``: refresh the time registers from the clock (unless in SET mode)."""
        if not self.cmos[REG_B] & REG_B_SET:
            self._set_cmos(time.gmtime(self._guest_rtc_ns() // _NS_PER_S))

    def _hour(self, raw: int) -> int:
        hour = self._from_bcd(raw & 0x7F)
        if not self.cmos[REG_B] & REG_B_24H:
            hour = hour % 12 + (12 if raw & 0x80 else 0)
        return hour

    def _set_time(self) -> None:
        """``rtc_set_time``: re-base the clock on what the guest wrote into the time registers."""
        cmos, frm = self.cmos, self._from_bcd
        year = frm(cmos[YEAR]) + self.base_year + frm(cmos[CENTURY]) * 100
        try:
            seconds = calendar.timegm((year, frm(cmos[MONTH]), frm(cmos[DAY_OF_MONTH]),
                                       self._hour(cmos[HOURS]), frm(cmos[MINUTES]), frm(cmos[SECONDS])))
        except (ValueError, OverflowError):
            return  # not a date: keep counting from the previous base
        self.base_rtc = seconds
        self.last_update = self.host.now_ns()

    def _update_in_progress(self) -> bool:
        """``update_in_progress``: UIP in the last 244 us before an update (latched near the timer)."""
        if not self._running():
            return False
        if self.update_timer.pending and self.host.now_ns() >= self.update_timer.expire_ns - UIP_HOLD_LENGTH:
            self.cmos[REG_A] |= REG_A_UIP
            return True
        return self._guest_rtc_ns() % _NS_PER_S >= _NS_PER_S - UIP_HOLD_LENGTH

    # -- the update-ended and alarm timer --------------------------------------------------------------
    def _seconds_to_alarm(self) -> int:
        """Seconds from the current RTC second to the next one matching the alarm (1..86400)."""
        self._update_time()
        cmos, frm = self.cmos, self._from_bcd
        a_sec, a_min = frm(cmos[SECONDS_ALARM]), frm(cmos[MINUTES_ALARM])
        a_hour = -1 if cmos[HOURS_ALARM] & 0xC0 == 0xC0 else self._hour(cmos[HOURS_ALARM])
        now = self._hour(cmos[HOURS]) * 3600 + frm(cmos[MINUTES]) * 60 + frm(cmos[SECONDS])
        minute = now // 60
        dm = 0
        while dm <= 1440:
            h, m = divmod((minute + dm) % 1440, 60)
            if a_hour not in (-1, h):
                dm += 60 - m  # skip to the next hour
                continue
            if a_min not in (-1, m):
                dm += 1
                continue
            start = (minute + dm) * 60
            if a_sec == -1:
                s = max(start, now + 1)
                if s < start + 60:
                    return s - now
            elif start + a_sec > now and a_sec < 60:
                return start + a_sec - now
            dm += 1
        return 86400

    def _check_update_timer(self) -> None:
        """``check_update_timer``: arm the update timer for the next second (or the alarm)."""
        cmos = self.cmos
        if cmos[REG_A] & 0x60 == 0x60:  # dividers in reset: no updates, no interrupts
            self.update_timer.delete()
            return
        now = self.host.now_ns()
        next_update = now + _NS_PER_S - self._guest_rtc_ns() % _NS_PER_S
        self.next_alarm_time = next_update + (self._seconds_to_alarm() - 1) * _NS_PER_S
        if not cmos[REG_A] & REG_A_UIP and cmos[REG_C] & REG_C_UF:
            # UF is already set: only AF can still change, at the alarm time
            if cmos[REG_B] & REG_B_SET or cmos[REG_C] & REG_C_AF:
                self.update_timer.delete()
                return
            next_update = self.next_alarm_time
        if next_update != self.update_timer.expire_ns or not self.update_timer.pending:
            self.update_timer.mod_ns(next_update)

    def _update_timer(self) -> None:
        """``rtc_update_timer`` (main loop, BQL held): UF, maybe AF, and IRQ 8 if enabled."""
        cmos = self.cmos
        self._update_time()
        cmos[REG_A] &= ~REG_A_UIP
        irqs = REG_C_UF
        if self.host.now_ns() >= self.next_alarm_time:
            irqs |= REG_C_AF
        new_irqs = irqs & ~cmos[REG_C]
        cmos[REG_C] |= irqs
        if new_irqs & cmos[REG_B]:
            cmos[REG_C] |= REG_C_IRQF
            self.irq.set(1)
        self._check_update_timer()

    # -- the periodic interrupt -------------------------------------------------------------------------
    def _periodic_clock_ticks(self) -> int:
        if not self.cmos[REG_B] & REG_B_PIE:
            return 0
        return periodic_period_to_clock(self.cmos[REG_A] & 0x0F)

    def _periodic_timer_update(self, current_time: int, old_period: int, period_change: bool) -> None:
        """``periodic_timer_update`` with the ``discard`` lost-tick policy."""
        period = self.period = self._periodic_clock_ticks()
        if not period:
            self.periodic_timer.delete()
            return
        cur_clock = current_time * RTC_CLOCK_RATE // _NS_PER_S
        lost_clock = 0
        if old_period and period_change:
            # count the time since the last interrupt towards the new period
            last_clock = self.next_periodic_time * RTC_CLOCK_RATE // _NS_PER_S - old_period
            lost_clock = min(max(cur_clock - last_clock, 0), period)
        next_irq_clock = cur_clock + period - lost_clock
        self.next_periodic_time = next_irq_clock * _NS_PER_S // RTC_CLOCK_RATE + 1
        self.periodic_timer.mod_ns(self.next_periodic_time)

    def _periodic_timer(self) -> None:
        """``rtc_periodic_timer`` (main loop, BQL held): PF, and IRQ 8 since PIE is set."""
        self._periodic_timer_update(self.next_periodic_time, self.period, False)
        self.cmos[REG_C] |= REG_C_PF
        if self.cmos[REG_B] & REG_B_PIE:
            self.cmos[REG_C] |= REG_C_IRQF
            self.irq.set(1)

    def __repr__(self) -> str:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._guest_rtc_ns() // _NS_PER_S)) \
            if _loop_running() else "?"
        return f"<RTCState {self.name!r} at {self.iobase:#x} {t} UTC index={self.cmos_index:#x}>"

"""The ACPI PM block's timer (``acpi-tmr``) inside ``ich9-pm`` (q35) or ``piix4-pm`` (pc).

Models hw/acpi/core.c ``acpi_pm_tmr_*``: a 24-bit counter at 3,579,545 Hz derived from the
virtual clock, read at PM base + 8. Patch 2/6 of the BQL-free series marks its region lockless
(``memory_region_enable_lockless_io``): the read only computes from the virtual clock. The
overflow timer fires when bit 23 flips, sets TMR_STS in PM1 status (``acpi-evt``) and raises the
SCI (GSI 9) if TMR_EN is set -- from the main loop, under the BQL.
"""

from __future__ import annotations

from ..memory import MemoryRegion
from .base import Device, DeviceHost

__all__ = ["ACPIPMTimer", "PM_TIMER_FREQUENCY", "pm_timer_ticks"]

PM_TIMER_FREQUENCY = 3_579_545
_NS_PER_S = 1_000_000_000
_TMR_STS = 0x0001  # PM1_STS bit 0
_TMR_EN = 0x0001   # PM1_EN bit 0
_SCI_GSI = 9


def pm_timer_ticks(ns: int) -> int:
    """PM-timer ticks elapsed after ``ns`` of virtual time (``muldiv64(ns, FREQ, NANOSECONDS_PER_SECOND)``)."""
    return ns * PM_TIMER_FREQUENCY // _NS_PER_S


class ACPIPMTimer(Device):
    """``ich9-pm``/``piix4-pm`` with ``acpi-evt`` (PM1 status/enable), ``acpi-cnt`` and ``acpi-tmr``."""

    type_name = "acpi-pm"

    def __init__(self, host: DeviceHost, *, pm_base: int = 0x600, container_name: str = "ich9-pm",
                 size: int = 0x80) -> None:
        super().__init__(host, container_name)
        self.pm_base = pm_base
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.reads = 0
        self.overflows = 0
        self._cost = host.costs.handler("acpi-tmr")
        self.container = MemoryRegion.container(container_name, size, owner=self)
        self.evt = self.region_io("acpi-evt", 4, self._evt_read, self._evt_write, valid_min=1, valid_max=4)
        self.cnt = self.region_io("acpi-cnt", 2, self._cnt_read, self._cnt_write, valid_min=1, valid_max=2)
        self.tmr = self.region_io("acpi-tmr", 4, self._tmr_read, None, valid_min=1, valid_max=4,
                                  read_nowait=self._tmr_read_nowait)
        self.container.add_subregion(0, self.evt)
        self.container.add_subregion(4, self.cnt)
        self.container.add_subregion(8, self.tmr)
        self.map_io(pm_base, self.container)
        self.timer = host.timer_new_ns("acpi-pm-tmr", self._overflow)
        self.apply_patches()

    def apply_patches(self) -> None:
        """Patch 2/6: the timer region is lockless when ``pmtimer-lockless`` is on."""
        lockless = self.host.patch("pmtimer-lockless")
        self.tmr.lockless_io = lockless
        self.tmr.disable_reentrancy_guard = lockless

    # -- the timer ------------------------------------------------------------------------------
    def value(self) -> int:
        """``acpi_pm_tmr_get``: the 24-bit counter as the calling vCPU sees it."""
        return pm_timer_ticks(self.host.now_ns()) & 0xFFFFFF

    def _tmr_read_nowait(self, offset: int, size: int) -> int | None:
        """The lockless read (patch 2/6) without an await, or None for the full path."""
        if not self.tmr.lockless_io or not self.host.charge_nowait(self._cost):
            return None
        self.reads += 1
        return self.value() >> (8 * offset)

    async def _tmr_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._cost)
        self.reads += 1
        return self.value() >> (8 * offset)

    def arm(self) -> None:
        """``acpi_pm_tmr_update``: arm the overflow timer for the next flip of bit 23 (if TMR_EN)."""
        if not self.pm1_en & _TMR_EN:
            self.timer.delete()
            return
        now = self.host.now_ns()
        ticks = pm_timer_ticks(now)
        next_flip = (ticks | 0x7FFFFF) + 1
        # first ns at which pm_timer_ticks() reaches next_flip
        expire = -(-next_flip * _NS_PER_S // PM_TIMER_FREQUENCY)
        self.timer.mod_ns(expire)

    def _overflow(self) -> None:
        self.overflows += 1
        self.pm1_sts |= _TMR_STS
        self._update_sci()
        self.arm()

    def _update_sci(self) -> None:
        level = 1 if self.pm1_sts & self.pm1_en & _TMR_EN else 0
        try:
            line = self.host.gsi(_SCI_GSI)
        except Exception:
            return  # no irqchip wired (device used on its own)
        line.set(level)

    # -- PM1 event/control registers (BQL-bound) -------------------------------------------------
    async def _evt_read(self, offset: int, size: int) -> int:
        await self.host.delay(self.host.costs.handler("acpi-evt"))
        return ((self.pm1_en << 16) | self.pm1_sts) >> (8 * offset)

    async def _evt_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self.host.costs.handler("acpi-evt"))
        word = value << (8 * offset)
        if offset < 2:  # PM1_STS: write 1 to clear
            self.pm1_sts &= ~(word & 0xFFFF)
        if offset + size > 2:  # PM1_EN
            self.pm1_en = (word >> 16) & 0xFFFF
            self.arm()
        async with self.host.bql_guard("acpi-evt irq"):  # held unless a what-if made it lockless
            self._update_sci()

    async def _cnt_read(self, offset: int, size: int) -> int:
        await self.host.delay(self.host.costs.handler("acpi-cnt"))
        return self.pm1_cnt >> (8 * offset)

    async def _cnt_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self.host.costs.handler("acpi-cnt"))
        self.pm1_cnt = (self.pm1_cnt & ~(0xFF << (8 * offset) if size == 1 else 0xFFFF)) | (value << (8 * offset))

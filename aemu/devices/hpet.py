"""The HPET (``hpet``): QEMU's hw/timer/hpet.c as it is after the BQL-free PIO/MMIO series.

One MMIO region ``hpet`` of 0x400 bytes at 0xfed00000 (4- or 8-byte accesses, little-endian), a
64-bit main counter ticking every 10 ns of virtual time, and 3..32 comparators ("timers"), each
a QEMU timer on the virtual clock run by the main loop under the BQL. Registers:

======  =====================================================================================
0x000   capabilities/ID: 0x8086a001 (rev 1, 64-bit counter, legacy-route capable, vendor
        0x8086) | (timers - 1) << 8; high dword = tick period in fs (10,000,000)
0x010   CONFIG: bit 0 ENABLE (counter runs, interrupts on), bit 1 LEGACY (replacement route)
0x020   ISR: level-triggered interrupt status, write 1 to clear
0x0f0   main counter (writes take effect while the counter is halted)
0x100   timer N at 0x100 + 0x20 * N: config (+0x0; route capability in its high dword),
        comparator (+0x8), FSB route (+0x10)
======  =====================================================================================

Locking, chosen from the host's switches (:mod:`aemu.patches`) by :meth:`HPETState.apply_patches`,
which the machine calls when it builds the HPET and after a switch flips; an access does not look
at the switches:

* neither ``hpet-lock`` nor ``hpet-counter-lockless`` (QEMU before the series): the region is an
  ordinary one, dispatch takes the BQL (``prepare_mmio_access``) and the handlers run under it
  (a handler takes the BQL itself if a what-if switch made the region lockless).
* ``hpet-lock`` (patch 3/6): the region is lockless (``memory_region_enable_lockless_io``) and
  ``hpet_ram_read``/``hpet_ram_write`` take the device mutex (``QEMU_LOCK_GUARD(&s->lock)``).
* ``hpet-irq-bql`` (the follow-up fix, QEMU commit d99041a20328 "hpet: guard IRQ handling with
  BQL"): IRQ updates take the BQL around the ``qemu_irq`` call (``BQL_LOCK_GUARD()`` in
  ``update_irq`` and around the legacy-mode switch; :meth:`DeviceHost.bql_guard` here): mutex
  first, then BQL. With the switch off and ``hpet-lock`` on, a register write delivers its IRQ
  updates under the device mutex only, as the merged 3/6 did (QEMU commit 7defb58baf); the
  ``qemu_irq`` line then finds no BQL (:class:`aemu.irq.IRQLine` raises, as Xen's
  ``xen_evtchn_set_gsi`` asserted; ``aemu check`` reports it as ``irq-without-bql``).
* ``hpet-counter-lockless`` (patches 4-5/6): a main-counter read (0x0f0/0x0f4) takes no lock. It
  runs one read section of the ``state_version`` sequence lock; only CONFIG writes, under the
  mutex, bump the version around the enable/disable transition. Other registers keep the mutex.

Timer callbacks (``hpet_timer``) run in the main loop with the BQL held and, as in QEMU, do not
take the device mutex.

Interrupt route ``n`` drives ``host.gsi(n)`` (QEMU wires the HPET's ``irqs[n]`` to ``gsi[n]``). The
legacy replacement route is ISA IRQ 0 for timer 0 and IRQ 8 for timer 1; the irqchip's
``gsi_handler`` delivers IRQ 0 to IOAPIC pin 2 (the IRQ0 -> GSI 2 override). Entering legacy mode
also turns the PIT's channel-0 interrupt off (QEMU's ``pit_enabled`` output -> ``pit_irq_control``).

Where aemu differs from QEMU, on purpose:

* A periodic timer whose comparator equals the counter when its callback runs counts as reached.
  aemu's timers run exactly on time; QEMU's strict ``hpet_time_after`` relies on the callback
  running a little late and would otherwise re-arm the same tick 1 us later (a double interrupt).
* Timer registers of timers >= ``num_timers`` read 0 and ignore writes (QEMU checks ``>``).
* FSB (MSI) deliveries call :attr:`HPETState.fsb_write` (``address_space_stl_le`` in QEMU) and the
  ``pit_enabled`` output calls :attr:`HPETState.pit_irq_control`, if the machine set them. The RTC
  is not routed through the HPET (QEMU's ``hpet_handle_legacy_irq``): leaving legacy mode does not
  restore IRQ 8 to the RTC's level.
* A counter reader that finds a write in progress (possible only if the writer waits inside its
  write section: its handler cost, or the BQL for an IRQ update) syncs its local time and waits
  for the write to end instead of spinning; each read section it began during the write counts
  as a retry (one, or two if the write was still open after the sync).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..clock import _running, current_keeper
from ..errors import ConfigError
from ..irq import IRQLine
from ..sync import SeqLock
from ..timer import QEMUTimer
from .base import Device, DeviceHost, LockGuard

__all__ = [
    "HPET_BASE",
    "HPET_CLK_PERIOD_NS",
    "HPET_LEN",
    "HPETState",
    "HPETStatistics",
    "HPETTimer",
]

#: Guest-physical base and length of the register block (include/hw/timer/hpet.h).
HPET_BASE = 0xFED00000
HPET_LEN = 0x400
#: Counter period: 10 ns per tick (HPET_CLK_PERIOD); the capability register gives it in fs.
HPET_CLK_PERIOD_NS = 10
_FS_PER_NS = 1_000_000
HPET_MIN_TIMERS = 3
HPET_MAX_TIMERS = 32
#: q35's timer route capability: IOAPIC pins 16..23, 8 and 2 (pc_basic_device_init's hpet_irqs).
HPET_INTCAP_Q35 = 0x00FF0104

# global registers
HPET_ID = 0x000
HPET_CFG = 0x010
HPET_STATUS = 0x020
HPET_COUNTER = 0x0F0
HPET_CFG_ENABLE = 0x001
HPET_CFG_LEGACY = 0x002
HPET_CFG_WRITE_MASK = 0x3
HPET_ID_NUM_TIM_SHIFT = 8
# timer registers (offset within a timer's 0x20 bytes)
HPET_TN_CFG = 0x000
HPET_TN_CMP = 0x008
HPET_TN_ROUTE = 0x010
HPET_TN_TYPE_LEVEL = 0x002
HPET_TN_ENABLE = 0x004
HPET_TN_PERIODIC = 0x008
HPET_TN_PERIODIC_CAP = 0x010
HPET_TN_SIZE_CAP = 0x020
HPET_TN_SETVAL = 0x040
HPET_TN_32BIT = 0x100
HPET_TN_INT_ROUTE_MASK = 0x3E00
HPET_TN_INT_ROUTE_SHIFT = 9
HPET_TN_FSB_ENABLE = 0x4000
HPET_TN_FSB_CAP = 0x8000
HPET_TN_CFG_WRITE_MASK = 0x7F4E
HPET_TN_INT_ROUTE_CAP_SHIFT = 32
_RTC_ISA_IRQ = 8

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_S64_MIN = 1 << 63
#: hpet_arm's floor between two expiries of a periodic timer (1 us, against timer storms).
_MIN_PERIOD_NS = 1000

# IRQ operations queued by update_irq and delivered under the BQL: (op, a, b)
_LOWER, _RAISE, _PULSE, _FSB, _PIT = range(5)
_IrqOp = tuple[int, int, int]


def _deposit64(old: int, shift: int, length: int, value: int) -> int:
    """QEMU's ``deposit64``: replace ``length`` bits of ``old`` at ``shift`` by ``value``."""
    mask = ((1 << length) - 1) << shift
    return (old & ~mask & _U64) | ((value << shift) & mask)


def _fixup_reg(new: int, old: int, mask: int) -> int:
    """``hpet_fixup_reg``: only the bits in ``mask`` are writable."""
    return (new & mask) | (old & ~mask & _U64)


def _activating(old: int, new: int, mask: int) -> bool:
    return not old & mask and bool(new & mask)


def _deactivating(old: int, new: int, mask: int) -> bool:
    return bool(old & mask) and not new & mask


def _s64(x: int) -> int:
    """A uint64 read as int64."""
    return x - (1 << 64) if x & _S64_MIN else x


@dataclass(frozen=True, slots=True)
class HPETStatistics:
    """A frozen snapshot of an HPET's counters."""

    #: Register reads (handler calls; an 8-byte access is one), counter reads included.
    reads: int
    writes: int
    #: Reads of the main counter (0x0f0 or 0x0f4), on whichever path.
    counter_reads: int
    #: Counter read sections that had to be retried (from the ``state_version`` SeqLock).
    seqlock_retries: int
    #: Completed ``state_version`` write sections (CONFIG writes under hpet-counter-lockless).
    seqlock_writes: int
    #: Timer callbacks run by the main loop (``hpet_timer``).
    timer_fires: int
    #: Interrupts delivered on a line (a level raise or an edge pulse).
    irq_raises: int
    #: FSB (MSI) messages sent.
    fsb_writes: int
    #: Raises dropped because the routed GSI is not connected (QEMU: a NULL ``qemu_irq``).
    dropped_irqs: int


class HPETTimer:
    """One comparator (QEMU's ``HPETTimer``): its registers, hidden state and QEMU timer."""

    __slots__ = ("state", "tn", "config", "cmp", "fsb", "cmp64", "period", "wrap_flag", "last",
                 "qemu_timer", "fires")

    def __init__(self, state: HPETState, tn: int) -> None:
        self.state = state
        self.tn = tn
        #: Guest-visible registers: config (capabilities in the high dword), comparator, FSB route.
        self.config = 0
        self.cmp = 0
        self.fsb = 0
        #: The comparator extended to the counter's 64 bits (matters in 32-bit mode).
        self.cmp64 = 0
        #: Last value written to the comparator of a periodic timer.
        self.period = 0
        #: 32-bit one-shot: the next expiry is the counter's wrap, then the comparator.
        self.wrap_flag = 0
        #: Last expiry armed (ns), to keep periodic expiries at least 1 us apart.
        self.last = 0
        self.fires = 0
        self.qemu_timer: QEMUTimer = state.host.timer_new_ns(f"{state.name}-timer{tn}", self._expired)

    def _expired(self) -> None:
        self.state._timer_expired(self)

    @property
    def enabled(self) -> bool:
        """Tn_INT_ENB_CNF: the timer may interrupt."""
        return bool(self.config & HPET_TN_ENABLE)

    @property
    def periodic(self) -> bool:
        return bool(self.config & HPET_TN_PERIODIC)

    def __repr__(self) -> str:
        mode = "periodic" if self.periodic else "one-shot"
        width = "32-bit" if self.config & HPET_TN_32BIT else "64-bit"
        state = "enabled" if self.enabled else "disabled"
        return f"<HPETTimer {self.tn} {state} {mode} {width} cmp={self.cmp:#x} {self.qemu_timer!r}>"


class HPETState(Device):
    """QEMU's ``hpet`` device (see the module docstring for registers, locking and differences).

    ``num_timers`` is QEMU's ``timers`` property (3..32); ``intcap`` the route capability each
    timer advertises (q35's default: GSIs 2, 8 and 16..23); ``msi`` QEMU's ``msi`` property (FSB
    delivery capability). The region is ``self.iomem``, to be mapped at ``base``.
    """

    type_name = "hpet"
    stat_fields = Device.stat_fields | {"counter_reads", "timer_fires", "irq_raises", "fsb_writes", "lockless_high",
                                        "dropped_irqs"}

    def __init__(self, host: DeviceHost, *, num_timers: int = HPET_MIN_TIMERS,
                 intcap: int = HPET_INTCAP_Q35, msi: bool = False, base: int = HPET_BASE,
                 name: str | None = None) -> None:
        if isinstance(num_timers, bool) or not isinstance(num_timers, int) \
                or not HPET_MIN_TIMERS <= num_timers <= HPET_MAX_TIMERS:
            raise ConfigError(f"hpet: timers={num_timers!r}; use an integer from "
                              f"{HPET_MIN_TIMERS} to {HPET_MAX_TIMERS}")
        if isinstance(intcap, bool) or not isinstance(intcap, int) or not 0 <= intcap <= _U32:
            raise ConfigError(f"hpet: intcap={intcap!r}; use a 32-bit mask of IOAPIC pins")
        super().__init__(host, name)
        self.num_timers = num_timers
        self.intcap = intcap
        self.msi = bool(msi)
        self.base = base
        #: Registers (QEMU's names).
        self.capability = (0x8086A001 | (num_timers - 1) << HPET_ID_NUM_TIM_SHIFT
                           | (HPET_CLK_PERIOD_NS * _FS_PER_NS) << 32)
        self.config = 0
        self.isr = 0
        #: The main counter while halted; while running it is derived from ``hpet_offset``.
        self.hpet_counter = 0
        #: ns to add to virtual time to get the counter's time (uint64, as in QEMU).
        self.hpet_offset = 0
        #: The highest running-counter value a lockless read has returned: a vCPU running ahead
        #: of global time reads past it, and stopping the counter must not go back below that.
        self.lockless_high = 0
        #: The i8254's output is enabled unless the HPET is in legacy replacement mode.
        self.pit_enabled = True
        #: ``fsb_write(addr, value)``: how the machine delivers an FSB (MSI) message; None drops it.
        self.fsb_write: Callable[[int, int], None] | None = None
        #: ``pit_irq_control(enabled)``: the ``pit_enabled`` output (e.g. ``PITState.irq_control``).
        self.pit_irq_control: Callable[[bool], None] | None = None
        #: The device mutex of patch 3/6 and the counter's sequence lock of patch 5/6.
        self.lock = host.new_lock(self.name)
        self.state_version = SeqLock(f"{self.name}-state", writer_lock=self.lock)
        self.reads = 0
        self.writes = 0
        self.counter_reads = 0
        self.timer_fires = 0
        self.irq_raises = 0
        self.fsb_writes = 0
        self.dropped_irqs = 0
        self._cost = host.costs.handler("hpet")
        # What apply_patches chose (see _ram_read / _ram_write): the lock register accesses take,
        # the lockless counter reader and the versioned CONFIG writer if patch 5/6 is on.
        self._locking = "bql"
        self._guard: Callable[[str], LockGuard] = host.bql_guard
        self._counter_read: Callable[[int], Awaitable[int]] | None = None
        self._config_write: Callable[[int, int, int], Awaitable[None]] | None = None
        self._irq_bql = True
        self.timers = [HPETTimer(self, n) for n in range(num_timers)]
        self.iomem = self.region_io("hpet", HPET_LEN, self._ram_read, self._ram_write,
                                    read_nowait=self._ram_read_nowait,
                                    valid_min=4, valid_max=8, impl_min=4, impl_max=8)
        self.map_mmio(base, self.iomem)
        self._reset_registers()
        self.apply_patches()

    def _reset_registers(self) -> None:
        """``hpet_reset`` at machine creation: timers idle, counter 0, HPET disabled."""
        for t in self.timers:
            t.qemu_timer.delete()
            t.cmp = _U64
            t.config = HPET_TN_PERIODIC_CAP | HPET_TN_SIZE_CAP
            if self.msi:
                t.config |= HPET_TN_FSB_CAP
            t.config |= self.intcap << HPET_TN_INT_ROUTE_CAP_SHIFT
            t.period = 0
            t.wrap_flag = 0
        self.pit_enabled = True
        self.hpet_counter = 0
        self.hpet_offset = 0
        self.lockless_high = 0
        self.config = 0

    # -- switches --------------------------------------------------------------------------------
    def apply_patches(self) -> None:
        """Choose the locking from the switches: the region's ``lockless_io`` and the handlers.

        The machine calls it at build time and after flipping a switch; until then accesses keep
        the locking chosen last. The region's ops stay the same functions (the memory API may
        have resolved them): ``_ram_read``/``_ram_write`` call the handlers chosen here.
        """
        host = self.host
        if host.patch("hpet-counter-lockless"):  # patches 4-5/6 (needs hpet-lock)
            locking = "hpet-counter-lockless"
        elif host.patch("hpet-lock"):  # patch 3/6
            locking = "hpet-lock"
        else:
            locking = "bql"
        self._locking = locking
        if locking == "bql":
            self.iomem.lockless_io = False
            self.iomem.disable_reentrancy_guard = False
            self._guard = host.bql_guard  # held already, unless a what-if made the region lockless
        else:
            self.iomem.enable_lockless_io()
            self._guard = self.lock.held  # QEMU_LOCK_GUARD(&s->lock)
        self._irq_bql = host.patch("hpet-irq-bql")
        lockless = locking == "hpet-counter-lockless"
        self._counter_read = self._read_counter_lockless if lockless else None
        self._config_write = self._write_config_versioned if lockless else None

    @property
    def locking(self) -> str:
        """The locking :meth:`apply_patches` chose: "bql", "hpet-lock" or "hpet-counter-lockless"."""
        return self._locking

    # -- the counter -----------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """ENABLE_CNF: the counter runs and timers may interrupt."""
        return bool(self.config & HPET_CFG_ENABLE)

    def _ticks_at(self, ns: int) -> int:
        """The running counter at virtual time ``ns`` (``ns_to_ticks(ns + s->hpet_offset)``)."""
        return ((ns + self.hpet_offset) & _U64) // HPET_CLK_PERIOD_NS

    def _ns_at(self, tick: int) -> int:
        """The virtual time at which the running counter reaches ``tick`` (uint64)."""
        return (tick * HPET_CLK_PERIOD_NS - self.hpet_offset) & _U64

    def _get_ticks(self) -> int:
        """``hpet_get_ticks``: the running counter at the caller's virtual time."""
        return self._ticks_at(self.host.now_ns())

    def counter_value(self) -> int:
        """The main counter as the calling task sees it now (no lock, no cost)."""
        if self.config & HPET_CFG_ENABLE:
            return self._get_ticks()
        return self.hpet_counter

    async def _counter_read_slow(self) -> int:
        """A writer is inside its write section: sync local time, wait for the write to end.

        Every read section that began during the write counts as a retry: one if the write
        ended while the reader synced, two if the reader then had to wait for it.
        """
        k = self.host.keeper()
        if k is not None and k.offset_ns:
            await k.sync()
        seq = self.state_version
        if seq.sequence & 1:
            return await seq.read_async(self.counter_value)
        return seq.read(self.counter_value)

    # -- MMIO handlers (hpet_ram_read / hpet_ram_write) --------------------------------------------
    def _ram_read_nowait(self, addr: int, size: int) -> int | None:
        """The lockless counter read without an await (patch 5/6), or None for the full path.

        The hot path of a lockless HPET benchmark, so kept flat: it charges the handler cost to
        the calling vCPU's keeper (as ``host.charge_nowait`` would) and reads the counter at the
        keeper's local time (``counter_value`` with the keeper at hand: one call, to the formula).
        """
        if addr & ~4 != HPET_COUNTER or self._counter_read is None:
            return None
        seq = self.state_version
        if seq.sequence & 1:
            return None
        k = _running.keeper  # set by the vCPU around a synchronous read
        if k is None:
            k = current_keeper()
        if k is None or k.locks_held:
            return None
        k.offset_ns += self._cost
        self.reads += 1
        self.counter_reads += 1
        version = seq.read_begin()
        if self.config & HPET_CFG_ENABLE:
            tick = self._ticks_at(k.clock() + k.offset_ns)
            if tick > self.lockless_high:
                self.lockless_high = tick
        else:
            tick = self.hpet_counter
        seq.read_retry(version)  # nothing ran in between: no writer can have moved it
        return tick >> ((addr & 4) * 8)

    async def _ram_read(self, addr: int, size: int) -> int:
        """``hpet_ram_read``: under the lock :meth:`apply_patches` chose (the BQL or the device
        mutex), but the main counter through the lockless reader if it chose one."""
        self.reads += 1
        if addr & ~4 == HPET_COUNTER:
            self.counter_reads += 1
            read = self._counter_read
            if read is not None:
                return await read(addr)
        async with self._guard("hpet read"):
            await self.host.delay(self._cost)
            return self._read_reg(addr)

    async def _read_counter_lockless(self, addr: int) -> int:
        """Patch 5/6: no lock; one read section of ``state_version``. Nothing here yields except
        ``host.delay`` (which runs ahead for a vCPU holding no lock)."""
        await self.host.delay(self._cost)
        seq = self.state_version
        version = seq.read_begin()
        tick = self.counter_value()
        if seq.read_retry(version):
            tick = await self._counter_read_slow()
        elif self.config & HPET_CFG_ENABLE and tick > self.lockless_high:
            self.lockless_high = tick
        return tick >> ((addr & 4) * 8)

    async def _ram_write(self, addr: int, value: int, size: int) -> None:
        """``hpet_ram_write``: under the lock :meth:`apply_patches` chose, but CONFIG through the
        versioned writer if it chose one."""
        self.writes += 1
        if addr & ~4 == HPET_CFG:
            write = self._config_write
            if write is not None:
                return await write(addr, value, size)
        async with self._guard("hpet write"):
            await self._write_held(addr, value, size)

    async def _write_config_versioned(self, addr: int, value: int, size: int) -> None:
        """Patch 5/6: a CONFIG write, under the mutex, is a write section of ``state_version``."""
        async with self._guard("hpet write"):
            seq = self.state_version
            seq.write_begin()
            try:
                await self._write_held(addr, value, size)
            finally:
                seq.write_end()

    async def _write_held(self, addr: int, value: int, size: int) -> None:
        """The write under the device mutex or the BQL; IRQ updates under ``BQL_LOCK_GUARD()``
        (``hpet-irq-bql``), or under whatever the write holds (the merged 3/6 without the fix)."""
        await self.host.delay(self._cost)
        ops: list[_IrqOp] = []
        self._write_reg(addr, value, size, ops)
        if ops:
            if self._irq_bql:
                async with self.host.bql_guard("hpet irq"):
                    self._deliver(ops)
            else:
                self._deliver(ops)

    # -- register decode (callers hold the mutex or the BQL) ----------------------------------------
    def _read_reg(self, addr: int) -> int:
        shift = (addr & 4) * 8
        if addr >= 0x100:
            tn = (addr - 0x100) // 0x20
            if tn >= self.num_timers:
                return 0
            t = self.timers[tn]
            reg = addr & 0x18
            if reg == HPET_TN_CFG:
                return t.config >> shift
            if reg == HPET_TN_CMP:
                return t.cmp >> shift
            if reg == HPET_TN_ROUTE:
                return t.fsb >> shift
            return 0
        reg = addr & ~4
        if reg == HPET_ID:
            return self.capability >> shift
        if reg == HPET_CFG:
            return self.config >> shift
        if reg == HPET_COUNTER:
            return self.counter_value() >> shift
        if reg == HPET_STATUS:
            return self.isr >> shift
        return 0

    def _write_reg(self, addr: int, value: int, size: int, ops: list[_IrqOp]) -> None:
        shift = (addr & 4) * 8
        length = min(size * 8, 64 - shift)
        if addr >= 0x100:
            tn = (addr - 0x100) // 0x20
            if tn < self.num_timers:
                self._write_timer_reg(self.timers[tn], addr & 0x18, shift, length, value, ops)
            return
        reg = addr & ~4
        if reg == HPET_CFG:
            self._write_config(_deposit64(self.config, shift, length, value), ops)
        elif reg == HPET_STATUS:
            cleared = (value << shift) & self.isr
            for t in self.timers:
                if cleared & (1 << t.tn):
                    self._update_irq(t, False, ops)
        elif reg == HPET_COUNTER:
            # QEMU stores the value even while running (with a trace); it is used only
            # once the counter is halted and restarted.
            self.hpet_counter = _deposit64(self.hpet_counter, shift, length, value)
            self.lockless_high = 0  # the guest set the counter: it may go back

    def _write_config(self, new_val: int, ops: list[_IrqOp]) -> None:
        old_val = self.config
        new_val = _fixup_reg(new_val, old_val, HPET_CFG_WRITE_MASK)
        self.config = new_val
        if _activating(old_val, new_val, HPET_CFG_ENABLE):
            # start the counter where it stopped, then arm every comparator
            self.hpet_offset = (self.hpet_counter * HPET_CLK_PERIOD_NS - self.host.now_ns()) & _U64
            for t in self.timers:
                if t.enabled and self.isr & (1 << t.tn):
                    self._update_irq(t, True, ops)
                self._set_timer(t)
        elif _deactivating(old_val, new_val, HPET_CFG_ENABLE):
            # The counter stops where it is now, and no lower than a value a lockless reader
            # running ahead of global time has already read: that read came before this write,
            # as for a reader of QEMU's seqlock that did not retry -- never a backward step.
            self.hpet_counter = max(self._get_ticks(), self.lockless_high)
            for t in self.timers:
                self._del_timer(t, ops)
        if _activating(old_val, new_val, HPET_CFG_LEGACY):
            ops.append((_PIT, 0, 0))
            ops.append((_LOWER, 0, 0))
            ops.append((_LOWER, _RTC_ISA_IRQ, 0))
        elif _deactivating(old_val, new_val, HPET_CFG_LEGACY):
            ops.append((_LOWER, 0, 0))
            ops.append((_PIT, 1, 0))

    def _write_timer_reg(self, t: HPETTimer, reg: int, shift: int, length: int, value: int,
                         ops: list[_IrqOp]) -> None:
        if reg == HPET_TN_CFG:
            old_val = t.config
            new_val = _fixup_reg(_deposit64(old_val, shift, length, value), old_val, HPET_TN_CFG_WRITE_MASK)
            if _deactivating(old_val, new_val, HPET_TN_TYPE_LEVEL):
                self._update_irq(t, False, ops)  # before the FSB bit can change the route
            t.config = new_val
            if _activating(old_val, new_val, HPET_TN_ENABLE) and self.isr & (1 << t.tn):
                self._update_irq(t, True, ops)
            if new_val & HPET_TN_32BIT:
                t.cmp &= _U32
                t.period &= _U32
            if self.config & HPET_CFG_ENABLE:
                self._set_timer(t)
        elif reg == HPET_TN_CMP:
            if t.config & HPET_TN_32BIT:
                if shift:
                    return  # the high dword of a 32-bit comparator stays zero
                length = 64
                value &= _U32
            if not t.config & HPET_TN_PERIODIC or t.config & HPET_TN_SETVAL:
                t.cmp = _deposit64(t.cmp, shift, length, value)
            if t.config & HPET_TN_PERIODIC:
                t.period = _deposit64(t.period, shift, length, value)
            t.config &= ~HPET_TN_SETVAL
            if self.config & HPET_CFG_ENABLE:
                self._set_timer(t)
        elif reg == HPET_TN_ROUTE:
            t.fsb = _deposit64(t.fsb, shift, length, value)

    # -- comparators (hpet_set_timer / hpet_arm / hpet_timer / hpet_del_timer) -------------------
    def _calculate_cmp64(self, t: HPETTimer, cur_tick: int, target: int) -> int:
        """The next counter value that matches ``target`` (only its low 32 bits in 32-bit mode)."""
        if t.config & HPET_TN_32BIT:
            result = (cur_tick & ~_U32 & _U64) | (target & _U32)
            if result < cur_tick:
                result += 1 << 32
            return result & _U64
        return target

    def _arm(self, t: HPETTimer, tick: int) -> None:
        """``hpet_arm``: run the QEMU timer when the counter reaches ``tick``."""
        ns = self._ns_at(tick)
        if t.config & HPET_TN_PERIODIC and (ns - t.last) & _U64 < _MIN_PERIOD_NS:
            ns = (t.last + _MIN_PERIOD_NS) & _U64
        t.last = ns
        t.qemu_timer.mod_ns(max(_s64(ns), 0))  # timer_mod_ns: MAX(expire_time, 0)

    def _set_timer(self, t: HPETTimer) -> None:
        cur_tick = self._get_ticks()
        t.wrap_flag = 0
        t.cmp64 = self._calculate_cmp64(t, cur_tick, t.cmp)
        if t.config & HPET_TN_32BIT and not t.config & HPET_TN_PERIODIC:
            # a 32-bit one-shot also interrupts when the counter's low dword wraps
            next_wrap = (cur_tick | _U32) + 1
            if t.cmp64 > next_wrap:
                t.wrap_flag = 1
                self._arm(t, next_wrap)
                return
        self._arm(t, t.cmp64)

    def _del_timer(self, t: HPETTimer, ops: list[_IrqOp]) -> None:
        t.qemu_timer.delete()
        if self.isr & (1 << t.tn):
            self._update_irq(t, True, ops)  # level-triggered: ISR stays set, the line goes low

    def _timer_expired(self, t: HPETTimer) -> None:
        """``hpet_timer``: the main loop runs it with the BQL held."""
        t.fires += 1
        self.timer_fires += 1
        cur_tick = self._get_ticks()
        if t.config & HPET_TN_PERIODIC and t.period:
            while _s64((t.cmp64 - cur_tick) & _U64) <= 0:  # reached (QEMU: strictly passed)
                t.cmp64 = (t.cmp64 + t.period) & _U64
            t.cmp = t.cmp64 & _U32 if t.config & HPET_TN_32BIT else t.cmp64
            self._arm(t, t.cmp64)
        elif t.wrap_flag:
            t.wrap_flag = 0
            self._arm(t, t.cmp64)
        ops: list[_IrqOp] = []
        self._update_irq(t, True, ops)
        self._deliver(ops)

    # -- interrupts (update_irq) -------------------------------------------------------------------
    def _update_irq(self, t: HPETTimer, set_: bool, ops: list[_IrqOp]) -> None:
        """``update_irq``: update ISR now; queue the line operation for delivery under the BQL."""
        if t.tn <= 1 and self.config & HPET_CFG_LEGACY:
            route = 0 if t.tn == 0 else _RTC_ISA_IRQ
        else:
            route = (t.config & HPET_TN_INT_ROUTE_MASK) >> HPET_TN_INT_ROUTE_SHIFT
        mask = 1 << t.tn
        if set_ and t.config & HPET_TN_TYPE_LEVEL:
            # "the timer will still operate and generate status bits" even if not enabled
            self.isr |= mask
        else:
            self.isr &= ~mask
        if set_ and t.config & HPET_TN_ENABLE and self.config & HPET_CFG_ENABLE:
            if t.config & HPET_TN_FSB_ENABLE:
                ops.append((_FSB, t.fsb >> 32, t.fsb & _U32))
            elif t.config & HPET_TN_TYPE_LEVEL:
                ops.append((_RAISE, route, 0))
            else:
                ops.append((_PULSE, route, 0))
        elif not t.config & HPET_TN_FSB_ENABLE:
            ops.append((_LOWER, route, 0))

    def _line(self, route: int) -> IRQLine | None:
        """``s->irqs[route]``: GSI line ``route`` if the machine connected it."""
        try:
            return self.host.gsi(route)
        except ConfigError:
            return None

    def _deliver(self, ops: list[_IrqOp]) -> None:
        """Drive the lines (``qemu_irq_raise/lower/pulse``): the caller must hold the BQL."""
        for op, a, b in ops:
            if op == _FSB:
                self.fsb_writes += 1
                if self.fsb_write is not None:
                    self.fsb_write(a, b)
                continue
            if op == _PIT:
                self.pit_enabled = bool(a)
                if self.pit_irq_control is not None:
                    self.pit_irq_control(self.pit_enabled)
                continue
            line = self._line(a)
            if line is None:
                if op != _LOWER:
                    self.dropped_irqs += 1
                continue
            if op == _LOWER:
                line.lower()
            else:
                self.irq_raises += 1
                if op == _RAISE:
                    line.raise_()
                else:
                    line.pulse()

    # -- reports -----------------------------------------------------------------------------------
    def statistics(self) -> HPETStatistics:
        """A frozen snapshot of the counters."""
        seq = self.state_version.statistics()
        return HPETStatistics(self.reads, self.writes, self.counter_reads, seq.retries, seq.writes,
                              self.timer_fires, self.irq_raises, self.fsb_writes, self.dropped_irqs)

    @property
    def seqlock_retries(self) -> int:
        """Counter read sections retried because a CONFIG write was in progress."""
        return self.state_version.statistics().retries

    def __repr__(self) -> str:
        state = "enabled" if self.config & HPET_CFG_ENABLE else "disabled"
        if self.config & HPET_CFG_LEGACY:
            state += " legacy"
        return (f"<HPETState {self.name!r} at {self.base:#x} {state}, {self.num_timers} timers, "
                f"isr={self.isr:#x}, locking={self.locking}>")

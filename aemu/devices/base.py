"""What a device model sees of the machine: :class:`DeviceHost`, and the :class:`Device` base.

A device gets a host at construction and uses it for everything outside its own registers:

* ``host.bql`` -- the Big QEMU Lock (an :class:`aemu.sync.Lock` with ``bql=True``);
* ``host.costs`` -- the :class:`aemu.costs.CostModel` (``host.costs.handler("hpet")`` etc.);
* ``host.patch("hpet-lock")`` -- whether a switch of the BQL-free series is on (the switches are
  listed in :mod:`aemu.patches`; a device reads those that concern it in ``apply_patches()``,
  which the machine calls at build time and after a switch flips);
* ``async with host.bql_guard(site):`` -- QEMU's ``BQL_LOCK_GUARD()``: the BQL for the block,
  taken at ``site`` unless the caller already holds it;
* ``host.now_ns()`` -- ``qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)`` as the calling vCPU sees it
  (global virtual time plus the vCPU's run-ahead offset under temporal decoupling);
* ``await host.delay(ns)`` -- spend ``ns`` of device work: a vCPU holding no lock runs ahead
  (no event-loop turn, see :class:`aemu.clock.QuantumKeeper`); holding a lock it sleeps, so
  others see the lock held for that long;
* ``host.timer_new_ns(name, cb)`` -- a QEMU timer run by the main loop under the BQL;
* ``host.new_lock(name)`` -- a device mutex (``QemuMutex``) with the cost model's hand-off latency;
* ``host.gsi(n)`` -- the interrupt line for GSI ``n`` (set by the machine's irqchip).

Handlers are ``read(offset, size) -> int`` / ``write(offset, value, size)``: plain functions when
they never wait, coroutine functions when they take a lock or spend time. They charge their own
cost with ``await host.delay(...)`` (under the lock the access holds, if any).

Checker mode (``aemu check``, :func:`aemu.check`) watches every instance attribute of a
:class:`Device` -- user-written devices included, no annotations -- by giving each device of
the machine, for the run, a subclass whose ``__getattribute__``/``__setattr__`` report the access
(:mod:`aemu.check.watch`). Nothing is installed otherwise: a device costs the same as without the
checker. Two class attributes tell the checker what is not shared state: ``atomic_fields``, the
fields the device accesses atomically (QEMU's ``qatomic_read``/``qatomic_set``), and
``stat_fields``, aemu's own counters for the reports (QEMU has no such fields). In-place changes
to a container held in an attribute (``self.fifo.append(x)``) read the attribute only; assign it,
or keep such state behind a lock the checker sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Protocol

from .. import clock, patches as _patches
from ..clock import QuantumKeeper, current_keeper, local_now_ns
from ..costs import CostModel
from ..errors import ConfigError
from ..irq import IRQLine
from ..memory import MemoryRegion
from ..sync import Lock, bql_locked
from ..timer import MainLoop, QEMUTimer, TimerCallback

__all__ = ["Device", "DeviceHost", "LockGuard"]


class LockGuard(Protocol):
    """What :meth:`DeviceHost.bql_guard` and :meth:`aemu.sync.Lock.held` return: an async context
    manager whose enter and exit are plain calls returning an awaitable (no coroutine is made
    unless the lock is contended)."""

    def __aenter__(self) -> Awaitable[None]: ...

    def __aexit__(self, *exc_info: object) -> Awaitable[None]: ...


class _HeldByCaller:
    """``BQL_LOCK_GUARD()`` when the caller holds the BQL: nothing to take, nothing to release.

    Enter and exit return ``ready``, a completed future (awaiting one does not yield and, unlike
    a Python-level ``__await__``, costs no function call).
    """

    __slots__ = ("ready",)

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready

    def __aenter__(self) -> Awaitable[None]:
        return self.ready

    def __aexit__(self, *exc_info: object) -> Awaitable[None]:
        return self.ready  # its result (None) lets the exception, if any, propagate


class DeviceHost:
    """The machine as its devices see it (see the module docstring)."""

    def __init__(self, *, bql: Lock | None = None, costs: CostModel | None = None,
                 patches: Iterable[str] = (), gsi_count: int = 24) -> None:
        self.costs = costs or CostModel()
        self.bql = bql or Lock("BQL", handoff_ns=self.costs.bql_handoff_ns, bql=True)
        #: The switches that are on (see :mod:`aemu.patches`); the vCPU loop reads this very set.
        self.patches: set[str] = set(_patches.check_patches(patches))
        self.main_loop = MainLoop(self.bql, self.costs.timer_cb_ns)
        self.locks: dict[str, Lock] = {}
        self._gsi: list[IRQLine | None] = [None] * gsi_count
        self._held_by_caller: _HeldByCaller | None = None  # made at the first bql_guard under the BQL

    # -- switches ------------------------------------------------------------------------------
    def patch(self, name: str) -> bool:
        """Whether switch ``name`` is on."""
        return name in self.patches

    def set_patch(self, name: str, on: bool) -> None:
        """Turn a switch on or off (prerequisites checked, see :func:`aemu.patches.set_patch`).

        A device that depends on a switch reads it in its ``apply_patches()``: call that on the
        devices afterwards, as :meth:`aemu.machine.Machine.set_patch` does.
        """
        _patches.set_patch(self.patches, name, on)

    # -- time ----------------------------------------------------------------------------------
    @staticmethod
    def now_ns() -> int:
        """Virtual time as the calling task sees it (``qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)``)."""
        return local_now_ns()

    @staticmethod
    def delay(ns: int) -> Awaitable[None]:
        """Spend ``ns`` of work: run ahead when allowed, else sleep (see module docstring)."""
        k = current_keeper()
        if k is None:
            return clock.sleep_ns(ns)
        return k.delay(ns)

    @staticmethod
    def charge_nowait(ns: int) -> bool:
        """Spend ``ns`` of work without awaiting, if the caller may run ahead (a vCPU holding no
        lock): its keeper's offset grows and the vCPU syncs at its next synchronisation point.
        False (nothing charged) otherwise: use ``await delay(ns)``."""
        k = current_keeper()
        if k is None or k.locks_held:
            return False
        k.offset_ns += ns
        return True

    @staticmethod
    def keeper() -> QuantumKeeper | None:
        """The calling task's quantum keeper, if it runs ahead of global time."""
        return current_keeper()

    def timer_new_ns(self, name: str, cb: TimerCallback) -> QEMUTimer:
        """A timer on the virtual clock, run by the main loop under the BQL."""
        return self.main_loop.timer_new_ns(name, cb)

    # -- locks and interrupts ------------------------------------------------------------------
    def bql_guard(self, site: str) -> LockGuard:
        """``async with host.bql_guard(site):`` -- QEMU's ``BQL_LOCK_GUARD()``.

        Holds the BQL for the block: a caller that already holds it gets a ready no-op context
        (nothing made, nothing accounted); otherwise the BQL is taken at ``site`` and released at
        the end, through :meth:`aemu.sync.Lock.held` (uncontended: no coroutine, no loop turn).
        """
        if bql_locked():
            held = self._held_by_caller
            if held is None:
                ready = asyncio.get_running_loop().create_future()
                ready.set_result(None)  # done: awaited on any loop, it completes at once
                held = self._held_by_caller = _HeldByCaller(ready)
            return held
        return self.bql.held(site)

    def new_lock(self, name: str) -> Lock:
        """A device mutex (``QemuMutex``), accounted like the BQL and listed in ``self.locks``."""
        if name in self.locks or name == self.bql.name:
            raise ConfigError(f"a lock named {name!r} already exists")
        lock = self.locks[name] = Lock(name, handoff_ns=self.costs.mutex_handoff_ns, policy=self.bql.policy)
        return lock

    def gsi(self, n: int) -> IRQLine:
        """The interrupt line for GSI ``n``."""
        if not 0 <= n < len(self._gsi):
            raise ConfigError(f"GSI {n} does not exist (0..{len(self._gsi) - 1})")
        line = self._gsi[n]
        if line is None:
            raise ConfigError(f"GSI {n} is not connected to an interrupt controller")
        return line

    def connect_gsi(self, n: int, line: IRQLine) -> None:
        """Wire GSI ``n`` (the irqchip does this)."""
        if not 0 <= n < len(self._gsi):
            self._gsi.extend([None] * (n + 1 - len(self._gsi)))
        self._gsi[n] = line


class Device:
    """Base of aemu's device models: a name, a host, and the regions the device owns."""

    #: QEMU's type name, e.g. "hpet", "isa-serial".
    type_name = "device"
    #: Fields accessed atomically (QEMU's ``qatomic_*``): the checker does not report races on them.
    atomic_fields: ClassVar[frozenset[str]] = frozenset()
    #: aemu's own counters, kept for the reports and not in QEMU's device state: not checked.
    stat_fields: ClassVar[frozenset[str]] = frozenset({"reads", "writes"})
    #: Built outside a running loop, so its reset (which arms timers) waits for :meth:`vm_start`.
    _reset_at_start = False

    def __init__(self, host: DeviceHost, name: str | None = None) -> None:
        self.host = host
        self.name = name or self.type_name
        self.regions: list[MemoryRegion] = []
        #: Where the machine maps this device's regions: (space "io" or "memory", address, region).
        self.mappings: list[tuple[str, int, MemoryRegion]] = []

    def map_io(self, port: int, mr: MemoryRegion) -> MemoryRegion:
        """Ask the machine to map ``mr`` at I/O port ``port`` (``isa_register_ioport``)."""
        self.mappings.append(("io", port, mr))
        return mr

    def map_mmio(self, addr: int, mr: MemoryRegion) -> MemoryRegion:
        """Ask the machine to map ``mr`` at guest-physical ``addr`` (``sysbus_mmio_map``)."""
        self.mappings.append(("memory", addr, mr))
        return mr

    def region_io(self, name: str, size: int, read: Callable[..., Any] | None,
                  write: Callable[..., Any] | None, **ops: Any) -> MemoryRegion:
        """``memory_region_init_io`` owned by this device (recorded in ``self.regions``)."""
        from ..memory import MemoryRegionOps

        mr = MemoryRegion.io(name, size, MemoryRegionOps(read=read, write=write, **ops), owner=self)
        self.regions.append(mr)
        return mr

    def vm_start(self) -> None:
        """The machine starts on a running loop (QEMU resets devices before ``vm_start``): a
        device built outside one resets now, so its timers run as if it had been built there."""
        if self._reset_at_start:
            self._reset_at_start = False
            self.reset()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

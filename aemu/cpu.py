"""vCPUs: one asyncio task each, running QEMU's KVM exit loop (``kvm_cpu_exec``).

A guest program is a generator that yields exits and receives what the exit returns (the value
of a read, the vector that woke a halt), like ``KVM_RUN`` returning to userspace::

    def program(cpu):
        value = yield MMIORead(0xfed000f0, 8)   # read the HPET main counter
        yield Compute(1_000)                    # 1 us of guest work, no exit
        yield Halt()                            # HLT until an interrupt

Each loop iteration models ``kvm_cpu_exec``:

* **pre_run** -- ``kvm_arch_pre_run``. With the PIC in userspace (kernel-irqchip=split|off) QEMU
  took the BQL on every entry to check ``interrupt_request``; with ``irqchip-pre-run`` (6/6) it
  takes it only when a hard interrupt is pending and the guest can take it (IF set), and NMI/SMI
  bits are cleared under it briefly. kernel-irqchip=on never takes it.
* **run** -- the guest program until its next exit (compute is local time, see below).
* **handle** -- the exit: PIO/MMIO through the ``I/O``/``memory`` address spaces (dispatch takes
  the BQL unless the region is lockless), HLT (waits for an interrupt; with an in-kernel LAPIC
  the kernel handles it), IPIs and LAPIC timers through the in-kernel LAPIC, shutdown (the vCPU
  stops; so does a guest program that returns).
* **post_run** -- ``kvm_arch_post_run``: the BQL only with kernel-irqchip=off (userspace APIC).

Temporal decoupling: each vCPU has a :class:`~aemu.clock.QuantumKeeper`; guest compute, exit
round trips and lockless handlers run ahead of global time by up to ``quantum_ns`` and cost no
event-loop turn. Locks, halts and a full quantum sync it. Interrupts raised by others are seen at
the next entry, up to one quantum late (quantum 0 = exact lockstep, the reference).

Accounting per vCPU: exits by kind and by region; virtual time in the guest, in exit handling
(pre/post_run included), waiting for each lock, and halted -- they add up to its elapsed time.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from . import clock
from .clock import QuantumKeeper
from .errors import AemuError
from .irq import (
    CPU_INTERRUPT_HARD,
    CPU_INTERRUPT_INIT,
    CPU_INTERRUPT_NMI,
    CPU_INTERRUPT_SMI,
    CPU_INTERRUPT_TPR,
)

if TYPE_CHECKING:
    from .machine import Machine

__all__ = [
    "Compute", "Exit", "GuestError", "GuestProgram", "Halt", "LAPICTimer", "MMIORead", "MMIOWrite",
    "PIORead", "PIOWrite", "SendIPI", "Shutdown", "VCPU", "WaitForVector",
]


# -- exits a guest program yields ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PIORead:
    """``in`` from an I/O port: KVM_EXIT_IO (in); receives the value."""

    port: int
    size: int = 1


@dataclass(frozen=True, slots=True)
class PIOWrite:
    """``out`` to an I/O port: KVM_EXIT_IO (out)."""

    port: int
    value: int
    size: int = 1


@dataclass(frozen=True, slots=True)
class MMIORead:
    """A load from device memory: KVM_EXIT_MMIO (read); receives the value."""

    addr: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class MMIOWrite:
    """A store to device memory: KVM_EXIT_MMIO (write)."""

    addr: int
    value: int
    size: int = 4


@dataclass(frozen=True, slots=True)
class Compute:
    """Guest work for ``ns`` of virtual time without an exit."""

    ns: int


@dataclass(frozen=True, slots=True)
class Halt:
    """HLT: sleep until an interrupt; receives the vector that woke the vCPU."""


@dataclass(frozen=True, slots=True)
class WaitForVector:
    """An OS idle loop: HLT until an interrupt with ``vector`` has been taken.

    Interrupts the guest took before it got here count (the OS's handler noted them), so an
    interrupt that arrives between arming a timer and halting is not lost, as it is not for a
    real kernel that checks for work before ``sti; hlt``. Each taken interrupt satisfies one wait.
    """

    vector: int


@dataclass(frozen=True, slots=True)
class SendIPI:
    """An ICR write through the in-kernel LAPIC: deliver ``vector`` to vCPU ``dest``."""

    dest: int
    vector: int


@dataclass(frozen=True, slots=True)
class LAPICTimer:
    """Arm this vCPU's LAPIC timer (TSC-deadline) to fire ``vector`` after ``delay_ns``."""

    delay_ns: int
    vector: int = 0xEC


@dataclass(frozen=True, slots=True)
class Shutdown:
    """KVM_EXIT_SHUTDOWN (e.g. a triple fault or an ACPI power-off): this vCPU stops."""


#: exit class -> (is MMIO, is a read)
_ACCESS: dict[type, tuple[bool, bool]] = {
    PIORead: (False, True), PIOWrite: (False, False), MMIORead: (True, True), MMIOWrite: (True, False),
}

Exit = Union[PIORead, PIOWrite, MMIORead, MMIOWrite, Compute, Halt, WaitForVector, SendIPI, LAPICTimer, Shutdown]
GuestProgram = Generator[Exit, Any, None]


_MISS: Any = object()  # not in AddressSpace.fast_reads yet


class GuestError(AemuError, RuntimeError):
    """A guest program raised: the run stops, naming the vCPU and the guest's exception."""


class VCPU:
    """One vCPU: ``interrupt_request``, halted state, the exit loop, and its accounting."""

    def __init__(self, machine: Machine, index: int, program: GuestProgram, *, quantum_ns: int = 0) -> None:
        self.machine = machine
        self.index = index
        self.name = f"vcpu{index}"
        self.program = program
        self.keeper = QuantumKeeper(quantum_ns)
        self.interrupt_request = 0
        self.exit_request = False
        self.halted = False
        self.if_flag = True
        self.finished = False
        self.finish_ns = -1
        self.kvm_pending: list[int] = []  # vectors accepted by the in-kernel LAPIC
        self._hard_vectors: list[int] = []  # vectors a userspace LAPIC queued (kernel-irqchip=off)
        self._wake: asyncio.Future[None] | None = None
        self.current_exit: str = "none"
        # accounting
        self.exits: Counter[str] = Counter()
        self.interrupts = 0
        #: interrupts taken per vector and not yet waited for with WaitForVector
        self.taken: Counter[int] = Counter()
        self.guest_ns = 0
        self.exit_ns = 0  # exit handling including lock waits (split out in stats())
        self.halted_ns = 0
        self.start_ns = 0
        self.latency: dict[str, array[int]] = {}
        self.task: asyncio.Task[None] | None = None
        self._now: Callable[[], int] = clock.now_ns

    # -- InterruptTarget ------------------------------------------------------------------------
    def cpu_interrupt(self, mask: int) -> None:
        """QEMU's ``cpu_interrupt()``: set ``interrupt_request`` bits and kick the vCPU."""
        self.interrupt_request |= mask
        self.exit_request = True
        self._kick()

    def cpu_reset_interrupt(self, mask: int) -> None:
        """QEMU's ``cpu_reset_interrupt()``."""
        self.interrupt_request &= ~mask

    def kvm_inject(self, vector: int) -> None:
        """The in-kernel LAPIC accepted ``vector``: KVM injects it at the next entry (no BQL)."""
        self.kvm_pending.append(vector)
        self._kick()

    def queue_hard_vector(self, vector: int) -> None:
        """A userspace LAPIC (kernel-irqchip=off) queues ``vector`` and raises CPU_INTERRUPT_HARD."""
        self._hard_vectors.append(vector)
        self.cpu_interrupt(CPU_INTERRUPT_HARD)

    def _kick(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    # -- the exit loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """``kvm_cpu_exec`` until the guest program returns."""
        m = self.machine
        k = self.keeper
        k.attach()
        loop = asyncio.get_running_loop()
        if isinstance(loop, clock.VirtualTimeLoop):  # read the loop's clock directly (hot path)
            self._now = loop.now_ns
        self.start_ns = self._now()
        program = self.program
        send: Any = None
        costs = m.costs
        compute_types = Compute
        irqchip_in_qemu = m.kernel_irqchip != "on"  # kvm_pic_in_kernel() is false
        running = clock._running
        now = self._now
        exits = self.exits
        latency = self.latency
        patches = m.host.patches  # the set itself: switches flipped at run time are seen
        try:
            while True:
                if m.paused:  # the monitor's ``stop``: park at the next entry (aemu.monitor)
                    await m.wait_resumed(self)
                tracer = m.tracer
                pre = irqchip_in_qemu and (self.interrupt_request or "irqchip-pre-run" not in patches)
                if pre or (self.kvm_pending and self.if_flag):
                    t0 = now() + k.offset_ns
                    if pre:
                        await self.pre_run()  # else (patch 6/6, nothing pending) it has nothing to do
                    if self.kvm_pending and self.if_flag:
                        await self._take_injected()
                    tg = now() + k.offset_ns
                    self.exit_ns += tg - t0
                    if tracer is not None and tg > t0:
                        tracer.span(self.name, "pre_run", t0, tg)
                elif tracer is not None:
                    tg = now() + k.offset_ns
                # run: the guest until its next exit (compute needs no exit); QuantumKeeper.advance inline
                while True:
                    try:
                        ex = program.send(send)
                    except StopIteration:
                        ex = None
                        break
                    except Exception as e:
                        raise GuestError(f"vCPU {self.index}: guest program raised {e!r}") from e
                    send = None
                    if ex.__class__ is not compute_types:
                        break
                    ns = ex.ns
                    self.guest_ns += ns
                    k.offset_ns += ns
                    if k.offset_ns > k.quantum_ns or (k.locks_held and not k.hold_ahead):
                        await k.sync()
                if tracer is not None:
                    tracer.span(self.name, "guest", tg, now() + k.offset_ns)
                if ex is None:
                    break
                if ex.__class__ is Shutdown:
                    self.exits["shutdown"] += 1
                    program.close()
                    break
                cls = ex.__class__
                if cls is MMIORead or cls is PIORead:
                    # fast path: a read that needs no lock and no await (lockless region with a
                    # no-await handler, RAM, errors) completes here, without a coroutine
                    mmio = cls is MMIORead
                    exit_ns = costs.mmio_exit_ns if mmio else costs.pio_exit_ns
                    t0 = now() + k.offset_ns
                    k.offset_ns += exit_ns
                    space = m.memory if mmio else m.io
                    addr = ex.addr if mmio else ex.port  # type: ignore[union-attr]
                    size = ex.size  # type: ignore[union-attr]
                    fast = space.fast_reads.get(addr << 4 | size, _MISS)
                    if fast is _MISS:
                        fast = space.fast_read(addr, size)
                    if fast is not None and not space._dirty and not fast[2].lockless_io:
                        # a region behind the BQL with a coroutine handler: read_nowait would
                        # give up (None); go straight to the path that waits, as handle() would
                        mr = fast[2]
                        kind = "mmio" if mmio else "pio"
                        exits[kind] += 1
                        self.current_exit = kind
                        if k.offset_ns > k.quantum_ns or (k.locks_held and not k.hold_ahead):
                            await k.sync()
                        send, _res = await space._io_read_async(mr, fast[1], size)
                        self._account_name(mr.name, t0)
                        continue
                    if fast is not None and not space._dirty:
                        # the device's plain read_nowait, dispatch resolved once (AddressSpace.fast_read)
                        read, off, mr, mask = fast
                        running.keeper = k
                        try:
                            v = read(off, size)
                        finally:
                            running.keeper = None
                        if v is not None:
                            mr.reads += 1
                            send = v & mask
                            kind = "mmio" if mmio else "pio"
                            exits[kind] += 1
                            self.current_exit = kind
                            name = mr.name  # _account_name(name, t0), inline on the hottest path
                            dt = now() + k.offset_ns - t0
                            self.exit_ns += dt
                            lat = latency.get(name)
                            if lat is None:
                                lat = latency[name] = array("q")
                            lat.append(dt)
                            if m.tracer is not None:
                                m.tracer.span(self.name, f"{kind} {name}", t0, t0 + dt)
                            if k.offset_ns > k.quantum_ns:
                                await k.sync()
                            continue
                    running.keeper = k  # a synchronous stretch: device code finds the keeper directly
                    try:
                        r = space.read_nowait(addr, ex.size)  # type: ignore[union-attr]
                    finally:
                        running.keeper = None
                    if r is not None:
                        kind = "mmio" if mmio else "pio"
                        self.exits[kind] += 1
                        self.current_exit = kind
                        send = r[0]
                        self._account_access(space, addr, t0)
                        if k.offset_ns > k.quantum_ns:
                            await k.sync()
                        continue
                    k.offset_ns -= exit_ns  # not taken: the full path charges the exit itself
                send = await self.handle(ex, costs)
                if m.kernel_irqchip == "off":
                    await self.post_run()
        finally:
            if k.offset_ns and not k.locks_held:
                try:
                    await k.sync()
                except BaseException:
                    pass
            k.detach()
        self.finished = True
        self.finish_ns = clock.now_ns()
        self.current_exit = "finished"

    @property
    def region_exits(self) -> Counter[str]:
        """Accesses per region name (one latency sample is kept per access)."""
        return Counter({name: len(lat) for name, lat in self.latency.items()})

    def _local(self) -> int:
        """This vCPU's view of virtual time (global time plus its run-ahead offset)."""
        return self._now() + self.keeper.offset_ns

    async def pre_run(self) -> None:
        """``kvm_arch_pre_run`` (target/i386/kvm/kvm.c), with or without patch 6/6.

        Work under the BQL is charged to this vCPU's own keeper (what ``host.delay`` would find)."""
        m = self.machine
        if m.kernel_irqchip == "on":
            return
        ir = self.interrupt_request
        bql = m.bql
        if ir & (CPU_INTERRUPT_NMI | CPU_INTERRUPT_SMI):
            async with bql.held("kvm_arch_pre_run nmi/smi"):
                self.interrupt_request &= ~(CPU_INTERRUPT_NMI | CPU_INTERRUPT_SMI)
                await self.keeper.delay(m.costs.irq_inject_ns)
        if "irqchip-pre-run" not in m.host.patches:
            async with bql.held("kvm_arch_pre_run"):
                await self.keeper.delay(m.costs.pre_run_ns)
                self._pre_run_locked()
            return
        # 6/6: interrupt_request is read without the BQL; take it only when there is work.
        if ir & (CPU_INTERRUPT_INIT | CPU_INTERRUPT_TPR):
            self.exit_request = True
        if ir & CPU_INTERRUPT_HARD and self.if_flag:
            async with bql.held("kvm_arch_pre_run irq"):
                await self.keeper.delay(m.costs.pre_run_ns)
                self._pre_run_locked()

    def _pre_run_locked(self) -> None:
        """The part of pre_run under the BQL: INIT/TPR exit requests, PIC interrupt injection."""
        ir = self.interrupt_request
        if ir & (CPU_INTERRUPT_INIT | CPU_INTERRUPT_TPR):
            self.exit_request = True
        if ir & CPU_INTERRUPT_HARD and self.if_flag:
            self.interrupt_request &= ~CPU_INTERRUPT_HARD
            vector = self._hard_vectors.pop(0) if self._hard_vectors else self.machine.pic_interrupt(self)
            if vector >= 0:
                self.kvm_pending.append(vector)  # KVM_INTERRUPT: injected at this entry
            if self._hard_vectors:
                self.interrupt_request |= CPU_INTERRUPT_HARD
        self.exit_request = False

    async def post_run(self) -> None:
        """``kvm_arch_post_run``: with a userspace APIC, sync TPR/APIC base under the BQL."""
        t0 = self._local()
        async with self.machine.bql.held("kvm_arch_post_run"):
            pass
        self.exit_ns += self._local() - t0

    async def _take_injected(self) -> None:
        """The guest takes injected interrupts: injection, its handler, and the LAPIC EOI."""
        m = self.machine
        costs = m.costs
        while self.kvm_pending:
            vector = self.kvm_pending.pop(0)
            self.taken[vector] += 1
            self.interrupts += 1
            self.exits["irq"] += 1
            await m.host.delay(costs.irq_inject_ns + costs.kernel_exit_ns)
            await m.eoi(self, vector)

    async def handle(self, ex: Exit, costs: Any) -> Any:
        """Handle one exit; returns what the guest receives."""
        m = self.machine
        k = self.keeper
        cls = ex.__class__
        if cls in _ACCESS:
            mmio, is_read = _ACCESS[cls]
            addr = ex.addr if mmio else ex.port  # type: ignore[union-attr]
            space = m.memory if mmio else m.io
            kind = "mmio" if mmio else "pio"
            t0 = self._local()
            self.exits[kind] += 1
            self.current_exit = kind
            if k.advance(costs.mmio_exit_ns if mmio else costs.pio_exit_ns):
                await k.sync()
            if is_read:
                value, _res = await space.read(addr, ex.size)  # type: ignore[union-attr]
            else:
                value = None
                await space.write(addr, ex.value, ex.size)  # type: ignore[union-attr]
            self._account_access(space, addr, t0)
            return value
        if cls is Halt:
            return await self.halt()
        if cls is WaitForVector:
            v = ex.vector  # type: ignore[union-attr]
            while not self.taken[v]:
                await self.halt()
                if self.interrupt_request & CPU_INTERRUPT_HARD and m.kernel_irqchip != "on" and self.if_flag:
                    # a PIC/userspace-LAPIC interrupt woke us: it becomes a vector at the entry
                    # (kvm_arch_pre_run), as when the guest re-enters after the HLT exit
                    t0 = self._local()
                    await self.pre_run()
                    self.exit_ns += self._local() - t0
                if self.kvm_pending and self.if_flag:
                    t0 = self._local()
                    await self._take_injected()
                    self.exit_ns += self._local() - t0
            self.taken[v] -= 1
            return v
        if cls is SendIPI:
            self.exits["ipi"] += 1
            t0 = self._local()
            await m.host.delay(costs.ipi_ns)
            m.send_ipi(self, ex.dest, ex.vector)  # type: ignore[union-attr]
            self.exit_ns += self._local() - t0
            return None
        if cls is LAPICTimer:
            self.exits["lapic-timer"] += 1
            t0 = self._local()
            await m.host.delay(costs.kernel_exit_ns)
            m.arm_lapic_timer(self, ex.delay_ns, ex.vector)  # type: ignore[union-attr]
            self.exit_ns += self._local() - t0
            return None
        raise GuestError(f"vCPU {self.index}: guest program yielded {ex!r}, which is not an exit")

    def _account_access(self, space: Any, addr: int, t0: int) -> None:
        hit = space.translate(addr) if 0 <= addr < space.limit else None
        self._account_name(hit[0].name if hit is not None else "unassigned", t0)

    def _account_name(self, name: str, t0: int) -> None:
        """An access to region ``name`` that began (exit) at local time ``t0`` ends now."""
        dt = self._local() - t0
        self.exit_ns += dt
        if self.machine.tracer is not None:
            self.machine.tracer.span(self.name, f"{self.current_exit} {name}", t0, t0 + dt)
        lat = self.latency.get(name)
        if lat is None:
            lat = self.latency[name] = array("q")
        lat.append(dt)

    async def halt(self) -> int:
        """HLT: wait for an interrupt. In-kernel LAPIC: the kernel waits; else QEMU does, then
        retakes the BQL (``qemu_wait_io_event``)."""
        k = self.keeper
        if k.offset_ns:
            await k.sync()
        self.exits["hlt"] += 1
        self.current_exit = "hlt"
        t0 = clock.now_ns()
        loop = asyncio.get_running_loop()
        while not self.kvm_pending and not (self.interrupt_request & CPU_INTERRUPT_HARD):
            self.halted = True
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None
                self.halted = False
        self.halted_ns += clock.now_ns() - t0
        if self.machine.tracer is not None:
            self.machine.tracer.span(self.name, "halted", t0, clock.now_ns())
        if self.machine.kernel_irqchip == "off":
            t1 = clock.now_ns()
            async with self.machine.bql.held("qemu_wait_io_event"):
                pass
            self.exit_ns += clock.now_ns() - t1
        self.current_exit = "running"
        return self.kvm_pending[0] if self.kvm_pending else -1

    # -- reports -----------------------------------------------------------------------------------
    def lock_wait_ns(self) -> dict[str, int]:
        """Virtual time this vCPU waited for each lock (from the locks' per-task accounting)."""
        out: dict[str, int] = {}
        for lock in self.machine.all_locks():
            for t in lock.statistics().tasks:
                if t.task == self.name:
                    out[lock.name] = t.wait_total_ns
        return out

    def describe(self) -> str:
        """A one-line state for ``info cpus`` / deadlock reports."""
        state = "halted" if self.halted else ("finished" if self.finished else "running")
        return f"CPU #{self.index}: {state} exit={self.current_exit} ir={self.interrupt_request:#x}"

    def __repr__(self) -> str:
        return f"<VCPU {self.index} {self.describe()}>"


"""vCPUs: one asyncio task each, running QEMU's KVM exit loop (``kvm_cpu_exec``).

A guest program is a generator that yields exits and receives what the exit returns (the value
of a read, the vector that woke a halt), like ``KVM_RUN`` returning to userspace::

    def program(cpu):
        value = yield MMIORead(0xfed000f0, 8)   # read the HPET main counter
        yield Compute(1_000)                    # 1 us of guest work, no exit
        yield Halt()                            # HLT until an interrupt

Each loop iteration models ``kvm_cpu_exec``, the same four steps every time:

* **pre_run** -- ``kvm_arch_pre_run``. With the PIC in userspace (kernel-irqchip=split|off) QEMU
  took the BQL on every entry to check ``interrupt_request``; with ``irqchip-pre-run`` (6/6) it
  takes it only when a hard interrupt is pending and the guest can take it (IF set), and NMI/SMI
  bits are cleared under it briefly. kernel-irqchip=on never takes it. The loop calls it only
  when the entry can have work (``VCPU.apply_patches`` keeps that flag when a switch flips).
* **run** -- the guest program until its next exit (compute is local time, see below).
* **handle** -- the exit. PIO/MMIO: ``AddressSpace.access`` resolves it, ``read_nowait`` /
  ``write_nowait`` completes it if it needs no lock, else the awaited ``read``/``write`` does
  (where ``prepare_mmio_access`` takes the BQL) -- as in QEMU the loop itself never decides about
  locks. HLT waits for an interrupt (with an in-kernel LAPIC the kernel handles it); IPIs and
  LAPIC timers go through the in-kernel LAPIC; shutdown stops the vCPU (so does a guest program
  that returns).
* **post_run** -- ``kvm_arch_post_run``, after every exit. It has work only with a userspace APIC
  (kernel-irqchip=off), where it takes the BQL; otherwise the loop skips it.

A vCPU sees its machine through :class:`Board` (its address spaces, the BQL, the switches and
its interrupt hooks), and keeps its books in a :class:`VCPUAccount`.

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
from collections.abc import Awaitable, Callable, Generator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

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
    from .costs import CostModel
    from .memory import AddressSpace, MemoryAccess
    from .sync import Lock
    from .trace import Tracer

__all__ = [
    "Arrive", "BadExit", "Board", "Compute", "Exit", "GuestBarrier", "GuestError", "GuestProgram", "Halt", "LAPICTimer",
    "MMIORead", "MMIOWrite", "SpinUntil",
    "PIORead", "PIOWrite", "SendIPI", "Shutdown", "VCPU", "VCPUAccount", "WaitForVector",
]


# -- exits a guest program yields ---------------------------------------------------------------
# Each checks its fields when it is made (in the guest program, so the vCPU that made a bad one
# is named): a guest can make no exit that would corrupt the books or leave a lock held.

def _check(exit: object, name: str, value: object, lo: int, hi: int | None = None,
           choices: tuple[int, ...] = ()) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if ok and choices and value not in choices:
        ok = False
    if not ok:
        if choices:
            want = "one of " + ", ".join(map(str, choices))
        else:
            want = f"an integer from {lo} to {hi:#x}" if hi is not None else f"an integer >= {lo}"
        raise BadExit(f"{type(exit).__name__}: {name} must be {want}, got {value!r}")


_U64 = (1 << 64) - 1

@dataclass(frozen=True, slots=True)
class PIORead:
    """``in`` from an I/O port: KVM_EXIT_IO (in); receives the value."""

    port: int
    size: int = 1

    def __post_init__(self) -> None:
        _check(self, "port", self.port, 0, 0xFFFF)
        _check(self, "size", self.size, 1, choices=(1, 2, 4))


@dataclass(frozen=True, slots=True)
class PIOWrite:
    """``out`` to an I/O port: KVM_EXIT_IO (out)."""

    port: int
    value: int
    size: int = 1

    def __post_init__(self) -> None:
        _check(self, "port", self.port, 0, 0xFFFF)
        _check(self, "value", self.value, 0, _U64)
        _check(self, "size", self.size, 1, choices=(1, 2, 4))


@dataclass(frozen=True, slots=True)
class MMIORead:
    """A load from device memory: KVM_EXIT_MMIO (read); receives the value."""

    addr: int
    size: int = 4

    def __post_init__(self) -> None:
        _check(self, "addr", self.addr, 0, _U64)
        _check(self, "size", self.size, 1, choices=(1, 2, 4, 8))


@dataclass(frozen=True, slots=True)
class MMIOWrite:
    """A store to device memory: KVM_EXIT_MMIO (write)."""

    addr: int
    value: int
    size: int = 4

    def __post_init__(self) -> None:
        _check(self, "addr", self.addr, 0, _U64)
        _check(self, "value", self.value, 0, _U64)
        _check(self, "size", self.size, 1, choices=(1, 2, 4, 8))


@dataclass(frozen=True, slots=True)
class Compute:
    """Guest work for ``ns`` of virtual time without an exit."""

    ns: int

    def __post_init__(self) -> None:
        _check(self, "ns", self.ns, 0)


class GuestBarrier:
    """A counter in guest memory that vCPUs :class:`Arrive` at and :class:`SpinUntil` it is full.

    It is what an OS's spin barriers are (an IPI generic call's, ``while (cpus_active() > 1)
    pause();``): the arrivals are plain stores, the wait a PAUSE loop, neither an exit to QEMU.
    """

    __slots__ = ("parties", "arrived", "_full")

    def __init__(self, parties: int) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
            raise ValueError(f"a barrier needs a positive number of parties, got {parties!r}")
        self.parties = parties
        self.arrived = 0
        self._full: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return self.arrived >= self.parties

    def arrive(self) -> None:
        self.arrived += 1
        if self.full and self._full is not None and not self._full.done():
            self._full.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        """A future done when the barrier is full."""
        if self._full is None:
            self._full = asyncio.get_running_loop().create_future()
            if self.full:
                self._full.set_result(None)
        return self._full


@dataclass(frozen=True, slots=True)
class Arrive:
    """Arrive at ``barrier`` (a store to guest memory, seen by the others at this vCPU's time)."""

    barrier: GuestBarrier


@dataclass(frozen=True, slots=True)
class SpinUntil:
    """Spin with PAUSE until ``barrier`` is full: guest time on the vCPU's host CPU.

    The loop's pause-loop exits are KVM's (``kvm_vcpu_on_spin``, virt/kvm/kvm_main.c): each
    offers the host CPU to another vCPU of the VM that is ready
    (:meth:`aemu.sched.HostThread.spin`); none goes to QEMU, none takes a lock.
    """

    barrier: GuestBarrier


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

    def __post_init__(self) -> None:
        _check(self, "vector", self.vector, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class SendIPI:
    """An ICR write through the in-kernel LAPIC: deliver ``vector`` to vCPU ``dest``."""

    dest: int
    vector: int

    def __post_init__(self) -> None:
        _check(self, "dest", self.dest, 0)
        _check(self, "vector", self.vector, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class LAPICTimer:
    """Arm this vCPU's LAPIC timer (TSC-deadline) to fire ``vector`` after ``delay_ns``."""

    delay_ns: int
    vector: int = 0xEC

    def __post_init__(self) -> None:
        _check(self, "delay_ns", self.delay_ns, 0)
        _check(self, "vector", self.vector, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class Shutdown:
    """KVM_EXIT_SHUTDOWN (e.g. a triple fault or an ACPI power-off): this vCPU stops."""


Exit = Union[PIORead, PIOWrite, MMIORead, MMIOWrite, Compute, Arrive, SpinUntil, Halt, WaitForVector, SendIPI, LAPICTimer,
             Shutdown]
GuestProgram = Generator[Exit, Any, None]
_END: Any = object()  # the guest program returned


#: What the loop handles without a return from KVM_RUN of its own: a wait for an interrupt (if it
#: halts, its wake-up re-enters in ``handle()``) and the spin barriers (guest memory, no exit).
_NO_RETURN = frozenset({WaitForVector, Arrive, SpinUntil})


class GuestError(AemuError, RuntimeError):
    """A guest program raised or yielded what is not an exit: the run stops, naming the vCPU."""


class BadExit(GuestError, ValueError):
    """An exit made with a field out of range or of the wrong type (raised where it is made)."""


class Board(Protocol):
    """What a vCPU sees of its machine: its address spaces, the BQL, the switches, its interrupt hooks."""

    memory: AddressSpace
    io: AddressSpace
    bql: Lock
    costs: CostModel
    kernel_irqchip: str
    tracer: Tracer | None
    paused: bool

    @property
    def patches(self) -> AbstractSet[str]:
        """The switches of the series that are on (live: flipped at run time)."""

    async def wait_resumed(self, cpu: VCPU) -> None:
        """Park until the monitor's ``cont``."""

    def pic_interrupt(self, cpu: VCPU) -> int:
        """``cpu_get_pic_interrupt`` (under the BQL)."""

    async def eoi(self, cpu: VCPU, vector: int) -> None:
        """The guest's EOI to its LAPIC."""

    def send_ipi(self, src: VCPU, dest: int, vector: int) -> None:
        """An IPI through the in-kernel LAPIC."""

    def arm_lapic_timer(self, cpu: VCPU, delay_ns: int, vector: int) -> None:
        """Arm the LAPIC timer."""


#: latency samples a vCPU keeps per region before folding them into value counts
_FOLD_AT = 1 << 14


def _three_digits(ns: int) -> int:
    """``ns`` rounded to three significant digits (exact below 1,000)."""
    if ns < 1000:
        return ns
    k = 10 ** (len(str(ns)) - 3)
    rounded: int = (ns + k // 2) // k * k
    return rounded


class VCPUAccount:
    """One vCPU's books: exits by kind, interrupts taken, virtual time by state, access latency.

    ``guest_ns + exit_ns + halted_ns`` is the vCPU's elapsed time (lock waits are inside
    ``exit_ns``; the locks' per-task books split them out). Access latencies are appended as
    samples and folded into value counts (latency ns -> accesses) as they grow. Virtual-time
    latencies take few distinct values and are kept exact; a region whose counts pass
    ``MAX_EXACT_VALUES`` distinct values (real time: nanosecond jitter) keeps them from then on to
    three significant digits (within 0.5%), so memory stays flat however long a run goes and no
    access goes uncounted.
    """

    MAX_EXACT_VALUES = 4096

    __slots__ = ("exits", "interrupts", "guest_ns", "exit_ns", "halted_ns", "runnable_ns", "runnable_in_lock_ns",
                 "samples", "_counts", "_coarse")

    def __init__(self) -> None:
        self.exits: Counter[str] = Counter()
        self.interrupts = 0
        self.guest_ns = 0
        self.exit_ns = 0
        self.halted_ns = 0
        #: waiting for a host CPU (``--host-cpus``), in all; and the part of it inside lock waits
        self.runnable_ns = 0
        self.runnable_in_lock_ns = 0
        #: region name -> latency samples not folded yet
        self.samples: dict[str, array[int]] = {}
        self._counts: dict[str, Counter[int]] = {}
        self._coarse: set[str] = set()  # regions whose latencies are kept to 3 significant digits

    def fold(self, name: str) -> None:
        """Fold region ``name``'s samples into its value counts."""
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = Counter()
        if name in self._coarse:
            counts.update(map(_three_digits, self.samples[name]))
        else:
            counts.update(self.samples[name])  # counted in C
            if len(counts) > self.MAX_EXACT_VALUES:
                self._coarse.add(name)
                coarse: Counter[int] = Counter()
                for v, n in counts.items():
                    coarse[_three_digits(v)] += n
                self._counts[name] = coarse
        self.samples[name] = array("q")

    def latency(self) -> dict[str, Counter[int]]:
        """Region name -> access latency value counts (ns -> accesses)."""
        for name in list(self.samples):
            if self.samples[name]:
                self.fold(name)
        return {name: c for name, c in self._counts.items() if c}


class VCPU:
    """One vCPU: ``interrupt_request``, halted state, the exit loop, and its :class:`VCPUAccount`."""

    def __init__(self, board: Board, index: int, program: GuestProgram, *, quantum_ns: int = 0) -> None:
        self.board = board
        self.index = index
        self.name = f"vcpu{index}"
        self.program = program
        self.keeper = QuantumKeeper(quantum_ns)
        self.interrupt_request = 0
        self.exit_request = False
        self.halted = False
        self.if_flag = True
        self.finished = False
        self.start_ns = 0
        self.finish_ns = -1
        self.kvm_pending: list[int] = []  # vectors accepted by the in-kernel LAPIC
        self._hard_vectors: list[int] = []  # vectors a userspace LAPIC queued (kernel-irqchip=off)
        self._wake: asyncio.Future[None] | None = None
        self.current_exit: str = "none"
        #: interrupts taken per vector and not yet waited for with WaitForVector
        self.taken: Counter[int] = Counter()
        self.account = VCPUAccount()
        self.task: asyncio.Task[None] | None = None
        self._now: Callable[[], int] = clock.now_ns
        self._patches: AbstractSet[str] = board.patches
        self._irqchip_in_qemu = board.kernel_irqchip != "on"  # kvm_pic_in_kernel() is false
        #: kvm_arch_post_run has work after every exit (a userspace APIC: kernel-irqchip=off)
        self._userspace_apic = board.kernel_irqchip == "off"
        self._entry_always = False
        self.apply_patches()

    def apply_patches(self) -> None:
        """Re-read the switches (the machine calls this when one flips): without ``irqchip-pre-run``
        and with the PIC in userspace, every entry has work; else only when an interrupt is pending."""
        self._entry_always = self._irqchip_in_qemu and "irqchip-pre-run" not in self._patches

    # the books, as the reports read them
    @property
    def exits(self) -> Counter[str]:
        """Exits by kind (``pio``, ``mmio``, ``hlt``, ``irq``, ``ipi``, ``lapic-timer``, ``shutdown``; ``ple``:
        pause-loop exits that handed the host CPU to a ready vCPU)."""
        return self.account.exits

    @property
    def interrupts(self) -> int:
        """Interrupts the guest took."""
        return self.account.interrupts

    @property
    def guest_ns(self) -> int:
        """Virtual time in the guest."""
        return self.account.guest_ns

    @property
    def exit_ns(self) -> int:
        """Virtual time handling exits (pre/post_run and lock waits included)."""
        return self.account.exit_ns

    @property
    def halted_ns(self) -> int:
        """Virtual time halted."""
        return self.account.halted_ns

    @property
    def latency(self) -> dict[str, Counter[int]]:
        """Region name -> access latency value counts (ns -> accesses)."""
        return self.account.latency()

    @property
    def region_exits(self) -> Counter[str]:
        """Accesses per region name."""
        return Counter({name: c.total() for name, c in self.latency.items()})

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
            if self.keeper.thread is not None:
                self.keeper.thread.woken()
            w.set_result(None)

    # -- the exit loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """``kvm_cpu_exec`` until the guest program returns: pre_run, run, handle the exit, post_run."""
        b = self.board
        k = self.keeper
        k.attach()
        loop = asyncio.get_running_loop()
        if isinstance(loop, clock.VirtualTimeLoop):  # read the loop's clock directly (hot path)
            self._now = loop.now_ns
        now = self._now
        self.start_ns = now()
        acct = self.account
        exits = acct.exits
        program = self.program
        send: Any = None
        costs = b.costs
        running = clock._running
        memory = b.memory
        #: exit class -> (kind, address space, its resolved accesses' lookup, exit round trip ns, is a read)
        io_exits: dict[type, tuple[str, AddressSpace, Callable[[int], MemoryAccess | None], int, bool]] = {
            MMIORead: ("mmio", memory, memory.resolved.get, costs.mmio_exit_ns, True),
            MMIOWrite: ("mmio", memory, memory.resolved.get, costs.mmio_exit_ns, False),
            PIORead: ("pio", b.io, b.io.resolved.get, costs.pio_exit_ns, True),
            PIOWrite: ("pio", b.io, b.io.resolved.get, costs.pio_exit_ns, False),
        }
        samples_of = acct.samples
        fold_at = _FOLD_AT
        #: the last exit returned to QEMU (KVM_RUN returned), so the next entry runs kvm_arch_pre_run;
        #: exits KVM handles itself (IPI, LAPIC timer, PLE; HLT with the LAPIC in the kernel) do not
        in_qemu = True
        userspace_halt = self._userspace_apic  # kernel-irqchip=off: the LAPIC's exits go to QEMU
        try:
            while True:
                if b.paused:  # the monitor's ``stop``: park at the next entry (aemu.monitor)
                    await b.wait_resumed(self)
                if (self._entry_always and in_qemu) or self.interrupt_request or self.kvm_pending:
                    entry = self.kvm_arch_pre_run(in_qemu)  # the entry has work, or decides it has none
                    if entry is not None:
                        await entry
                in_qemu = False
                tracer = b.tracer
                if tracer is not None:
                    tg = now() + k.offset_ns
                # run: the guest until its next exit; compute needs no exit (QuantumKeeper.advance inline)
                while True:
                    try:
                        ex = program.send(send)
                    except StopIteration:
                        ex = _END
                        break
                    except BadExit as e:
                        raise GuestError(f"vCPU {self.index}: the guest program made a bad exit: {e}") from e
                    except Exception as e:
                        raise GuestError(f"vCPU {self.index}: guest program raised {e!r}") from e
                    send = None
                    if ex.__class__ is not Compute:
                        break
                    ns = ex.ns
                    acct.guest_ns += ns
                    k.offset_ns += ns
                    k.last_ns = ns
                    if k.offset_ns > k.horizon_ns or (k.locks_held and not k.hold_ahead):
                        await k.sync()
                if tracer is not None:
                    tracer.span(self.name, "guest", tg, now() + k.offset_ns)
                if ex is _END:
                    break
                # handle the exit
                cls = ex.__class__
                io = io_exits.get(cls)
                if io is not None:
                    # KVM_EXIT_IO / KVM_EXIT_MMIO: the access needs no lock, or it waits
                    # (address_space_rw decides, in prepare_mmio_access)
                    kind, space, resolved, exit_cost, is_read = io
                    in_qemu = True
                    addr = ex.addr if space is memory else ex.port  # type: ignore[union-attr]
                    size = ex.size  # type: ignore[union-attr]
                    exits[kind] += 1
                    self.current_exit = kind
                    t0 = now() + k.offset_ns
                    k.offset_ns += exit_cost
                    k.last_ns = exit_cost
                    acc = resolved(addr << 4 | size) or space.access(addr, size)
                    running.keeper = k  # a synchronous stretch: device code finds the keeper directly
                    try:
                        r = acc.read_nowait() if is_read else acc.write_nowait(ex.value)  # type: ignore[union-attr]
                    finally:
                        running.keeper = None
                    if r is None:
                        thread = k.thread
                        if thread is not None:  # out of KVM_RUN: QEMU handles the exit
                            thread.in_guest = False
                        try:
                            if k.offset_ns > k.horizon_ns or (k.locks_held and not k.hold_ahead):
                                await k.sync_in_order()  # the slow path takes a lock
                            r = await (acc.read() if is_read else acc.write(ex.value))  # type: ignore[union-attr]
                        finally:
                            if thread is not None:
                                thread.in_guest = True
                    send = r[0] if is_read else None  # type: ignore[index]
                    # the access's latency: from the exit to the return into the guest
                    dt = now() + k.offset_ns - t0
                    acct.exit_ns += dt
                    name = acc.name
                    samples = samples_of.get(name)
                    if samples is None:
                        samples = samples_of[name] = array("q")
                    samples.append(dt)
                    if len(samples) >= fold_at:
                        acct.fold(name)
                    if tracer is not None:
                        tracer.span(self.name, f"{kind} {name}", t0, t0 + dt)
                    if k.offset_ns > k.horizon_ns:
                        await k.sync()
                elif cls is Shutdown:
                    exits["shutdown"] += 1
                    program.close()
                    if self._userspace_apic:
                        await self.kvm_arch_post_run()
                    break
                else:
                    send = await self.handle(ex)
                    # with the LAPIC in QEMU the LAPIC's exits return to it; a wait for an
                    # interrupt re-enters through pre_run itself when it halted; a barrier is
                    # guest memory, no exit
                    in_qemu = userspace_halt and cls not in _NO_RETURN
                if self._userspace_apic and cls is not Halt and cls not in _NO_RETURN:
                    await self.kvm_arch_post_run()  # HLT exits run it in halt()
        finally:
            if k.offset_ns and not k.locks_held:
                try:
                    await k.sync()
                except BaseException:
                    pass
            if k.thread is not None:  # the thread ends: its host CPU goes to another
                k.thread.block()
            k.detach()
        self.finished = True
        self.finish_ns = clock.now_ns()
        self.current_exit = "finished"

    def _local(self) -> int:
        """This vCPU's view of virtual time (global time plus its run-ahead offset)."""
        return self._now() + self.keeper.offset_ns

    def kvm_arch_pre_run(self, in_qemu: bool = True) -> Awaitable[None] | None:
        """The entry: ``kvm_arch_pre_run`` (target/i386/kvm/kvm.c) and the interrupts KVM injects.

        QEMU runs ``kvm_arch_pre_run`` before each ``KVM_RUN`` ioctl: when the last exit returned
        to QEMU (``in_qemu``), or an ``interrupt_request`` kicked the vCPU out of ``KVM_RUN``; an
        interrupt the in-kernel LAPIC injects needs neither. With the PIC in userspace
        (kernel-irqchip=split|off) QEMU took the BQL there every time; with ``irqchip-pre-run``
        (6/6) only when ``interrupt_request`` has work, read without the BQL. Returns None when
        the entry has nothing to do (no await), else the work to await.
        """
        ir = self.interrupt_request
        pre = self._irqchip_in_qemu and bool(ir or (in_qemu and "irqchip-pre-run" not in self._patches))
        if pre or (self.kvm_pending and self.if_flag):
            return self._entry(pre)
        return None

    async def _entry(self, pre: bool) -> None:
        t0 = self._local()
        if pre:
            await self._out_of_kvm_run(self.pre_run())
        if self.kvm_pending and self.if_flag:
            await self._take_injected()
        tg = self._local()
        self.account.exit_ns += tg - t0
        tracer = self.board.tracer
        if tracer is not None and tg > t0:
            tracer.span(self.name, "pre_run", t0, tg)

    async def pre_run(self) -> None:
        """``kvm_arch_pre_run``'s work under the BQL, with or without patch 6/6.

        Work under the BQL is charged to this vCPU's own keeper (what ``host.delay`` would find)."""
        b = self.board
        if b.kernel_irqchip == "on":
            return
        ir = self.interrupt_request
        bql = b.bql
        if ir & (CPU_INTERRUPT_NMI | CPU_INTERRUPT_SMI):
            async with bql.held("kvm_arch_pre_run nmi/smi"):
                self.interrupt_request &= ~(CPU_INTERRUPT_NMI | CPU_INTERRUPT_SMI)
                await self.keeper.delay(b.costs.irq_inject_ns)
        if "irqchip-pre-run" not in b.patches:
            async with bql.held("kvm_arch_pre_run"):
                await self.keeper.delay(b.costs.pre_run_ns)
                self._pre_run_locked()
            return
        # 6/6: interrupt_request is read without the BQL; take it only when there is work.
        if ir & (CPU_INTERRUPT_INIT | CPU_INTERRUPT_TPR):
            self.exit_request = True
        if ir & CPU_INTERRUPT_HARD and self.if_flag:
            async with bql.held("kvm_arch_pre_run irq"):
                await self.keeper.delay(b.costs.pre_run_ns)
                self._pre_run_locked()

    def _pre_run_locked(self) -> None:
        """The part of pre_run under the BQL: INIT/TPR exit requests, PIC interrupt injection."""
        ir = self.interrupt_request
        if ir & (CPU_INTERRUPT_INIT | CPU_INTERRUPT_TPR):
            self.exit_request = True
        if ir & CPU_INTERRUPT_HARD and self.if_flag:
            self.interrupt_request &= ~CPU_INTERRUPT_HARD
            vector = self._hard_vectors.pop(0) if self._hard_vectors else self.board.pic_interrupt(self)
            if vector >= 0:
                self.kvm_pending.append(vector)  # KVM_INTERRUPT: injected at this entry
            if self._hard_vectors:
                self.interrupt_request |= CPU_INTERRUPT_HARD
        self.exit_request = False

    async def kvm_arch_post_run(self) -> None:
        """``kvm_arch_post_run`` with a userspace APIC (kernel-irqchip=off): sync the TPR and APIC
        base under the BQL. The loop runs it after every return from KVM_RUN when
        ``_userspace_apic``; with the APIC in the kernel it has nothing to do."""
        t0 = self._local()
        await self._out_of_kvm_run(self._post_run_locked())
        self.account.exit_ns += self._local() - t0

    async def _post_run_locked(self) -> None:
        async with self.board.bql.held("kvm_arch_post_run"):
            pass

    async def _out_of_kvm_run(self, work: Awaitable[None]) -> None:
        """Await ``work``, QEMU's side of an entry or exit, with the vCPU thread marked out of
        KVM_RUN: preempted there, KVM does not count it ready (:mod:`aemu.sched`)."""
        thread = self.keeper.thread
        if thread is None:
            await work
            return
        thread.in_guest = False
        try:
            await work
        finally:
            thread.in_guest = True

    async def _take_injected(self) -> None:
        """The guest takes injected interrupts: injection, its handler, and the LAPIC EOI."""
        b = self.board
        costs = b.costs
        acct = self.account
        while self.kvm_pending:
            vector = self.kvm_pending.pop(0)
            self.taken[vector] += 1
            acct.interrupts += 1
            acct.exits["irq"] += 1
            await self.keeper.delay(costs.irq_inject_ns + costs.kernel_exit_ns)
            await b.eoi(self, vector)

    async def spin_until(self, barrier: GuestBarrier) -> None:
        """A PAUSE loop until ``barrier`` is full: guest time, on the host CPU if one is modelled
        (offered to ready vCPUs at its pause-loop exits: ``exits["ple"]`` counts those that
        handed it over)."""
        k = self.keeper
        if k.offset_ns:
            await k.sync()
        if barrier.full:
            return
        acct = self.account
        t0 = clock.now_ns()
        waited = acct.runnable_ns
        thread = k.thread
        self.current_exit = "spin"
        try:
            if thread is None:
                await barrier.wait()
            else:
                yields = await thread.spin(barrier.wait())
                if yields:
                    acct.exits["ple"] += yields
        finally:  # a run that ends (cap, Ctrl-C) while spinning still books the spin
            end = clock.now_ns()
            acct.guest_ns += end - t0 - (acct.runnable_ns - waited)
            tracer = self.board.tracer
            if tracer is not None:
                tracer.span(self.name, "guest", t0, end)

    async def handle(self, ex: Exit) -> Any:
        """Handle an exit that is not a port or memory access; returns what the guest receives."""
        b = self.board
        costs = b.costs
        acct = self.account
        cls = ex.__class__
        if cls is Halt:
            return await self.halt()
        if cls is WaitForVector:
            v = ex.vector  # type: ignore[union-attr]
            while not self.taken[v]:
                await self.halt()
                if self.interrupt_request & CPU_INTERRUPT_HARD and b.kernel_irqchip != "on" and self.if_flag:
                    # a PIC/userspace-LAPIC interrupt woke us: it becomes a vector at the entry
                    # (kvm_arch_pre_run), as when the guest re-enters after the HLT exit
                    t0 = self._local()
                    await self.pre_run()
                    acct.exit_ns += self._local() - t0
                if self.kvm_pending and self.if_flag:
                    t0 = self._local()
                    await self._take_injected()
                    acct.exit_ns += self._local() - t0
            self.taken[v] -= 1
            return v
        if cls is Arrive:
            k = self.keeper
            if k.offset_ns:  # the store is seen at this vCPU's local time
                await k.sync_in_order()
            ex.barrier.arrive()  # type: ignore[union-attr]
            return None
        if cls is SpinUntil:
            await self.spin_until(ex.barrier)  # type: ignore[union-attr]
            return None
        if cls is SendIPI:
            acct.exits["ipi"] += 1
            t0 = self._local()
            k = self.keeper  # the ICR write is observable: the target sees the IPI at the sender's local time
            k.advance(costs.ipi_ns)
            if k.offset_ns:
                await k.sync()
            b.send_ipi(self, ex.dest, ex.vector)  # type: ignore[union-attr]
            acct.exit_ns += self._local() - t0
            return None
        if cls is LAPICTimer:
            acct.exits["lapic-timer"] += 1
            t0 = self._local()
            await self.keeper.delay(costs.kernel_exit_ns)
            b.arm_lapic_timer(self, ex.delay_ns, ex.vector)  # type: ignore[union-attr]
            acct.exit_ns += self._local() - t0
            return None
        raise GuestError(f"vCPU {self.index}: guest program yielded {ex!r}, which is not an exit")

    async def halt(self) -> int:
        """HLT: wait for an interrupt. In-kernel LAPIC: the kernel waits; else HLT is an exit to
        QEMU (``kvm_arch_post_run`` runs), which waits, then retakes the BQL (``qemu_wait_io_event``)."""
        k = self.keeper
        if k.offset_ns:
            await k.sync()
        b = self.board
        acct = self.account
        acct.exits["hlt"] += 1
        self.current_exit = "hlt"
        if self._userspace_apic:
            await self.kvm_arch_post_run()
        t0 = clock.now_ns()
        loop = asyncio.get_running_loop()
        thread = k.thread
        try:
            while not self.kvm_pending and not (self.interrupt_request & CPU_INTERRUPT_HARD):
                if thread is not None:  # the vCPU thread sleeps: its host CPU goes to another
                    thread.block(ready=True)
                self.halted = True
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
                    self.halted = False
        finally:  # a run that ends (cap, Ctrl-C) while halted still books the halt
            acct.halted_ns += clock.now_ns() - t0
            if b.tracer is not None:
                b.tracer.span(self.name, "halted", t0, clock.now_ns())
        if thread is not None:  # woken: it runs once it has a host CPU (runnable time)
            await thread.host.dispatch(thread)
        if b.kernel_irqchip == "off":
            t1 = clock.now_ns()
            async with b.bql.held("qemu_wait_io_event"):
                pass
            acct.exit_ns += clock.now_ns() - t1
        self.current_exit = "running"
        return self.kvm_pending[0] if self.kvm_pending else -1

    # -- reports -----------------------------------------------------------------------------------
    def describe(self) -> str:
        """A one-line state for ``info cpus`` / deadlock reports."""
        state = "halted" if self.halted else ("finished" if self.finished else "running")
        return f"CPU #{self.index}: {state} exit={self.current_exit} ir={self.interrupt_request:#x}"

    def __repr__(self) -> str:
        return f"<VCPU {self.index} {self.describe()}>"


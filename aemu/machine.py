"""The machine: q35/pc assembled from a table of devices, the patch switches, start and stop.

:class:`Machine` builds what ``-M q35|pc`` builds in QEMU as far as aemu models it -- the
``memory`` and ``I/O`` address spaces, the split (or in-kernel, or userspace) irqchip, then the
devices of :data:`BOARD` (the ACPI PM block, the HPET, the BQL-bound legacy devices) -- wires
GSIs, applies the switches of the BQL-free series, and :meth:`~Machine.start` starts one
:class:`~aemu.cpu.VCPU` task per ``-smp`` CPU plus the main loop (``vm_start``).

How a run is capped, traced, watched and interrupted is :mod:`aemu.runner`'s
(:func:`~aemu.runner.run_machine`, :func:`~aemu.runner.simulate`); ``aemu.machine.simulate``,
``simulate_machine`` and ``DEFAULT_CAP_NS`` still resolve to it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import clock
from .config import MachineConfig
from .sched import HostCPUs
from .cpu import VCPU, GuestProgram
from .devices.acpi_pm import ACPIPMTimer
from .devices.base import Device, DeviceHost
from .devices.generic import GenericRegion
from .devices.hpet import HPETState
from .devices.i8042 import I8042
from .devices.lapic import IRQChip
from .devices.misc import IOPort80, PCSpkState, Port92
from .devices.pci import PCIHost
from .devices.pit import PITState
from .devices.rtc import RTCState
from .devices.serial import SerialState
from .errors import ConfigError, NeedsAsyncioError
from .memory import AddressSpace, MemoryRegion, MemoryRegionOps
from .result import RegionLatency, region_latency
from .sync import Lock
from .trace import Tracer, Utilisation
from .workloads import Workload, get_workload

if TYPE_CHECKING:  # at run time these resolve through __getattr__ below (aemu.runner imports this module)
    from .runner import DEFAULT_CAP_NS as DEFAULT_CAP_NS
    from .runner import ProgressFn as ProgressFn
    from .runner import simulate as simulate
    from .runner import simulate_machine as simulate_machine

__all__ = ["BOARD", "BoardDevice", "Machine"]

_ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def _unassigned_io_read(offset: int, size: int) -> int:
    return _ALL_ONES[size]


def _unassigned_io_write(offset: int, value: int, size: int) -> None:
    return None


def _no_program() -> GuestProgram:
    return
    yield  # a generator that ends at once (replaced by the workload's program)


@dataclass(frozen=True, slots=True)
class BoardDevice:
    """One row of the board: a device, the machine types that have it, and how it is built."""

    #: The Machine attribute that names it (``machine.pit``), or "" for none.
    attr: str
    #: Builds it for a machine; the devices above it in :data:`BOARD` exist already.
    build: Callable[[Machine], Device]
    machine_types: tuple[str, ...] = ("q35", "pc")
    #: A condition on the configuration (``hpet=on``), or None.
    when: Callable[[MachineConfig], bool] | None = None
    #: Priority of its mappings among overlapping siblings.
    priority: int = 0


#: q35 and pc beyond the irqchip, in the order they are built and mapped (results depend on it).
BOARD: tuple[BoardDevice, ...] = (
    BoardDevice("pm", lambda m: ACPIPMTimer(m.host, pm_base=0x600, container_name="ich9-pm", size=0x80),
                machine_types=("q35",)),
    # PM base 0x600 on pc too: SeaBIOS (QEMU 7.2) writes acpi_pm_base | 1 = 0x601 to PIIX4 PMBA
    # (pciinit.c piix4_pm_config_setup), so acpi-tmr is at 0x608 as on q35 (QEMU-FACTS.md, "ACPI PM
    # timer"; 0xb000 was the old Bochs BIOS value)
    BoardDevice("pm", lambda m: ACPIPMTimer(m.host, pm_base=0x600, container_name="piix4-pm", size=0x40),
                machine_types=("pc",)),
    BoardDevice("hpet", lambda m: HPETState(m.host), when=lambda c: c.hpet),
    BoardDevice("serial", lambda m: SerialState(m.host)),
    BoardDevice("rtc", lambda m: RTCState(m.host)),
    BoardDevice("pit", lambda m: PITState(m.host)),
    BoardDevice("", lambda m: PCSpkState(m.host, m.pit)),
    BoardDevice("", lambda m: Port92(m.host)),
    BoardDevice("", lambda m: IOPort80(m.host)),
    BoardDevice("", lambda m: PCIHost(m.host)),
    BoardDevice("", lambda m: I8042(m.host)),
    # ICH9 LPC's reset control register overlaps pci-conf-idx at priority 1, as in QEMU
    BoardDevice("", lambda m: GenericRegion(m.host, "lpc-reset-control", 1, read_value=0, space="io", addr=0xCF9),
                machine_types=("q35",), priority=1),
)


class Machine:
    """One emulated machine (see module docstring)."""

    host: DeviceHost
    # set from BOARD by __init__
    pm: ACPIPMTimer
    serial: SerialState
    rtc: RTCState
    pit: PITState
    #: Loop time when the run started (:meth:`start`): the origin of its figures.
    start_ns: int = 0
    _t0 = 0.0
    _side: tuple[asyncio.Task[None], ...] = ()
    _side_end_ns = 0
    _ended = True

    def __init__(self, config: MachineConfig | str, workload: Workload | None = None, *,
                 realtime: bool = False) -> None:
        if isinstance(config, str):
            config = MachineConfig.parse(config)
        #: True: run on the running (real-time) loop with ``async with machine:`` until stopped.
        self.realtime = realtime
        self._tasks: list[asyncio.Task[None]] = []
        self.config = config
        self.costs = config.costs
        self.kernel_irqchip = config.kernel_irqchip
        self.workload = workload or get_workload(config.workload, **dict(config.workload_params))
        bql = Lock("BQL", handoff_ns=self.costs.bql_handoff_ns, policy=config.lock_policy, bql=True)
        self.bql = bql
        self.host = DeviceHost(bql=bql, costs=self.costs, patches=())
        self.host.patches = set(config.patches)  # validated by MachineConfig
        self.finish_ns = 0
        self.finished = False
        #: Points the workload's guest programs reached (:meth:`milestone`): name -> virtual ns
        #: since the start, in the order reached.
        self.milestones: dict[str, int] = {}
        #: True when the run was cancelled (Ctrl-C) before it ended.
        self.interrupted = False
        self.wall_s = 0.0
        #: True while the monitor's ``stop`` holds the vCPUs (they park at their next entry).
        self.paused = False
        self._resume_event: asyncio.Event | None = None
        self._parked: set[int] = set()
        self._main_loop_held = False
        #: An aemu.trace.Tracer for timelines (set it before run()), or None.
        self.tracer: Tracer | None = None
        #: BQL hold time per UTILISATION_BIN_NS of virtual time (always on; it is cheap).
        self.bql_utilisation = Utilisation(UTILISATION_BIN_NS)
        bql.utilisation = self.bql_utilisation

        # address spaces: QEMU's "memory" (system) and "I/O" (io)
        self.system = MemoryRegion.container("system", 1 << 64)
        self.io_root = MemoryRegion.io("io", 0x10000, MemoryRegionOps(
            read=_unassigned_io_read, write=_unassigned_io_write, valid_max=4))
        self.memory = AddressSpace("memory", self.system, bql=bql, width_bits=64)
        self.io = AddressSpace("I/O", self.io_root, bql=bql, width_bits=16)
        ram = MemoryRegion.ram("pc.ram", 128 << 20)
        self.system.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 128 << 20))

        # vCPUs first (the irqchip needs them), programs later
        n = config.smp.cpus
        self.vcpus: list[VCPU] = [VCPU(self, i, _no_program(), quantum_ns=config.quantum_ns) for i in range(n)]
        #: the host CPUs the vCPU threads and the main-loop thread share, when fewer than those
        #: threads (``--host-cpus``)
        self.host_cpus: HostCPUs | None = None
        if config.host_cpus is not None and config.host_cpus < n + 1:
            self.host_cpus = HostCPUs(config.host_cpus, policy=config.host_sched, rq=config.host_rq,
                                      nodes=config.host_nodes)
            for cpu in self.vcpus:
                cpu.keeper.thread = self.host_cpus.thread(cpu.name, cpu.account)
            self.host.main_loop.thread = self.host_cpus.thread("main-loop")

        # devices
        self.devices: list[Device] = []
        self.irqchip = IRQChip(self.host, self.vcpus, mode=config.kernel_irqchip)
        self.irqchip.map_into(self.system, self.io_root)
        self.devices.extend(self.irqchip.devices)
        self.irqchip.program_like_linux()  # the guest OS programs PIC/IOAPIC early in its boot
        self.hpet: HPETState | None = None
        for row in BOARD:
            if config.machine in row.machine_types and (row.when is None or row.when(config)):
                dev = row.build(self)
                self._add(dev, priority=row.priority)
                if row.attr:
                    setattr(self, row.attr, dev)
        self.pm_timer_port = self.pm.pm_base + 8
        if self.hpet is not None:
            self.hpet.pit_irq_control = self.pit.irq_control
        self.apply_patches()
        for name in config.lockless:
            self.make_lockless(name)

        # programs
        self.workload.setup(self)
        for cpu in self.vcpus:
            rng = random.Random(config.seed * 1_000_003 + cpu.index)
            cpu.program = self.workload.program(self, cpu.index, rng)
        clock.register_wait_source(self)

    # -- assembly ------------------------------------------------------------------------------
    def _add(self, dev: Device, *, priority: int = 0) -> None:
        self.devices.append(dev)
        for space, addr, mr in dev.mappings:
            root = self.io_root if space == "io" else self.system
            root.add_subregion(addr, mr, priority)

    def add_device(self, dev: Device) -> Device:
        """Add a user-written device (its ``mappings`` are mapped now)."""
        self._add(dev)
        return dev

    def add_generic(self, name: str, addr: int, size: int, *, space: str = "io",
                    read_value: int = 0xFFFFFFFF, priority: int = 0) -> GenericRegion:
        """A named region with a fixed read value, for names aemu has no model of (``priority`` 1
        maps it over what is there, as QEMU's ``memory_region_add_subregion_overlap``)."""
        dev = GenericRegion(self.host, name, size, read_value=read_value, space=space, addr=addr)
        self._add(dev, priority=priority)
        return dev

    def regions(self) -> Iterator[MemoryRegion]:
        """Every region mapped in either address space (depth first)."""
        stack = [self.system, self.io_root]
        while stack:
            mr = stack.pop()
            yield mr
            stack.extend(reversed(mr.subregions))

    def find_region(self, name: str) -> MemoryRegion:
        """The region called ``name`` (ConfigError naming the known ones otherwise)."""
        for mr in self.regions():
            if mr.name == name and mr.kind == "io":
                return mr
        names = sorted({mr.name for mr in self.regions() if mr.kind == "io"})
        raise ConfigError(f"--lockless: no I/O region named {name!r}; known: {', '.join(names)}")

    def make_lockless(self, name: str) -> MemoryRegion:
        """The what-if switch: mark region ``name`` lockless (``memory_region_enable_lockless_io``)."""
        mr = self.find_region(name)
        mr.enable_lockless_io()
        return mr

    # -- patches ---------------------------------------------------------------------------------
    def patch(self, name: str) -> bool:
        """Whether a switch of the series is on."""
        return name in self.host.patches

    @property
    def patches(self) -> set[str]:
        """The switches that are on (the live set: what vCPUs and devices read)."""
        return self.host.patches

    def set_patch(self, name: str, on: bool) -> None:
        """Flip a switch at run time (prerequisites checked) and re-apply it to the devices."""
        self.host.set_patch(name, on)
        self.apply_patches()

    def apply_patches(self) -> None:
        """Let each device read the switches that concern it."""
        for dev in self.devices:
            apply = getattr(dev, "apply_patches", None)
            if apply is not None:
                apply()
        for name in self.config.lockless:
            self.make_lockless(name)
        for cpu in self.vcpus:
            cpu.apply_patches()

    # -- what the vCPUs call --------------------------------------------------------------------
    def pic_interrupt(self, cpu: VCPU) -> int:
        """``cpu_get_pic_interrupt``: the vector for CPU_INTERRUPT_HARD (under the BQL)."""
        return self.irqchip.get_interrupt(cpu.index)

    async def eoi(self, cpu: VCPU, vector: int) -> None:
        """The guest's EOI to its LAPIC (level-triggered IOAPIC vectors go on to the IOAPIC)."""
        await self.irqchip.eoi(cpu.index, vector)

    def send_ipi(self, src: VCPU, dest: int, vector: int) -> None:
        """An IPI through the in-kernel LAPIC."""
        if 0 <= dest < len(self.vcpus):
            self.irqchip.send_ipi(src.index, dest, vector)

    def arm_lapic_timer(self, cpu: VCPU, delay_ns: int, vector: int) -> None:
        """The LAPIC timer: in the kernel (split/on: no BQL) or in QEMU (off: main loop, BQL)."""
        when = clock.local_now_ns() + delay_ns
        if self.kernel_irqchip == "off":
            t = self.host.timer_new_ns(f"apic-timer{cpu.index}", lambda: cpu.queue_hard_vector(vector))
            t.mod_ns(when)
        else:
            clock.call_at_ns(when, cpu.kvm_inject, vector)

    def all_locks(self) -> list[Lock]:
        """The BQL and every device mutex."""
        return [self.bql, *self.host.locks.values()]

    def region_latency(self, name: str) -> RegionLatency:
        """Latency percentiles of accesses to region ``name`` over all vCPUs."""
        merged: Counter[int] = Counter()
        for c in self.vcpus:
            counts = c.latency.get(name)
            if counts is not None:
                merged.update(counts)
        return region_latency(name, merged)

    def milestone(self, name: str) -> None:
        """Record that the run has reached ``name`` (the first time only), at the calling vCPU's
        virtual time since the start: a guest program calls it to split the run into parts
        (the ``boot`` marks when its APs are started and when each phase is done). Outside a run
        (a guest program driven by hand) there is no time to record, and nothing is."""
        if self._tasks:
            self.milestones.setdefault(name, clock.local_now_ns() - self.start_ns)

    def describe_waiters(self) -> dict[asyncio.Task[Any], str]:
        """For deadlock reports: halted vCPUs wait for an interrupt."""
        return {c.task: f"an interrupt (vCPU {c.index} halted in HLT)" for c in self.vcpus
                if c.task is not None and c.halted}

    # -- running -------------------------------------------------------------------------------
    def attach_tracer(self, tracer: Tracer) -> None:
        """Record spans of every vCPU and lock into ``tracer`` (for ``--timeline``)."""
        self.tracer = tracer
        for lock in self.all_locks():
            lock.tracer = tracer

    def start(self, side_tasks: Iterable[asyncio.Task[None]] = ()) -> list[asyncio.Task[None]]:
        """Start the main loop and one task per vCPU on the running loop (``vm_start``).

        ``side_tasks`` (a workload's own, already created) belong to the run: :meth:`stop` cancels
        them with the vCPUs, and the run has finished only when they are done too. The run's
        clock starts now: ``finish_ns``, the BQL utilisation and an attached tracer count from
        here. Returns the tasks the run waits for: the vCPUs', then the side tasks.
        """
        if self._tasks:
            raise RuntimeError("the machine is running already: stop() it first")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio, or called outside async code
            raise NeedsAsyncioError("Machine.start") from None
        self._t0 = time.perf_counter()
        self.host.main_loop.start()
        if self.host_cpus is not None:
            self.host_cpus.start_balancing()
        for dev in self.devices:
            dev.vm_start()
        for cpu in self.vcpus:
            cpu.task = loop.create_task(cpu.run(), name=cpu.name)
            self._tasks.append(cpu.task)
        self._side = tuple(side_tasks)
        self._side_end_ns = 0
        for t in self._side:
            self._tasks.append(t)
            t.add_done_callback(self._side_done)
        self.start_ns = clock.now_ns()
        self.milestones = {}
        self._ended = False
        self.bql_utilisation.origin_ns = self.start_ns
        if self.tracer is not None:
            self.tracer.origin_ns = self.start_ns
        return list(self._tasks)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._side_end_ns = max(self._side_end_ns, clock.now_ns())

    async def stop(self) -> None:
        """Stop the run: book its end, then cancel the vCPUs, the side tasks and the main loop (no
        lock stays held). Idempotent; a stop that was itself cancelled completes when called again.

        ``finished`` says whether every vCPU's program returned and every side task ended;
        ``finish_ns`` is then when the last of them did, else the time of the stop (both
        relative to the start).
        """
        tasks = self._tasks
        if tasks and not self._ended:
            self._ended = True
            self.finished = (all(c.finished for c in self.vcpus)
                             and all(t.done() and not t.cancelled() for t in self._side))
            if self.finished:
                self.finish_ns = max(max(c.finish_ns for c in self.vcpus), self._side_end_ns) - self.start_ns
            else:
                self.finish_ns = clock.now_ns() - self.start_ns
        if self.paused:
            self.resume()  # unfreeze a paused loop and the vCPUs parked on it so they can be cancelled
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.host.main_loop.stop()
        if self.host_cpus is not None:
            self.host_cpus.stop_balancing()
        if tasks:
            self._tasks = []
            self.wall_s = time.perf_counter() - self._t0

    @property
    def running(self) -> bool:
        """Whether tasks of a started run are still running."""
        return any(not t.done() for t in self._tasks)

    async def run(self, cap_ns: int | None = None, *, progress: ProgressFn | None = None,
                  progress_every_ns: int | None = None) -> None:
        """Run until every vCPU's program returns, or until ``cap_ns`` of virtual time (None: none).

        :func:`aemu.runner.run_machine` on this machine: ``progress(ns, vcpus_finished,
        vcpus_total)`` every ``progress_every_ns``; a cancelled run sets ``interrupted``, keeps
        the accounting up to then, and re-raises.
        """
        from .runner import run_machine

        await run_machine(self, duration_ns=cap_ns, default_cap_ns=None, progress=progress,
                          progress_every_ns=progress_every_ns)

    # -- stop/cont (QEMU's vm_stop/vm_start, driven by aemu.monitor) ------------------------------
    def pause(self) -> None:
        """``stop``: vCPUs park at their next entry; on a virtual-time loop virtual time stops too."""
        if self.paused:
            return
        self.paused = True
        self._resume_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        if isinstance(loop, clock.VirtualTimeLoop):
            loop.paused = True

    async def wait_paused(self, timeout_s: float = 2.0) -> bool:
        """Real time: wait until every vCPU is parked, halted or done, then hold the main loop's
        timers (``pause_all_vcpus``). Returns whether all got there within ``timeout_s`` (wall).
        On a virtual-time loop nothing moves once :meth:`pause` froze time: returns at once."""
        loop = asyncio.get_running_loop()
        if isinstance(loop, clock.VirtualTimeLoop) or not self.paused:
            return True
        deadline = time.monotonic() + timeout_s
        ml = self.host.main_loop
        while self.paused:
            cpus_still = any(not (c.finished or c.halted or c.index in self._parked or c.task is None
                                  or c.task.done()) for c in self.vcpus)
            ml_idle = ml._task is None or (ml._wake is not None and not ml._wake.done() and not ml._ready)
            if not cpus_still and ml_idle:
                if ml._task is not None:  # waiting for a timer: stopping it here loses nothing
                    await ml.stop()
                    self._main_loop_held = True
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.0005)
        return True

    def resume(self) -> None:
        """``cont``: release the vCPUs (and the main loop's timers, and virtual time)."""
        if not self.paused:
            return
        self.paused = False
        loop = asyncio.get_running_loop()
        if isinstance(loop, clock.VirtualTimeLoop):
            loop.paused = False
        if self._main_loop_held:
            self._main_loop_held = False
            if self._tasks and any(not t.done() for t in self._tasks):
                self.host.main_loop.start()
        if self._resume_event is not None:
            self._resume_event.set()
            self._resume_event = None

    async def wait_resumed(self, cpu: VCPU) -> None:
        """Called by a vCPU at its entry while paused: sync its local time, then wait for ``cont``."""
        k = cpu.keeper
        if k.offset_ns and not k.locks_held:
            await k.sync()  # never wait with local time run ahead (QuantumKeeper's invariant)
        self._parked.add(cpu.index)
        try:
            while self.paused and self._resume_event is not None:
                await self._resume_event.wait()
        finally:
            self._parked.discard(cpu.index)

    # -- ``async with machine:`` -- started on entry, stopped on exit -------------------------------
    async def __aenter__(self) -> Machine:
        """:meth:`start` on the running loop (real time on a host loop, else virtual time)."""
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


#: Bucket of the BQL utilisation series (it widens when a run outgrows aemu.trace.MAX_BINS).
UTILISATION_BIN_NS = 100_000

_RUNNER_NAMES = frozenset({"DEFAULT_CAP_NS", "ProgressFn", "simulate", "simulate_machine"})


def __getattr__(name: str) -> Any:
    """The run functions' old home: ``simulate``, ``simulate_machine``, ``DEFAULT_CAP_NS`` and
    ``ProgressFn`` live in :mod:`aemu.runner` (looked up on use: it imports this module)."""
    if name in _RUNNER_NAMES:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Embedding aemu in an application: virtual-time runs from asyncio or trio, live snapshots, real time.

A virtual-time run needs a loop of its own (:class:`~aemu.clock.VirtualTimeLoop`) and keeps a CPU
busy until it ends, so an application's loop must not run it inline. :func:`live` and
:func:`simulate_async` run it in a worker thread (``anyio.to_thread.run_sync``) on a fresh
virtual-time loop, so they work the same from asyncio, uvloop and trio:

    async with aemu.embed.live(config, every_ns=1_000_000) as run:
        async for snap in run.snapshots():        # one Snapshot per ms of virtual time
            dashboard.update(snap.virtual_ns, snap.bql.contentions)
        result = await run.result()

Snapshots are taken inside the simulation (a task on the virtual loop that wakes every
``every_ns`` and reads :meth:`Lock.statistics() <aemu.sync.Lock.statistics>`), so they are
exact at their instant of virtual time (within a quantum of the vCPUs' run-ahead), and handed to
the application's loop over an anyio memory object stream. The stream is bounded: a slow reader
pauses the simulation, which costs wall time but changes nothing in virtual time, so every
snapshot arrives, in order, and memory stays bounded.

Cancelling the application's task (``task.cancel()``, a trio cancel scope, ``anyio.move_on_after``)
cancels the run inside its thread the way Ctrl-C cancels :func:`aemu.simulate`: the vCPUs and the
main loop are cancelled (no lock stays held), the thread ends, and the cancellation propagates.
``run.cancel()`` stops a run and keeps its partial report (``Result.interrupted``).

Runs go one at a time per process (concurrent calls queue): aemu's BQL bookkeeping is per
process, and the GIL would serialise the simulations anyway.

:func:`run_realtime` runs a machine on the application's own asyncio loop in real time (virtual
time is wall time there), and :func:`run_realtime_blocking` does it on a fresh uvloop (``aemu run
--realtime``). Real-time mode needs asyncio: a machine's vCPUs are asyncio tasks on the loop that
runs it, so under trio :func:`run_realtime`, ``Machine(..., realtime=True).run()`` and ``async with
Machine(...)`` raise :class:`~aemu.errors.NeedsAsyncioError`; from trio, run
``trio.to_thread.run_sync(run_realtime_blocking, config)`` (its own loop in a worker thread).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import clock
from .config import MachineConfig
from .errors import NeedsAsyncioError
from .machine import Machine
from .result import Result
from .runner import run_machine, run_on_host_loop
from .sync import LockStatistics
from .trace import Tracer
from .workloads.base import Workload

__all__ = [
    "LiveRun",
    "Snapshot",
    "SnapshotCallback",
    "live",
    "run_realtime",
    "run_realtime_blocking",
    "simulate_async",
    "take_snapshot",
]

#: Called with each snapshot on the application's loop; may return an awaitable, which is awaited.
SnapshotCallback = Callable[["Snapshot"], object]

#: Snapshots buffered between the simulation thread and the application before the run waits.
DEFAULT_BUFFER = 16

#: Prefix of a worker thread's name while it runs a simulation (shown by debuggers and py-spy).
THREAD_NAME_PREFIX = "aemu-sim"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A machine's state at one instant of a run: progress and every lock's statistics."""

    #: Time since the run started: virtual ns (real-time mode: wall ns).
    virtual_ns: int
    #: Wall seconds since the run started.
    wall_s: float
    vcpus_finished: int
    vcpus_total: int
    #: Lock name -> frozen statistics of its accounting window so far ("BQL", "hpet", ...).
    locks: dict[str, LockStatistics]

    @property
    def bql(self) -> LockStatistics:
        """The BQL's statistics."""
        return self.locks["BQL"]


def take_snapshot(machine: Machine, start_ns: int, t0: float) -> Snapshot:
    """Snapshot ``machine`` now (on its loop); ``start_ns``/``t0`` are the run's start (ns, perf_counter)."""
    return Snapshot(clock.now_ns() - start_ns, time.perf_counter() - t0,
                    sum(c.finished for c in machine.vcpus), len(machine.vcpus),
                    {lock.name: lock.statistics() for lock in machine.all_locks()})


def _parse(config: MachineConfig | str) -> MachineConfig:
    return MachineConfig.parse(config) if isinstance(config, str) else config


# -- the simulation thread ----------------------------------------------------------------------------

#: Held by the worker thread running a virtual-time simulation: runs go one at a time per process.
#: aemu's BQL bookkeeping (``bql_locked()``) is per process, not per thread, and the GIL would
#: serialise the runs' Python code anyway; concurrent callers simply queue.
_RUN_SLOT = threading.Lock()
#: How often a worker waiting for the slot checks whether it was cancelled.
_SLOT_POLL_S = 0.01


class _Simulation:
    """One virtual-time run in a worker thread, and the thread-safe handle to cancel it."""

    def __init__(self, config: MachineConfig, workload: Workload | None, snapshots: bool, every_ns: int | None,
                 tracer: Tracer | None, emit: Callable[[Snapshot], None]) -> None:
        self.config = config
        self.workload = workload
        #: Whether to take snapshots, and how often (None: a hundredth of the run's cap).
        self.snapshots = snapshots
        self.every_ns = every_ns
        self.tracer = tracer
        self.machine: Machine | None = None
        self._emit = emit
        self._guard = threading.Lock()
        self._cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        """Stop the run (from any thread); only the first call does anything."""
        with self._guard:
            if self._cancelled:
                return
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)

    def run(self) -> Result:
        """The worker thread's body: wait for the run slot, run the machine on a fresh virtual-time loop."""
        thread = threading.current_thread()
        name = thread.name
        thread.name = f"{THREAD_NAME_PREFIX} {self.config.workload} -smp {self.config.smp.cpus}"
        slot = False
        try:
            while not self._cancelled and not slot:
                slot = _RUN_SLOT.acquire(timeout=_SLOT_POLL_S)
            return clock.run(self._main())  # cancelled while waiting: returns at once, nothing ran
        finally:
            if slot:
                _RUN_SLOT.release()
            thread.name = name

    async def _main(self) -> Result:
        t0 = time.perf_counter()
        listening = True

        def started(machine: Machine) -> None:
            nonlocal t0
            self.machine, t0 = machine, time.perf_counter()
            with self._guard:
                if self._cancelled:
                    raise asyncio.CancelledError  # stopped before it started: nothing runs
                self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()

        def snapshot(ns: int, finished: int, total: int) -> None:
            nonlocal listening
            if listening and self.machine is not None:
                try:
                    self._emit(take_snapshot(self.machine, self.machine.start_ns, t0))
                except Exception:
                    listening = False  # the application stopped listening: run on without snapshots

        try:
            machine = await run_machine(self.config, self.workload, tracer=self.tracer, on_start=started,
                                        progress=snapshot if self.snapshots else None,
                                        progress_every_ns=self.every_ns, keep_partial=True)
        finally:
            with self._guard:
                self._loop = self._task = None  # a later cancel() finds nothing to cancel
        return Result.from_machine(machine)


# -- the application's side ------------------------------------------------------------------------------

class LiveRun:
    """A virtual-time run in progress, seen from the application's loop (see :func:`live`)."""

    def __init__(self, sim: _Simulation, receive: MemoryObjectReceiveStream[Snapshot]) -> None:
        self._sim = sim
        self._receive = receive
        self._done = anyio.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None

    @property
    def config(self) -> MachineConfig:
        """The configuration being run."""
        return self._sim.config

    @property
    def machine(self) -> Machine | None:
        """The machine (built in the worker thread; None until then). Read it only once done."""
        return self._sim.machine

    @property
    def done(self) -> bool:
        """Whether the worker thread has finished."""
        return self._done.is_set()

    def snapshots(self) -> MemoryObjectReceiveStream[Snapshot]:
        """The snapshots, in virtual-time order; the iteration ends when the run does."""
        return self._receive

    async def result(self) -> Result:
        """Wait for the run to end; its Result (``interrupted`` if :meth:`cancel` stopped it early)."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the run now; :meth:`result` then returns the partial report."""
        self._sim.cancel()

    async def _serve(self, send: MemoryObjectSendStream[Snapshot]) -> None:
        """Run the simulation in a worker thread; never raises (errors go to :meth:`result`)."""
        try:
            with send:
                self._result = await anyio.to_thread.run_sync(self._sim.run, abandon_on_cancel=False)
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<LiveRun {state} {self.config.workload!r} -smp {self.config.smp.cpus}>"


@asynccontextmanager
async def live(config: MachineConfig | str, *, every_ns: int | None = None, workload: Workload | None = None,
               tracer: Tracer | None = None, buffer: int = DEFAULT_BUFFER) -> AsyncIterator[LiveRun]:
    """Start a virtual-time run in a worker thread; yields its :class:`LiveRun`.

    ``every_ns`` (virtual) spaces the snapshots; None takes none. Leaving the block stops a run
    that has not ended (await ``run.result()`` inside to run it to the end) and waits for its
    thread. Works on asyncio (uvloop included) and trio.
    """
    async with _live(config, every_ns is not None, every_ns, workload, tracer, buffer) as run:
        yield run


@asynccontextmanager
async def _live(config: MachineConfig | str, snapshots: bool, every_ns: int | None, workload: Workload | None,
                tracer: Tracer | None, buffer: int) -> AsyncIterator[LiveRun]:
    """:func:`live`; with ``snapshots`` and no ``every_ns``, one snapshot per hundredth of the cap."""
    config = _parse(config)
    if every_ns is not None and every_ns <= 0:
        raise ValueError(f"every_ns must be a positive number of nanoseconds, got {every_ns}")
    if buffer < 1:
        raise ValueError(f"buffer must be at least 1, got {buffer}")
    send, receive = anyio.create_memory_object_stream[Snapshot](buffer)

    def emit(snap: Snapshot) -> None:  # in the simulation thread; waits while the buffer is full
        anyio.from_thread.run(send.send, snap)

    sim = _Simulation(config, workload, snapshots, every_ns, tracer, emit)
    run = LiveRun(sim, receive)
    error: Exception | None = None
    with receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run._serve, send)
            try:
                yield run
            except Exception as exc:  # re-raised below as itself, not wrapped in an ExceptionGroup
                error = exc
            finally:
                sim.cancel()     # no-op once the run is over
                receive.close()  # a sender blocked on a full buffer gives up
    if error is not None:
        raise error


async def simulate_async(config: MachineConfig | str, *, workload: Workload | None = None,
                         snapshot_every_ns: int | None = None, on_snapshot: SnapshotCallback | None = None,
                         tracer: Tracer | None = None) -> Result:
    """:func:`aemu.simulate` for asyncio/uvloop/trio apps: runs in a worker thread, the loop stays free.

    ``on_snapshot(snapshot)`` is called on the caller's loop every ``snapshot_every_ns`` of
    virtual time (default: a hundredth of the cap); it may be async. Cancelling the caller
    stops the run (no lock held, thread joined) and re-raises the cancellation.
    """
    async with _live(config, on_snapshot is not None, snapshot_every_ns, workload, tracer, DEFAULT_BUFFER) as run:
        if on_snapshot is not None:
            async for snap in run.snapshots():
                ret = on_snapshot(snap)
                if inspect.isawaitable(ret):
                    await ret
        return await run.result()


# -- real time -------------------------------------------------------------------------------------------

async def run_realtime(config: MachineConfig | str, *, workload: Workload | None = None,
                       duration_s: float | None = None, on_snapshot: SnapshotCallback | None = None,
                       every_s: float = 1.0, tracer: Tracer | None = None) -> Result:
    """Run a machine in real time on the running asyncio loop (uvloop welcome) and return its Result.

    The run ends when every vCPU's program returns, after ``duration_s`` (default: the config's
    ``--duration``, else none) or when the task is cancelled (Ctrl-C): then the partial report
    is returned (``interrupted`` set) instead of raising, so a stopped run still has a report.
    ``on_snapshot`` is called every ``every_s`` wall seconds; an error in it ends the run. Times
    are the host's monotonic clock in ns (:func:`aemu.clock.now_ns`). asyncio only: under trio it
    raises :class:`~aemu.errors.NeedsAsyncioError` (run :func:`run_realtime_blocking` in a thread).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise NeedsAsyncioError("aemu.run_realtime") from None
    config = _parse(config)
    if every_s <= 0:
        raise ValueError(f"every_s must be a positive number of seconds, got {every_s}")
    machine = Machine(config, workload, realtime=True)
    t0 = 0.0

    def snapshot(ns: int, finished: int, total: int) -> object:
        assert on_snapshot is not None
        return on_snapshot(take_snapshot(machine, machine.start_ns, t0))

    slot = False
    try:
        while not (slot := _RUN_SLOT.acquire(blocking=False)):  # one run at a time (see _RUN_SLOT)
            await asyncio.sleep(_SLOT_POLL_S)
        t0 = time.perf_counter()
        await run_machine(machine, tracer=tracer,
                          duration_ns=None if duration_s is None else round(duration_s * clock.NS_PER_S),
                          progress=None if on_snapshot is None else snapshot,
                          progress_every_ns=round(every_s * clock.NS_PER_S), keep_partial=True)
    except asyncio.CancelledError:
        machine.interrupted = True  # cancelled while waiting for the run slot: nothing ran
    finally:
        if slot:
            _RUN_SLOT.release()
    return Result.from_machine(machine)


def run_realtime_blocking(config: MachineConfig | str, *, workload: Workload | None = None,
                          duration_s: float | None = None, on_snapshot: SnapshotCallback | None = None,
                          every_s: float = 1.0, tracer: Tracer | None = None) -> Result:
    """:func:`run_realtime` on a fresh uvloop (asyncio if uvloop is missing); Ctrl-C returns the partial report."""
    got: list[Result] = []

    async def main() -> None:
        got.append(await run_realtime(config, workload=workload, duration_s=duration_s,
                                      on_snapshot=on_snapshot, every_s=every_s, tracer=tracer))

    try:
        run_on_host_loop(main())
    except KeyboardInterrupt:
        if not got:
            raise
    return got[0]

"""Running a machine: the one function that starts, caps, watches, interrupts and ends a run.

:func:`run_machine` runs a :class:`~aemu.machine.Machine` -- built from a configuration, or given
-- on the running loop: in virtual time on a :class:`~aemu.clock.VirtualTimeLoop`, in real time
on any other loop (asyncio, uvloop), where :func:`aemu.clock.now_ns` is the host's monotonic clock
in nanoseconds. Every way of running aemu goes through it -- :func:`simulate` and ``aemu run``,
:func:`aemu.replay.replay`, :mod:`aemu.embed` (``live``, ``simulate_async``, ``run_realtime``) and
:func:`aemu.monitor.serve` -- so the rules of a run are written once:

* **the cap** (:func:`run_cap_ns`): ``--duration`` if given. Otherwise a virtual-time run of a
  workload that ends by itself stops at :data:`DEFAULT_CAP_NS` (a boot that stalls ends there);
  an open-ended workload (``idle``) needs ``--duration`` unless something else can stop the run
  (a QMP ``quit``); a real-time run goes on until its programs end or it is stopped.
* **the tracer** is attached before anything runs; it and the BQL utilisation count time from
  the run's start (:meth:`Machine.start <aemu.machine.Machine.start>`).
* **the workload's side tasks** (:class:`SideTasks`: the replay's device context) run beside the
  vCPUs; the run is over when the vCPUs and they are done, or at the cap, whichever is first.
* **progress** is called every ``progress_every_ns`` of loop time; an error in it ends the run.
* **a stop request** (``stop``, an :class:`asyncio.Event`: QMP ``quit``) ends the run early.
* **interruption** (Ctrl-C, ``task.cancel()``): the vCPUs, side tasks and main loop are cancelled
  (no lock stays held), ``interrupted`` is set and, with ``keep_partial``, the machine is returned
  with its accounting so far instead of the cancellation propagating.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

from . import clock
from .config import MachineConfig
from .errors import ConfigError, NeedsAsyncioError
from .machine import Machine
from .result import Result
from .trace import Tracer
from .workloads.base import Workload

__all__ = [
    "DEFAULT_CAP_NS",
    "ProgressFn",
    "SideTasks",
    "StartHook",
    "run_cap_ns",
    "run_machine",
    "run_on_host_loop",
    "simulate",
    "simulate_machine",
]

T = TypeVar("T")

#: Virtual-time cap of a run when --duration is not given (a boot that stalls ends here).
DEFAULT_CAP_NS = 2_000_000_000

#: ``progress(ns_since_start, vcpus_finished, vcpus_total)``; an awaitable it returns is awaited.
ProgressFn = Callable[[int, int, int], object]

#: ``on_start(machine)``: called once the machine is built and traced, before anything of it
#: runs; an awaitable it returns is awaited.
StartHook = Callable[[Machine], object]


@runtime_checkable
class SideTasks(Protocol):
    """A workload with tasks of its own beside the vCPUs (the replay's device context)."""

    def start_side_tasks(self, machine: Machine) -> list[asyncio.Task[None]]:
        """Create them on the running loop; the run has finished when they and the vCPUs are done."""
        ...


def run_cap_ns(config: MachineConfig, workload: Workload, *, duration_ns: int | None = None,
               realtime: bool = False, stoppable: bool = False,
               default_ns: int | None = DEFAULT_CAP_NS) -> int | None:
    """How long a run may last, in ns of loop time (None: until it ends or is stopped).

    ``duration_ns`` (else ``--duration``) if given; otherwise none in real time, none for an
    open-ended workload when something else can stop the run (``stoppable``: a monitor's
    ``quit``) and a :class:`~aemu.errors.ConfigError` without, and ``default_ns`` for a workload
    that ends by itself (a replay passes None: its programs are finite however long they take).
    """
    if duration_ns is not None:
        return duration_ns
    if config.duration_ns is not None:
        return config.duration_ns
    if realtime:
        return None
    if workload.open_ended:
        if stoppable:
            return None
        raise ConfigError(f"workload {workload.name!r} runs until stopped: give --duration")
    return default_ns


async def run_machine(machine: MachineConfig | str | Machine, workload: Workload | None = None, *,
                      tracer: Tracer | None = None, progress: ProgressFn | None = None,
                      progress_every_ns: int | None = None, on_start: StartHook | None = None,
                      stop: asyncio.Event | None = None, duration_ns: int | None = None,
                      default_cap_ns: int | None = DEFAULT_CAP_NS, keep_partial: bool = False) -> Machine:
    """Build a machine (or take ``machine``) and run it on the running loop; returns it for its books.

    Virtual time on a :class:`~aemu.clock.VirtualTimeLoop`, real time on any other loop. The run
    ends when every vCPU's program and every side task of the workload are done (``finished``),
    at the cap (:func:`run_cap_ns` with ``duration_ns`` and ``default_cap_ns``), when ``stop`` is
    set, or when a vCPU, side task or ``progress`` raises (the error propagates). ``progress``
    is called every ``progress_every_ns`` (default: a hundredth of the cap). If the run is
    cancelled, ``interrupted`` is set unless it had finished, and the cancellation propagates --
    unless ``keep_partial``, which returns the machine with its partial accounting.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio, or a coroutine driven by hand
        raise NeedsAsyncioError("running a machine") from None
    realtime = not isinstance(loop, clock.VirtualTimeLoop)
    if isinstance(machine, Machine):
        if workload is not None:
            raise TypeError("run_machine: a workload goes with a configuration, not with a built Machine")
        m = machine
    else:
        m = Machine(machine, workload, realtime=realtime)
    if tracer is not None:
        m.attach_tracer(tracer)
    cap = run_cap_ns(m.config, m.workload, duration_ns=duration_ns, realtime=realtime,
                     stoppable=stop is not None, default_ns=default_cap_ns)
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    watchers: list[asyncio.Task[Any]] = []
    side: list[asyncio.Task[None]] = []
    cancelled: BaseException | None = None
    try:
        if on_start is not None:
            ret = on_start(m)
            if inspect.isawaitable(ret):
                await ret
        if isinstance(m.workload, SideTasks):  # created before the vCPUs: they run first on the first turn
            side = m.workload.start_side_tasks(m)
        work = m.start(side)
        if progress is not None:
            every = progress_every_ns or max(1_000, (cap or DEFAULT_CAP_NS) // 100)
            watchers.append(loop.create_task(_report_progress(m, progress, every), name="progress"))
        if stop is not None:
            watchers.append(loop.create_task(stop.wait(), name="stop-request"))
        await _until_over(loop, work, watchers, cap)
        for t in (*work, *watchers):
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    except asyncio.CancelledError as e:
        cancelled = e
    finally:
        if await _wind_down(m, [*watchers, *side]):
            cancelled = cancelled or asyncio.CancelledError()
    if cancelled is None and task is not None and task.cancelling() > cancels:
        cancelled = asyncio.CancelledError()  # a cancel the clean-up's awaits absorbed
    if cancelled is not None:
        m.interrupted = not m.finished
        if not keep_partial:
            raise cancelled
    return m


async def _until_over(loop: asyncio.AbstractEventLoop, work: list[asyncio.Task[None]],
                      watchers: list[asyncio.Task[Any]], cap_ns: int | None) -> None:
    """Return once every task of ``work`` is done or one failed, a watcher ended, or at the cap.

    ``asyncio.wait(work, timeout=cap, return_when=FIRST_EXCEPTION)`` with watchers added, written
    out as asyncio writes it: a run ends after the same loop turns as it always has (virtual-time
    figures depend on them).
    """
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(work)

    def release(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    def work_done(t: asyncio.Task[None]) -> None:
        nonlocal left
        left -= 1
        if left <= 0 or (not t.cancelled() and t.exception() is not None):
            release()

    deadline = 0 if cap_ns is None else clock.now_ns() + cap_ns
    timer: asyncio.TimerHandle | None = None

    def at_cap() -> None:
        nonlocal timer
        left = deadline - clock.now_ns()
        if left > 0:  # a real-time loop's timer fired early (uvloop's tick in whole milliseconds)
            timer = loop.call_later(left / clock.NS_PER_S, at_cap)
        else:
            release()

    if cap_ns is not None:
        timer = loop.call_later(cap_ns / clock.NS_PER_S, at_cap)
    for t in work:
        t.add_done_callback(work_done)
    for w in watchers:
        w.add_done_callback(release)
    if not work:
        release()
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for t in work:
            t.remove_done_callback(work_done)
        for w in watchers:
            w.remove_done_callback(release)


async def _wind_down(machine: Machine, others: list[asyncio.Task[Any]]) -> bool:
    """Cancel ``others`` and stop the machine, to the end even if cancelled meanwhile.

    Returns True if a cancel arrived during it (it is then finished in a shielded task).
    """
    try:
        await _stop(machine, others)
        return False
    except asyncio.CancelledError:
        pass
    stopping = asyncio.ensure_future(_stop(machine, others))
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            pass
    stopping.result()
    return True


async def _stop(machine: Machine, others: list[asyncio.Task[Any]]) -> None:
    for t in others:
        t.cancel()
    await machine.stop()
    if any(not t.done() for t in others):
        await asyncio.gather(*others, return_exceptions=True)
    for t in others:  # errors were raised or are moot now: do not log them as never retrieved
        if not t.cancelled():
            t.exception()


async def _report_progress(machine: Machine, progress: ProgressFn, every_ns: int) -> None:
    start, total = machine.start_ns, len(machine.vcpus)
    while True:
        await clock.sleep_ns(every_ns)
        ret = progress(clock.now_ns() - start, sum(c.finished for c in machine.vcpus), total)
        if inspect.isawaitable(ret):
            await ret


#: :func:`run_machine` under its first name (a run on the running virtual-time loop).
simulate_machine = run_machine


def simulate(config: MachineConfig | str, workload: Workload | None = None, *,
             progress: ProgressFn | None = None, tracer: Tracer | None = None,
             keep_partial: bool = False) -> Result:
    """Run ``config`` to completion on a fresh virtual-time loop and return its result."""
    machine = clock.run(run_machine(config, workload, progress=progress, tracer=tracer,
                                    keep_partial=keep_partial))
    return Result.from_machine(machine)


def run_on_host_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh real-time loop: uvloop when importable, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)

"""Virtual time on asyncio: a loop whose clock jumps to the next timer, and QEMU-style clocks.

The loop (:class:`VirtualTimeLoop`) is asyncio's own selector loop with two changes:

* ``time()`` is virtual. It is kept as integer nanoseconds (:func:`now_ns`) and shown to asyncio
  as seconds, so ``asyncio.sleep``, ``asyncio.timeout`` and ``anyio.sleep`` work unchanged.
* Every timer (asyncio's ``call_at``/``call_later`` and aemu's :func:`sleep_ns`) goes into one
  calendar: a heap of distinct instants (plain ints) and, per instant, a list of its entries.
  When no callback is ready, time jumps to the earliest instant and its entries are released in
  insertion order (first in, first out), so a program and its seed give the same result on
  every run. vCPUs in lockstep share instants, so the heap stays small. asyncio's own
  ``TimerHandle`` heap orders same-instant timers by deadline only, and costs about twice as
  much per sleep (see ``bench/bench_clock.py``).
* A sleep that nothing else could interleave with (nothing ready, the next timer later) skips
  its loop turn: the clock jumps and the task goes on (at most 64 in a row).
* The loop step itself (``_run_once``, ``call_soon``) is a lean version of asyncio's, since this
  loop never uses asyncio's ``TimerHandle`` heap.

Outside work is waited for in real time, with virtual time held: an executor job
(``run_in_executor``, ``asyncio.to_thread``, the default executor's shutdown), a child process,
and with ``anyio_workers=True`` a busy anyio worker thread (``anyio.to_thread.run_sync``) are
never jumped past. A watched socket or pipe holds time for ``io_grace`` real seconds after
its last I/O event (default 0: just poll), so a reply that is on its way arrives before the jump;
with no timer pending, the loop waits ``io_timeout`` real seconds for it (default: forever).

When nothing is ready, no timer is pending and no outside work can still wake the loop, yet tasks
are blocked, the run can never progress: a :class:`aemu.errors.SimulationDeadlock` naming each
blocked task and what it waits on is raised instead of hanging -- inside the task being run
(``run_until_complete``, ``asyncio.run``, a test under the pytest plugin), at the ``await``
where it is blocked, so its ``except`` and ``finally`` clauses run; out of ``run_forever`` else.

``pace=X`` keeps virtual time from running faster than X times wall time (live monitoring).

Clocks mirror QEMU's ``qemu_clock_get_ns()``: ``VIRTUAL`` is the loop's virtual time,
``REALTIME`` the host's monotonic clock, ``HOST`` the host's wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import heapq
import os
import selectors
import threading
import sys
import time
import weakref
from asyncio import events, format_helpers
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from .errors import SimulationDeadlock

__all__ = [
    "HOST",
    "REALTIME",
    "VIRTUAL",
    "VIRTUAL_RT",
    "QEMUClockType",
    "QuantumKeeper",
    "current_keeper",
    "VirtualTimeLoop",
    "VirtualTimePolicy",
    "call_at_ns",
    "clock_get_ns",
    "now_ns",
    "register_wait_source",
    "run",
    "sleep_ns",
]

T = TypeVar("T")

NS_PER_S = 1_000_000_000
# asyncio's running loop, None when none runs. On CPython 3.11 it makes a getpid() system call
# each time a loop runs (to notice a fork), so hot paths read the per-thread ``_running.loop``
# slot that VirtualTimeLoop.run_forever sets, and fall back to this only for other loops.
_get_running_loop = events._get_running_loop
_TimerHandle = events.TimerHandle
_Handle = events.Handle
_new_handle = _Handle.__new__
_Future = asyncio.Future

#: Sleeps that may skip their loop turn in a row (see :func:`sleep_ns`) before the loop gets one.
_SKIP_BUDGET = 64


class QEMUClockType(enum.IntEnum):
    """QEMU's ``QEMUClockType`` (include/qemu/timer.h), same values."""

    REALTIME = 0
    VIRTUAL = 1
    HOST = 2
    VIRTUAL_RT = 3


REALTIME = QEMUClockType.REALTIME
VIRTUAL = QEMUClockType.VIRTUAL
HOST = QEMUClockType.HOST
VIRTUAL_RT = QEMUClockType.VIRTUAL_RT


class WaitSource(Protocol):
    """Something tasks can block on that can say who waits on it (for deadlock reports)."""

    def describe_waiters(self) -> dict[asyncio.Task[Any], str]: ...


_wait_sources: weakref.WeakSet[Any] = weakref.WeakSet()


def register_wait_source(source: WaitSource) -> None:
    """Let deadlock reports ask ``source.describe_waiters()`` what its blocked tasks wait on."""
    _wait_sources.add(source)


class _VirtualSelector(selectors.BaseSelector):
    """The selector the loop polls: it advances virtual time instead of blocking.

    Registration is delegated to a real selector so sockets and ``call_soon_threadsafe`` keep
    working; ``select`` polls it without blocking, except when the run is waiting for outside
    input (an executor job, a child process, a watched socket within the loop's ``io_grace``) or
    is being paced to wall time.
    """

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None
        self._registered = 0  # file objects watched (the loop's self-pipe is one)
        self.io_at = 0.0  # time.monotonic() of the last real I/O event or (re)registration

    # -- delegation ------------------------------------------------------------------------
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._real.register(fileobj, events, data)
        self._registered += 1
        self.io_at = time.monotonic()
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._real.unregister(fileobj)
        self._registered -= 1
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.io_at = time.monotonic()
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def _wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """The real selector's ``select``; an event restarts the I/O grace period."""
        events_ = self._real.select(timeout)
        if events_:
            self.io_at = time.monotonic()
        return events_

    # -- the virtual-time step -------------------------------------------------------------
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        watching = self._registered > 1  # >1: the self-pipe is always registered
        outside = loop._outside_jobs > 0 or loop._anyio_worker_busy()
        if timeout is not None:  # callbacks are ready (or the loop is stopping): just poll
            return self._wait(0) if watching or outside else []
        if outside:  # an executor job or a child process: time holds until it ends (real time)
            return self._wait(None)
        if loop.paused:  # stopped (the monitor's ``stop``): no virtual time passes, serve real I/O
            if watching:
                return self._wait(None)
            return loop._on_deadlock()
        if watching and loop._pace is None:  # real I/O may still arrive: a grace period first
            left = self.io_at + loop.io_grace - time.monotonic()
            events_ = self._wait(left if left > 0 else 0)
            if events_:
                return events_
        if loop._advance():
            return self._wait(0) if watching and loop._pace is not None else []
        paced = loop._paced_wait_s()
        if paced is not None:  # pacing: wait for wall time to catch up, serving real I/O meanwhile
            events_ = self._wait(paced)
            if events_ or loop._ready:  # type: ignore[attr-defined]
                return events_
            loop._advance(force=True)
            return self._wait(0) if watching else []
        if loop._timers:
            loop._advance(force=True)
            return []
        if watching:  # nothing virtual to do: wait for the outside world (at most io_timeout)
            events_ = self._wait(loop.io_timeout)
            if events_:
                return events_
        return loop._on_deadlock()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose ``time()`` is virtual and jumps to the next timer.

    Same-instant events run first in, first out. Integer nanoseconds inside; ``time()`` gives
    seconds as every asyncio loop does. ``start_ns`` is the first instant; ``io_grace`` and
    ``io_timeout`` (real seconds) bound the waits for socket I/O (see the module docstring).
    """

    _closed = True  # until asyncio's __init__ says otherwise: a loop whose __init__ raised is no "unclosed loop"

    def __init__(self, *, pace: float | None = None, start_ns: int = 0, io_grace: float = 0.0,
                 io_timeout: float | None = None, anyio_workers: bool = False) -> None:
        if pace is not None and not pace > 0:
            raise ValueError(f"pace must be a positive number (virtual seconds per wall second), got {pace!r}")
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        if not io_grace >= 0:
            raise ValueError(f"io_grace must be a number of seconds >= 0, got {io_grace!r}")
        if io_timeout is not None and not io_timeout >= 0:
            raise ValueError(f"io_timeout must be a number of seconds >= 0 or None, got {io_timeout!r}")
        #: Real seconds to wait for I/O on a watched socket or pipe, counted from the last real I/O
        #: event, before virtual time may jump past it (0: just poll).
        self.io_grace = float(io_grace)
        #: Real seconds to wait for I/O when no timer is pending and only a watched socket could
        #: wake the run, before it is a deadlock (None: forever).
        self.io_timeout = io_timeout
        #: Also hold time while one of anyio's worker threads (``anyio.to_thread.run_sync``) works
        #: for this loop: it reports through ``call_soon_threadsafe`` only, so finding it means
        #: looking at the threads, done only when a jump is due (the pytest plugin turns it on).
        self.anyio_workers = bool(anyio_workers)
        selector = _VirtualSelector()
        self._now_ns = start_ns
        # Timers as a calendar: a heap of distinct instants, and for each instant its entries
        # (futures to resolve, TimerHandles to run) in the order they were scheduled. vCPUs in
        # lockstep share instants, so the heap stays small and a batch is one pop.
        self._timers: list[int] = []
        self._buckets: dict[int, list[Any]] = {}
        # Outside work the run waits for in real time, with virtual time held: executor jobs, the
        # default executor's shutdown, child processes being spawned or running.
        self._outside_jobs = 0
        self._children: set[int] = set()  # pids of running child processes
        self._reaped: set[int] = set()  # pids reaped before _make_subprocess_transport returned
        self._main: asyncio.Future[Any] | None = None  # what run_until_complete runs
        self._deadlock_task: asyncio.Task[Any] | None = None  # where a deadlock is raised first
        self._pace = pace
        self._pace_origin: tuple[int, float] | None = None
        self.timers_fired = 0
        #: Sleeps completed without a loop turn because nothing else could run before they end.
        self.fast_forwards = 0
        self._skips = _SKIP_BUDGET
        self._fast_forward = pace is None  # never while paced, paused or waiting for outside work
        self._paused = False
        super().__init__(selector)
        selector.loop = self
        self._clock_resolution = 1e-9
        self._done: asyncio.Future[None] = _Future(loop=self)  # what a fast-forwarded sleep returns
        self._done.set_result(None)

    def run_forever(self) -> None:
        """asyncio's ``run_forever``, with this loop in the thread's ``_running.loop`` slot while it
        runs (what :func:`sleep_ns`, :func:`now_ns` and :func:`current_keeper` read instead of
        asyncio's running loop). The previous value is put back on exit, whatever happens."""
        slot = _running
        prev = slot.loop
        slot.loop = self
        try:
            super().run_forever()
        finally:
            slot.loop = prev

    # -- clock -------------------------------------------------------------------------------
    def time(self) -> float:
        return self._now_ns / NS_PER_S

    def now_ns(self) -> int:
        """Virtual time in integer nanoseconds."""
        return self._now_ns

    @property
    def paused(self) -> bool:
        """True while virtual time is held (``stop`` from aemu.monitor): only real I/O is served."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = bool(value)
        self._update_fast_forward()

    @property
    def pace(self) -> float | None:
        """Virtual seconds allowed per wall second, or None for as fast as possible."""
        return self._pace

    @pace.setter
    def pace(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"pace must be a positive number, got {value!r}")
        self._pace = value
        self._pace_origin = None
        self._update_fast_forward()

    def _update_fast_forward(self) -> None:
        """Sleeps may skip their loop turn, and the loop step may jump without a look outside,
        only while nothing holds time: no pacing, no pause, no outside work."""
        self._fast_forward = self._pace is None and not self._paused and not self._outside_jobs

    # -- timers ------------------------------------------------------------------------------
    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                context: Any = None) -> asyncio.TimerHandle:
        return self.call_at_ns(round(when * NS_PER_S), callback, *args, context=context)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                   context: Any = None) -> asyncio.TimerHandle:
        return self.call_at_ns(self._now_ns + round(delay * NS_PER_S), callback, *args, context=context)

    def call_at_ns(self, when_ns: int, callback: Callable[..., Any], *args: Any,
                   context: Any = None) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` at virtual time ``when_ns`` (FIFO among equal times)."""
        self._check_closed()  # type: ignore[attr-defined]
        if when_ns < self._now_ns:
            when_ns = self._now_ns
        handle = _TimerHandle(when_ns / NS_PER_S, callback, args, self, context)
        self._push(when_ns, handle)
        return handle

    def _push(self, when_ns: int, item: Any) -> None:
        bucket = self._buckets.get(when_ns)
        if bucket is None:
            self._buckets[when_ns] = [item]
            heapq.heappush(self._timers, when_ns)
        else:
            bucket.append(item)

    def _release_next(self) -> bool:
        """Jump to the earliest pending instant and release its entries, first in, first out:
        futures get their result, TimerHandles become ready. False if all were cancelled."""
        when = heapq.heappop(self._timers)
        if when > self._now_ns:
            self._now_ns = when
        ready = self._ready  # type: ignore[attr-defined]
        released = False
        for item in self._buckets.pop(when):
            if item.__class__ is _TimerHandle:
                if not item._cancelled:
                    ready.append(item)
                    released = True
            elif not item.done():
                item.set_result(None)
                released = True
        if released:
            self.timers_fired += 1
        return released

    # -- the loop step -----------------------------------------------------------------------
    def call_soon(self, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                  context: Any = None) -> asyncio.Handle:
        """asyncio's ``call_soon`` without the per-call debug checks (every task wake-up comes here)."""
        if self._debug or self._closed:  # type: ignore[attr-defined]
            return super().call_soon(callback, *args, context=context)
        handle: Any = _new_handle(_Handle)  # Handle.__init__ minus its per-call get_debug()
        handle._callback = callback
        handle._args = args
        handle._loop = self
        handle._context = context if context is not None else contextvars.copy_context()
        handle._cancelled = False
        handle._repr = None
        handle._source_traceback = None
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle  # type: ignore[no-any-return]

    def _run_once(self) -> None:
        """One loop iteration, lean: poll/advance through the selector, then run what is ready.

        Same order as asyncio's: the callbacks ready at the start of the iteration run, in FIFO
        order; those they schedule run in the next one. asyncio's own version also manages its
        ``TimerHandle`` heap, which this loop never uses (all timers are in ``_timers``).
        """
        self._skips = _SKIP_BUDGET
        if self._debug:  # type: ignore[attr-defined]
            return super()._run_once()  # type: ignore[misc,no-any-return]
        ready = self._ready  # type: ignore[attr-defined]
        timers = self._timers
        selector = self._selector  # type: ignore[attr-defined]
        if (not ready and timers and self._fast_forward and not self._stopping  # type: ignore[attr-defined]
                and selector._registered <= 1 and not (self.anyio_workers and self._anyio_worker_busy())):
            # The common step of a simulation: nothing ready, no outside I/O, no pacing.
            self._release_next()
        else:
            events_ = selector.select(0 if ready or self._stopping else None)  # type: ignore[attr-defined]
            if events_:
                self._process_events(events_)  # type: ignore[attr-defined]
        ntodo = len(ready)
        popleft = ready.popleft
        while ntodo:
            ntodo -= 1
            handle = popleft()
            if handle._cancelled:
                continue
            try:  # Handle._run, inline
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._callback_failed(handle, exc)
        return None

    def _callback_failed(self, handle: Any, exc: BaseException) -> None:
        """What ``Handle._run`` does when its callback raises: hand it to the exception handler."""
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
        context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def resolve_at_ns(self, when_ns: int, fut: asyncio.Future[Any]) -> None:
        """Set ``fut``'s result to None at virtual time ``when_ns`` unless it is done by then."""
        self._push(when_ns if when_ns > self._now_ns else self._now_ns, fut)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # cancelled entries are skipped when they reach the head of the heap

    def pending_timers(self) -> int:
        """Timer entries still pending (cancelled ones included until they are reached)."""
        return sum(len(b) for b in self._buckets.values())

    def _advance(self, force: bool = False) -> bool:
        """Release every timer due at the earliest pending instant, if allowed now.

        Without ``force`` time moves only when pacing does not hold it back. Returns True when
        something was released (callbacks are now ready).
        """
        timers = self._timers
        pace = self._pace
        while timers:
            if pace is not None and not force and timers[0] > self._now_ns:
                return False
            if self._release_next():
                return True
            if pace is not None:
                return False  # only cancelled entries were due: re-check pacing for the next one
        return False

    def _paced_wait_s(self) -> float | None:
        """Wall seconds to wait before the next timer may fire under pacing, or None."""
        pace = self._pace
        if pace is None or not self._timers:
            return None
        wall = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = (self._now_ns, wall)
        v0, w0 = self._pace_origin
        due = w0 + (self._timers[0] - v0) / NS_PER_S / pace
        if due > wall:
            return due - wall
        self._pace_origin = (self._now_ns, wall)  # behind schedule: re-anchor, never sprint to catch up
        return 0.0

    # -- outside work that may still wake the loop ---------------------------------------------
    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:  # type: ignore[override]
        """asyncio's ``run_in_executor``; virtual time holds until the job is done (it runs in real time)."""
        fut = super().run_in_executor(executor, func, *args)
        self._outside_begin()
        fut.add_done_callback(self._outside_end)
        return fut

    def _outside_begin(self) -> None:
        self._outside_jobs += 1
        self._fast_forward = False

    def _outside_end(self, _fut: object = None) -> None:
        self._outside_jobs -= 1
        if not self._outside_jobs:
            self._update_fast_forward()

    def _anyio_worker_busy(self) -> bool:
        """True if one of anyio's worker threads runs a job for this loop (``anyio_workers``)."""
        if not self.anyio_workers or len(_threads) < 2:  # no thread but this one: nothing to look at
            return False
        for t in threading.enumerate():
            idle = getattr(t, "idle_workers", None)
            if (idle is not None and getattr(t, "loop", None) is self and t not in idle
                    and not getattr(t, "stopping", True) and t.is_alive()):
                return True
        return False

    async def shutdown_default_executor(self, *args: Any) -> None:
        """asyncio's, with its joining thread counted as outside work (not a deadlock)."""
        self._outside_begin()
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self._outside_end()

    async def _make_subprocess_transport(self, *args: Any, **kwargs: Any) -> Any:
        """asyncio's; virtual time holds while the child process runs."""
        self._outside_begin()  # spawning
        try:
            transp = await super()._make_subprocess_transport(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._outside_end()
        pid = transp.get_pid()
        if pid in self._reaped:
            self._reaped.discard(pid)
        else:
            self._children.add(pid)
            self._outside_begin()
        return transp

    def _child_watcher_callback(self, pid: int, returncode: int, transp: Any) -> None:
        super()._child_watcher_callback(pid, returncode, transp)  # type: ignore[misc]
        self.call_soon_threadsafe(self._child_reaped, pid)

    def _child_reaped(self, pid: int) -> None:
        if pid in self._children:
            self._children.remove(pid)
            self._outside_end()
        else:
            self._reaped.add(pid)

    # -- deadlock ------------------------------------------------------------------------------
    def run_until_complete(self, future: Awaitable[T]) -> T:  # type: ignore[override]
        """asyncio's; a deadlock meanwhile is raised inside ``future``'s task (see :meth:`_on_deadlock`)."""
        fut = asyncio.ensure_future(future, loop=self)
        prev, self._main = self._main, fut
        try:
            return super().run_until_complete(fut)
        finally:
            self._main = prev

    def _on_deadlock(self) -> list[Any]:
        """Raise the deadlock in the task being run, where it waits: the test's task under the
        pytest plugin, else the task of ``run_until_complete``. The exception is set on the
        plain future that task (or the task it awaits, and so on) is blocked on, so it surfaces
        at the ``await`` and the task's ``except``/``finally`` clauses run; the loop goes on.
        With no such task (``run_forever``), it is raised out of the loop."""
        exc = self._deadlock()
        for root in (self._deadlock_task, self._main):
            waiter: Any = root
            while isinstance(waiter, asyncio.Task) and not waiter.done():
                waiter = getattr(waiter, "_fut_waiter", None)
            if isinstance(waiter, asyncio.Future) and not isinstance(waiter, asyncio.Task) and not waiter.done():
                waiter.set_exception(exc)
                return []
        raise exc

    def _deadlock(self) -> SimulationDeadlock:
        blocked = describe_blocked_tasks(self)
        if not blocked:
            lines = ["nothing is ready and no timer is pending, but the loop was asked to keep running"]
        else:
            lines = [f"{len(blocked)} task(s) blocked with no event pending:"]
            lines += [f"  task {name!r} waits on {what}" for name, what in blocked.items()]
        msg = f"simulation deadlock at t={self._now_ns} ns: " + "\n".join(lines)
        return SimulationDeadlock(msg, blocked)


def describe_blocked_tasks(loop: asyncio.AbstractEventLoop) -> dict[str, str]:
    """For each unfinished task of ``loop``: its name and what it waits on."""
    known: dict[asyncio.Task[Any], str] = {}
    for source in list(_wait_sources):
        try:
            known.update(source.describe_waiters())
        except Exception:  # a report must never hide the deadlock itself
            continue
    out: dict[str, str] = {}
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        if task.done():
            continue
        out[task.get_name()] = known.get(task) or _where(task)
    return out


def _where(task: asyncio.Task[Any]) -> str:
    """A task's awaited object and the innermost line of its coroutine stack."""
    coro: Any = task.get_coro()
    frame = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        what = "nothing (not started)"
    elif isinstance(waiter, asyncio.Task):
        what = f"task {waiter.get_name()!r}"
    elif hasattr(waiter, "_children"):  # asyncio.gather's future
        what = f"asyncio.gather() of {len(waiter._children)} awaitables"
    else:
        what = "a future that nothing will complete"
    if frame is not None:
        what += f" in {frame.f_code.co_name}() at {frame.f_code.co_filename}:{frame.f_lineno}"
    return what


class VirtualTimePolicy(asyncio.DefaultEventLoopPolicy):
    """An event-loop policy that makes :class:`VirtualTimeLoop` loops (for pytest-asyncio etc.)."""

    def new_event_loop(self) -> VirtualTimeLoop:
        return VirtualTimeLoop()


# -- module-level API (pinned names) ---------------------------------------------------------

def run(coro: Coroutine[Any, Any, T], *, pace: float | None = None, debug: bool | None = None) -> T:
    """Run ``coro`` on a fresh virtual-time loop and return its result.

    Like ``asyncio.run``: tasks left over are cancelled at the end. A deadlock raises
    :class:`aemu.errors.SimulationDeadlock`.
    """
    if pace is not None and not pace > 0:
        coro.close()
        raise ValueError(f"pace must be a positive number (virtual seconds per wall second), got {pace!r}")
    runner = asyncio.Runner(debug=debug, loop_factory=lambda: VirtualTimeLoop(pace=pace))
    try:
        return runner.run(coro)
    finally:
        try:
            runner.close()
        except SimulationDeadlock:
            pass  # tasks that block even while being cancelled are abandoned with the loop


def now_ns() -> int:
    """Current virtual time of the running loop, in integer nanoseconds.

    On a loop that is not virtual (real-time mode) it is the host's monotonic clock,
    ``time.monotonic_ns()``: asyncio's own ``loop.time()`` at full resolution, where uvloop's
    ``loop.time()`` ticks in milliseconds (and stands still during a loop iteration).
    """
    vloop = _running.loop
    if vloop is not None:
        return vloop._now_ns
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError("aemu.clock.now_ns() needs a running event loop (use aemu.clock.run)")
    try:
        return loop._now_ns  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        return time.monotonic_ns()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None: ``asyncio._get_running_loop()`` without its
    getpid() system call when the loop is a :class:`VirtualTimeLoop`."""
    loop = _running.loop
    if loop is not None:
        return loop
    return _get_running_loop()


def clock_get_ns(clock: QEMUClockType = VIRTUAL) -> int:
    """QEMU's ``qemu_clock_get_ns()``: VIRTUAL/VIRTUAL_RT from the loop, REALTIME/HOST from the host."""
    if clock == VIRTUAL or clock == VIRTUAL_RT:
        return now_ns()
    if clock == REALTIME:
        return time.monotonic_ns()
    if clock == HOST:
        return time.time_ns()
    raise ValueError(f"unknown clock {clock!r}; use VIRTUAL, VIRTUAL_RT, REALTIME or HOST")


def sleep_ns(ns: int) -> Awaitable[None]:
    """Sleep ``ns`` nanoseconds of virtual time (real time on a non-virtual loop)."""
    if ns < 0:
        raise ValueError(f"sleep_ns needs a duration >= 0, got {ns}")
    loop = _running.loop
    if loop is None:  # not inside a VirtualTimeLoop.run_forever of this thread
        other = _get_running_loop()
        if other is None:
            raise RuntimeError("aemu.clock.sleep_ns() needs a running event loop (use aemu.clock.run)")
        if not isinstance(other, VirtualTimeLoop):
            return asyncio.sleep(ns / NS_PER_S)
        loop = other
    when = loop._now_ns + ns
    timers = loop._timers
    ready = loop._ready  # type: ignore[attr-defined]
    if loop._skips and not ready and (not timers or timers[0] > when) and loop._fast_forward:
        # Nothing else can run before ``when``: nothing is ready now and the next timer is
        # later. Suspending would only make the loop jump to ``when`` and resume this task,
        # so jump here and go on (same schedule, no loop turn). ``_skips`` bounds how many
        # jumps happen in a row before the loop gets a turn (real I/O, other threads).
        loop._skips -= 1
        loop._now_ns = when
        loop.fast_forwards += 1
        return loop._done
    fut: asyncio.Future[None] = _Future(loop=loop)
    bucket = loop._buckets.get(when)
    if bucket is None:
        loop._buckets[when] = [fut]
        heapq.heappush(timers, when)
    else:
        bucket.append(fut)
    return fut


def call_at_ns(when_ns: int, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
    """Schedule ``callback(*args)`` at absolute virtual time ``when_ns``; returns a cancellable handle."""
    loop = running_loop()
    if loop is None:
        raise RuntimeError("aemu.clock.call_at_ns() needs a running event loop")
    if isinstance(loop, VirtualTimeLoop):
        return loop.call_at_ns(when_ns, callback, *args)
    return loop.call_later(max(when_ns - time.monotonic_ns(), 0) / NS_PER_S, callback, *args)  # now_ns's clock


# -- temporal decoupling ---------------------------------------------------------------------

#: Task -> its QuantumKeeper (only tasks that run ahead of global time have one).
_keepers: dict[Any, QuantumKeeper] = {}


class QuantumKeeper:
    """SystemC TLM-2's ``tlm_quantumkeeper`` for one task: local time that runs ahead of the loop.

    A vCPU doing work that nobody else can observe (guest compute, exits, lockless device reads)
    adds its cost to ``offset_ns`` instead of sleeping, so it costs no event-loop turn. It syncs
    -- sleeps the offset, bringing global time up to its local time -- before anything others can
    observe: taking a lock (aemu's :class:`~aemu.sync.Lock` does it by itself), halting, or when
    the offset passes ``quantum_ns``. Invariant: a task with a keeper never yields to the loop
    with a non-zero offset, so whoever runs next sees a consistent global time.

    While the task holds a lock, by default time is not run ahead: :meth:`advance` asks for a
    sync on every call, so the critical section happens at global time (device code under the BQL
    raises interrupts and kicks vCPUs, which others observe at once). With ``hold_ahead=True``
    the holder runs ahead too, within the quantum: the lock records the release at the holder's
    local time and grants later requests from it (:class:`aemu.sync.Lock`), so waits stay exact;
    for tasks whose critical sections nobody observes except through the lock itself.
    ``quantum_ns=0`` is exact lockstep.

    Two rules keep a run-ahead schedule the lockstep one:

    * the quantum boundary is inclusive, as in TLM-2's ``need_sync()`` (local time *reaches* the
      sync point): an offset of ``quantum_ns`` syncs (``horizon_ns`` is the largest offset kept);
    * before a race (a lock takes it: :meth:`sync_in_order`) a sync lands in its instant where
      lockstep would: there the last cost charged (``last_ns``) is a sleep set at
      ``local - last_ns``, and tasks arriving at one instant run in the order their sleeps were
      set. So it first sleeps to ``local - last_ns``, then the last cost (a tie at a free barging
      lock goes as in lockstep; a plain :meth:`sync` is one sleep, for the lockless fast path).
    """

    __slots__ = ("quantum_ns", "horizon_ns", "offset_ns", "last_ns", "locks_held", "syncs", "task",
                 "hold_ahead", "clock", "_done", "thread")

    def __init__(self, quantum_ns: int = 0, *, hold_ahead: bool = False) -> None:
        if isinstance(quantum_ns, bool) or not isinstance(quantum_ns, int) or quantum_ns < 0:
            raise ValueError(f"quantum must be an integer number of nanoseconds >= 0, got {quantum_ns!r}")
        self.quantum_ns = quantum_ns
        #: The largest offset kept without a sync: the boundary is inclusive (TLM-2's ``need_sync``).
        self.horizon_ns = max(quantum_ns - 1, 0)
        self.hold_ahead = bool(hold_ahead)
        self.offset_ns = 0
        #: The cost charged last (lockstep's last sleep before this instant); set by whoever charges.
        self.last_ns = 0
        self.locks_held = 0
        self.syncs = 0
        self.task: Any = None
        #: Global virtual time (the attached task's loop clock, read directly on hot paths).
        self.clock: Callable[[], int] = now_ns
        self._done: Awaitable[None] = _DONE
        #: The host thread it runs on when host CPUs are modelled (:mod:`aemu.sched`), else None:
        #: then every sync is CPU time spent on one of them.
        self.thread: Any = None

    def attach(self, task: asyncio.Task[Any] | None = None) -> None:
        """Make this the keeper of ``task`` (default: the current task)."""
        task = task or asyncio.current_task()
        if task is None:
            raise RuntimeError("QuantumKeeper.attach() needs a task")
        self.detach()
        self.task = task
        _keepers[task] = self
        loop = task.get_loop()
        if isinstance(loop, VirtualTimeLoop):
            self.clock, self._done = loop.now_ns, loop._done
        else:
            self.clock, self._done = now_ns, _DONE

    def detach(self) -> None:
        """Forget the task (call when it ends); the offset must have been synced."""
        if self.task is not None and _keepers.get(self.task) is self:
            del _keepers[self.task]
        self.task = None

    def advance(self, ns: int) -> bool:
        """Add ``ns`` of local time; True when the caller must ``await sync()`` now."""
        self.offset_ns += ns
        self.last_ns = ns
        return (self.locks_held > 0 and not self.hold_ahead) or self.offset_ns > self.horizon_ns

    def sync(self) -> Awaitable[None]:
        """Sleep the local offset so global time catches up with this task's local time."""
        off = self.offset_ns
        self.offset_ns = self.last_ns = 0
        self.syncs += 1
        if self.thread is not None:
            return self.thread.run(off)  # type: ignore[no-any-return]
        return sleep_ns(off)

    def sync_in_order(self) -> Awaitable[None]:
        """:meth:`sync` before a race (a lock): the last cost is slept on its own, so the task
        arrives at its local time in the order it would in lockstep (see the class docstring)."""
        last = self.last_ns
        off = self.offset_ns
        if 0 < last < off and self.thread is None:
            self.offset_ns -= last
            return _sleep_twice(self.sync(), last)
        return self.sync()

    def delay(self, ns: int) -> Awaitable[None]:
        """``await k.delay(ns)``: spend ``ns`` of work: run ahead if allowed, else sleep (the
        awaitable form of advance; nothing to suspend for when running ahead)."""
        if self.advance(ns):
            return self.sync()
        return self._done

    def local_now_ns(self) -> int:
        """This task's view of virtual time: global time plus its offset."""
        return self.clock() + self.offset_ns

    def __repr__(self) -> str:
        return (f"<QuantumKeeper quantum={self.quantum_ns} ns offset={self.offset_ns} ns "
                f"locks_held={self.locks_held}>")


async def _sleep_twice(first: Awaitable[None], then_ns: int) -> None:
    """A sync as lockstep would sleep it: up to where its last cost began, then that cost."""
    await first
    await sleep_ns(then_ns)


class _Done:
    """An awaitable that completes at once, on any loop."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_DONE: Any = _Done()


class _Running(threading.local):
    #: The keeper of a vCPU inside a synchronous stretch (no await until it is reset to None), so
    #: device code it calls finds it without looking up the current task. Per thread: several
    #: simulations may run in threads at once.
    keeper: QuantumKeeper | None = None
    #: The VirtualTimeLoop running in this thread (set by its ``run_forever``), else None. Read
    #: instead of ``asyncio._get_running_loop()``, which costs a getpid() system call on 3.11.
    #: asyncio allows one running loop per thread, so this is that loop whenever it is set.
    loop: VirtualTimeLoop | None = None


_running = _Running()
_threads: Any = getattr(threading, "_active", ())  # live threads by ident: one len() says "only this one"


def _forget_loop_after_fork() -> None:
    # asyncio's running loop is void in a forked child (its getpid() check); so is ours.
    _running.loop = None


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_loop_after_fork)


# The running loop's current task without asyncio.current_task()'s overhead (it finds the running
# loop through a getpid() system call on CPython 3.11).
_current_tasks: Any = getattr(asyncio.tasks, "_current_tasks", None)
if not isinstance(_current_tasks, dict):  # pragma: no cover - other Pythons
    _current_tasks = None


def current_keeper() -> QuantumKeeper | None:
    """The running task's QuantumKeeper, if it has one."""
    running = _running
    k = running.keeper
    if k is not None:
        return k
    if not _keepers:
        return None
    if _current_tasks is not None:
        loop = running.loop
        return _keepers.get(_current_tasks.get(loop if loop is not None else _get_running_loop()))
    return _keepers.get(asyncio.current_task())


def local_now_ns() -> int:
    """Virtual time as the running task sees it: global time plus its keeper's offset, if any."""
    k = _running.keeper
    if k is not None:
        return k.clock() + k.offset_ns
    now = now_ns()
    if _keepers:
        k = current_keeper()
        if k is not None:
            return now + k.offset_ns
    return now


if sys.version_info < (3, 11):  # pragma: no cover - pyproject requires 3.11
    raise ImportError("aemu needs Python 3.11 or newer")

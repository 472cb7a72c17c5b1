"""QEMU timers on the virtual clock, run by the main loop (QEMU's iothread) under the BQL.

``host.timer_new_ns(name, cb)`` is ``timer_new_ns(QEMU_CLOCK_VIRTUAL, cb, opaque)``;
:meth:`QEMUTimer.mod_ns` is ``timer_mod_ns`` (absolute expiry), :meth:`QEMUTimer.delete` is
``timer_del``. When timers expire, :class:`MainLoop` takes the BQL once
(``main_loop_wait`` → ``qemu_clock_run_all_timers``), spends ``timer_cb_ns`` of virtual time per
callback and runs each callback (a plain function or a coroutine function) with the BQL held.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from . import clock
from .sync import Lock

__all__ = ["MainLoop", "QEMUTimer"]

TimerCallback = Callable[[], "None | Awaitable[None]"]

#: The active :class:`aemu.check.Checker` while ``aemu check`` runs, else None: it is told which
#: timer's callback runs (device state the callback touches is attributed to it).
checker: Any = None


class QEMUTimer:
    """A ``QEMUTimer`` on ``QEMU_CLOCK_VIRTUAL``; its callback runs in the main loop under the BQL."""

    __slots__ = ("name", "cb", "main_loop", "expire_ns", "fired", "_handle", "_is_coro")

    def __init__(self, main_loop: MainLoop, name: str, cb: TimerCallback) -> None:
        self.name = name
        self.cb = cb
        self.main_loop = main_loop
        self.expire_ns = -1
        self.fired = 0
        self._handle: asyncio.TimerHandle | None = None
        self._is_coro = inspect.iscoroutinefunction(cb)

    def mod_ns(self, expire_ns: int) -> None:
        """(Re)arm the timer to expire at absolute virtual time ``expire_ns`` (``timer_mod_ns``)."""
        if self._handle is not None:
            self._handle.cancel()
        self.expire_ns = expire_ns
        self._handle = clock.call_at_ns(expire_ns, self.main_loop._expired, self)

    def delete(self) -> None:
        """Disarm the timer (``timer_del``)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.expire_ns = -1

    @property
    def pending(self) -> bool:
        """Whether the timer is armed (``timer_pending``)."""
        return self._handle is not None

    def __repr__(self) -> str:
        state = f"expires at {self.expire_ns} ns" if self.pending else "idle"
        return f"<QEMUTimer {self.name!r} {state}>"


class MainLoop:
    """QEMU's main loop thread reduced to what matters here: expired timers run under the BQL."""

    __slots__ = ("bql", "timer_cb_ns", "callbacks", "wakeups", "busy_ns", "thread", "_ready", "_wake", "_task")

    def __init__(self, bql: Lock, timer_cb_ns: int) -> None:
        self.bql = bql
        self.timer_cb_ns = timer_cb_ns
        self.callbacks = 0
        self.wakeups = 0
        self.busy_ns = 0
        #: The host thread it runs on when host CPUs are modelled (:mod:`aemu.sched`), else None:
        #: then it sleeps in ``ppoll`` while no timer is due, queues for a CPU when one is, and its
        #: callbacks' work is CPU time. It is not a vCPU: KVM never yields a CPU to it.
        self.thread: Any = None
        self._ready: list[QEMUTimer] = []
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def timer_new_ns(self, name: str, cb: TimerCallback) -> QEMUTimer:
        """``timer_new_ns(QEMU_CLOCK_VIRTUAL, cb, opaque)``."""
        return QEMUTimer(self, name, cb)

    def _expired(self, timer: QEMUTimer) -> None:
        timer._handle = None
        self._ready.append(timer)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def start(self) -> asyncio.Task[None]:
        """Start the main-loop task (named ``main-loop``)."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="main-loop")
        return self._task

    async def stop(self) -> None:
        """Stop the task and wait for it (it never leaves the BQL held)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def idle(self) -> bool:
        """True while the loop waits for a timer (used to tell a halted machine from a deadlock)."""
        return not self._ready

    async def run(self) -> None:
        """Wait for expired timers; run them with the BQL held, paying ``timer_cb_ns`` each."""
        loop = asyncio.get_running_loop()
        thread = self.thread
        keeper = None
        if thread is not None:  # a keeper carries the thread into the lock's futex wait
            thread.in_guest = False
            keeper = clock.QuantumKeeper(0)
            keeper.thread = thread
            keeper.attach()
        work = thread.run if thread is not None else clock.sleep_ns
        try:
            while True:
                if not self._ready:
                    if thread is not None:  # ppoll: the thread sleeps, its CPU goes to another
                        thread.block()
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                self.wakeups += 1
                t0 = clock.now_ns()
                if thread is not None:  # woken from ppoll: it runs once it has a CPU
                    await thread.run(0)
                async with self.bql.held("main-loop timers"):
                    while self._ready:
                        timer = self._ready.pop(0)
                        expire = timer.expire_ns
                        if expire < 0 or expire > clock.now_ns() or timer.pending:
                            # deleted (timer_del), already run, or re-armed for later since it
                            # expired: QEMU's timerlist_run_timers looks at the list as it is now
                            continue
                        timer.expire_ns = -1
                        await work(self.timer_cb_ns)
                        timer.fired += 1
                        self.callbacks += 1
                        if checker is not None:
                            checker.timer_callback(timer)
                        r: Any = timer.cb()
                        if timer._is_coro:
                            await r
                self.busy_ns += clock.now_ns() - t0
        finally:
            if keeper is not None:
                keeper.detach()
                thread.block()

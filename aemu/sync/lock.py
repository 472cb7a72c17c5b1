"""The accounted lock: a ``QemuMutex`` (util/qemu-thread-posix.c) or, with ``bql=True``, the Big
QEMU Lock (``bql_lock()``/``bql_unlock()`` in system/cpus.c), in virtual time.

The front is small: :meth:`Lock.try_acquire` is the fast path (no await, a few counters), and
every acquisition that has to wait goes through one coroutine, ``Lock._acquire_contended``, and
ends in ``Lock._granted``. The books are kept by :class:`~aemu.sync.lockstat.LockStat`; what a
release does for the waiters is a :mod:`~aemu.sync.policy` class.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol

from ..clock import (_DONE, NS_PER_S, QuantumKeeper, VirtualTimeLoop, _keepers, call_at_ns, now_ns,
                     register_wait_source, sleep_ns)
from ..errors import ConfigError
from ._task import Task, _current_task, _get_running_loop, _task_name, _task_of
from .bql import _bql_enter, _bql_release
from .lockstat import LockStat, _Account
from .policy import POLICIES, HandoffPolicy
from .stats import LockStatistics

__all__ = ["Lock"]


class _Waiter:
    """A task blocked in :meth:`Lock.acquire` (allocated on the contended path only)."""

    __slots__ = ("task", "site", "start", "holder_site", "fut", "handle", "queued", "acc", "tacc")

    # its site's and task's rows in the current window (LockStat.waiting), cached for the grant
    acc: _Account
    tacc: _Account

    def __init__(self, task: Task, site: str, start: int, holder_site: str) -> None:
        self.task = task
        self.site = site
        self.start = start
        self.holder_site = holder_site
        self.fut: asyncio.Future[None] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.queued = False


class _Held:
    """``async with lock.held(site=...)``: one reusable instance per (lock, site)."""

    __slots__ = ("_lock", "_site")

    def __init__(self, lock: Lock, site: str) -> None:
        self._lock = lock
        self._site = site

    # Plain functions returning an awaitable: no coroutine object unless the lock is contended.
    def __aenter__(self) -> Awaitable[None]:
        lock = self._lock
        if lock.try_acquire(self._site):
            return lock._done
        return lock._acquire_contended(self._site)

    def __aexit__(self, *exc_info: object) -> Awaitable[None]:
        lock = self._lock
        lock.release()
        return lock._done  # its result (None) lets the exception, if any, propagate


class Lock:
    """A mutex for tasks with strict ownership, a hand-off model and lock_stat/QSP books.

    ``await acquire(site=...)``/``release()``, or ``async with lock.held(site=...)``. Not
    recursive: the owner acquiring again raises ``RuntimeError``, as does a release by another
    task or of a free lock. A free lock is taken without yielding to the loop, so a lock costs
    nothing in virtual time unless it is contended.

    ``policy`` (:data:`~aemu.sync.policy.POLICIES`: ``"fifo"`` or ``"barging"``) says what a
    release does when tasks wait; the woken waiter runs ``handoff_ns`` later (futex wake to the
    waiter running on a CPU; 0 means the next loop turn, same virtual instant). *Wait* runs from
    the acquire call to the moment the task runs holding the lock, hand-off included; *hold* from
    then to the release.

    Cancellation strands nobody: a cancelled waiter leaves the queue; a wakee cancelled before it
    ran passes on what it was given (the lock, or the wake-up); a holder cancelled inside
    ``held()`` releases on the way out. :meth:`reset` opens a new accounting window and clips
    whatever is in flight to it (QEMU's ``sync-profile reset``).

    A lock belongs to the thread running its event loop and follows that loop from one
    :func:`aemu.clock.run` to the next. An uncontended acquire + release costs about 1 µs of wall
    time on CPython 3.11 (``bench/bench_lock.py``).
    """

    __slots__ = (
        "name", "handoff_ns", "policy", "bql", "_policy",
        "_owner", "_owner_site", "_owner_since", "_hold_start",
        "_queue", "_pending", "_held_cache", "_stat",
        "_last_ns", "_loop", "_time", "_resolve_at", "_free_at", "_free_woke", "_last_site", "_done", "_new_future",
        "tracer", "utilisation", "__weakref__",
    )

    def __init__(self, name: str, *, handoff_ns: int = 0, policy: str = "fifo", bql: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a Lock needs a non-empty name (it labels every report), got {name!r}")
        if isinstance(handoff_ns, bool) or not isinstance(handoff_ns, int) or handoff_ns < 0:
            raise ConfigError(
                f"Lock {name!r}: handoff_ns must be an integer number of nanoseconds >= 0, got {handoff_ns!r}")
        cls = POLICIES.get(policy) if isinstance(policy, str) else None
        if cls is None:
            raise ConfigError(f"Lock {name!r}: unknown policy {policy!r}; use "
                              + " or ".join(repr(p) for p in POLICIES))
        self.name = name
        self.handoff_ns = handoff_ns
        self.policy = policy
        self.bql = bool(bql)
        self._policy: HandoffPolicy = cls()
        self._owner: Task | None = None
        self._owner_site: str | None = None
        self._owner_since = 0  # when the current owner was granted the lock
        self._hold_start = -1  # when the current owner started running with it; -1: not yet
        self._queue: deque[_Waiter] = deque()
        self._pending: dict[Task, _Waiter] = {}  # every task blocked in acquire, queued or woken
        self._held_cache: dict[str, _Held] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop this lock last ran on
        self._time: _Timebase = _RUNNING_LOOP_TIME  # that loop, whose ``_now_ns`` is virtual time in ns
        self._resolve_at: Callable[[int, asyncio.Future[None]], asyncio.TimerHandle | None] = _resolve_at
        self._done: asyncio.Future[None] = _DONE  # a completed future of the loop (what a free acquire returns)
        self._new_future: Callable[[], asyncio.Future[None]] = _no_loop_future
        self._last_ns = 0
        # Virtual time of the latest release as the releaser saw it, and its site. A holder that
        # runs ahead of global time (QuantumKeeper(hold_ahead=True)) releases "in the future":
        # until global time gets there the lock is still held, and a request is granted from it.
        self._free_at = 0
        # Whether that release woke a waiter (barging: a release ahead of global time wakes the
        # first request that comes before it, if nobody waited when it was made).
        self._free_woke = True
        self._last_site = "unknown"
        #: An aemu.trace.Tracer to receive wait/hold spans, or None (the default: no cost).
        self.tracer: Any = None
        #: An aemu.trace.Utilisation to receive busy intervals (owned, hand-off windows included), or None.
        self.utilisation: Any = None
        self._stat = LockStat(self._now())
        register_wait_source(self)

    # -- public API ------------------------------------------------------------------------------
    def held(self, site: str = "unknown") -> _Held:
        """``async with lock.held(site="hpet read"):`` holds the lock for the block.

        ``site`` is a constant label (QSP's call site): one context manager is cached per site.
        """
        h = self._held_cache.get(site)
        if h is None:
            h = self._held_cache[site] = _Held(self, site)
        return h

    def try_acquire(self, site: str = "unknown") -> bool:
        """Take the lock if it is free, without waiting (QEMU's ``qemu_mutex_trylock``).

        This is also the fast path of :meth:`acquire`: no await, a few counters. A free lock is
        taken even if tasks are waiting for it (only possible with ``policy="barging"``).
        """
        task = _task_of(self._loop)
        if task is None:
            task = self._bind()
        if self._owner is not None:
            if self._owner is task:
                self._raise_recursive()
            return False
        now = self._time._now_ns
        if self._free_at > now:  # released ahead of global time by a holder running ahead
            return False
        if _keepers:  # a task running ahead of global time must sync before taking a lock
            k = _keepers.get(task)
            if k is not None:
                if k.offset_ns:
                    return False
                k.locks_held += 1
        self._owner = task
        self._owner_site = site
        self._owner_since = self._hold_start = now
        if self._pending:  # a barge: taken while tasks wait for it
            self._stat.barges += 1
        self._stat.acquired(site, task.get_name())
        if self.bql:
            _bql_enter(task, self._loop)
        return True

    def acquire(self, site: str = "unknown") -> Awaitable[None]:
        """``await lock.acquire(site)``: take the lock, waiting if another task holds it; ``site``
        names the call site in reports.

        A task with a :class:`~aemu.clock.QuantumKeeper` first syncs its local time (a lock is a
        synchronisation point). A free lock is taken at the call (no coroutine is made); the
        returned awaitable then completes at once.
        """
        if self.try_acquire(site):
            return self._done
        return self._acquire_contended(site)

    def release(self) -> None:
        """Release the lock; the owner only. Hands it over or wakes a waiter if tasks wait."""
        task = _task_of(self._loop)
        if self._owner is not task or task is None:
            self._raise_bad_release()
        now = self._time._now_ns
        if _keepers:
            k = _keepers.get(task)
            if k is not None:
                k.locks_held -= 1
                now += k.offset_ns  # the hold ends at the holder's local time
        self._last_ns = self._free_at = now
        self._last_site = self._owner_site or "unknown"
        self._stat.released(now - self._hold_start)
        if self.utilisation is not None:  # busy: from the hand-off (or acquisition) to release
            self.utilisation.add(self._owner_since, now)
        if self.tracer is not None:
            self.tracer.span(self.name, task.get_name(), self._hold_start, now)
            self.tracer.span(task.get_name(), f"hold {self.name} ({self._owner_site})", self._hold_start, now)
        if self.bql:
            _bql_release(task)
        self._owner = None
        self._free_woke = bool(self._queue)
        if self._queue:
            self._wake_next(now)

    def locked(self) -> bool:
        """Whether some task owns the lock (a fifo wakee in its hand-off window counts)."""
        return self._owner is not None

    @property
    def owner(self) -> Task | None:
        """The task owning the lock, or None."""
        return self._owner

    def reset(self) -> None:
        """Open a new accounting window (QEMU's ``sync-profile reset``); in-flight work is clipped.

        A running hold is measured from now, at its site and task; each blocked waiter's wait
        starts now, in the new window's rows.
        """
        now = self._now()
        stat = self._stat
        stat.new_window(now)
        owner = self._owner
        if owner is not None and self._hold_start >= 0:
            self._hold_start = now
            stat.holding(self._owner_site or "unknown", owner.get_name())
        for w in self._pending.values():
            w.start = now
            w.acc, w.tacc = stat.waiting(w.site, w.task.get_name())

    def statistics(self) -> LockStatistics:
        """A frozen snapshot of the lock's state and of the current accounting window.

        ``tasks_waiting`` counts every task blocked in acquire, a fifo wakee in its hand-off window
        included; ``contentions`` the acquisitions that waited (a wait is counted when it ends in
        one, so ``contentions <= acquisitions`` whenever the snapshot is taken); ``wait_ns``
        counts every acquisition, ``hold_ns`` every release.
        """
        now = self._now()
        stat = self._stat
        stat.fold()
        owner = self._owner
        return LockStatistics(
            name=self.name, policy=self.policy, handoff_ns=self.handoff_ns, bql=self.bql,
            locked=owner is not None, owner=_task_name(owner),
            owner_site=self._owner_site if owner is not None else None,
            tasks_waiting=len(self._pending), acquisitions=stat.acquisitions,
            contentions=stat.contentions, contended_acquisitions=stat.contentions,
            cancelled_waits=stat.cancelled, handoffs=stat.handoffs, barges=stat.barges,
            requeues=stat.requeues, wait_ns=stat.waits.stats(), hold_ns=stat.holds.stats(),
            sites=stat.site_rows(), holder_sites=stat.holder_points(),
            waiter_sites=stat.waiter_points(), tasks=stat.task_rows(),
            window_start_ns=stat.window_start, window_ns=max(0, now - stat.window_start),
        )

    def describe_waiters(self) -> dict[Task, str]:
        """For deadlock reports: what each task blocked on this lock waits for."""
        out: dict[Task, str] = {}
        owner = self._owner
        for task, w in self._pending.items():
            if owner is task:
                what = f"handed over at {self._owner_since} ns, runs after a {self.handoff_ns} ns hand-off"
            elif owner is None:
                what = "free, wake-up on its way"
            else:
                what = (f"held by {owner.get_name()!r} at site {self._owner_site!r} "
                        f"since {self._owner_since} ns")
            out[task] = f"lock {self.name!r} ({what}) from site {w.site!r}"
        return out

    def __repr__(self) -> str:
        owner = self._owner
        if owner is None:
            state = f"unlocked Lock {self.name!r}"
        else:
            state = f"locked Lock {self.name!r} owner={owner.get_name()!r}"
        n = len(self._pending) - (1 if owner is not None and owner in self._pending else 0)
        if n:
            state += f" with {n} waiter{'s' if n != 1 else ''}"
        return f"<{state}>"

    # -- the contended path ---------------------------------------------------------------------------
    async def _acquire_contended(self, site: str) -> None:
        """Wait for the lock: every acquisition that cannot take it at once comes here, and every
        one that gets it ends in :meth:`_granted` (the places to instrument, like trio's
        ``_lot.park()``)."""
        task = _task_of(self._loop)
        assert task is not None  # try_acquire bound the loop
        k = _keepers.get(task) if _keepers else None
        if k is not None and k.offset_ns:  # running ahead of global time: sync first (a lock is a sync point)
            await k.sync_in_order()
            if self.try_acquire(site):
                return
        now = self._time._now_ns
        free_at = self._free_at
        if self._owner is None and free_at > now and self._policy.hands_over:
            # Released ahead of global time by a holder running ahead: this request comes before
            # that release in virtual time, so it is handed the lock from it without queueing.
            grant = free_at + self.handoff_ns
            if k is not None and k.hold_ahead and grant - now <= k.horizon_ns:
                # Its keeper runs ahead to the grant: no waiter, no await.
                acc, tacc = self._stat.waiting(site, task.get_name())
                self._hand_over(task, site, free_at)
                k.offset_ns += grant - now
                self._granted(task, k, site, now, acc, tacc, self._last_site)
                return
            w = self._park(task, site, now, self._last_site)
            self._hand_over(task, site, free_at)
            try:
                if k is not None and k.hold_ahead:
                    k.offset_ns += grant - now
                    if k.offset_ns > k.horizon_ns:
                        await k.sync()
                else:
                    await sleep_ns(grant - now)
            except BaseException:
                self._abandon(w)
                raise
        else:
            w = self._park(task, site, now, self._owner_site or self._last_site)
            new_future = self._new_future
            fut = w.fut = new_future()
            w.queued = True
            self._queue.append(w)
            if self._owner is None and free_at > now and not self._free_woke:
                # barging, released ahead of global time: this request comes before that unlock
                # and sleeps; it is the sleeper the unlock wakes (futex_wake at free_at)
                self._free_woke = True
                self._wake_next(free_at)
            thread = k.thread if k is not None else None
            try:
                while True:
                    if thread is not None:  # futex_wait: the thread sleeps, its CPU goes to another
                        thread.block()
                    await fut
                    w.handle = None
                    if thread is not None:  # woken: it runs (and competes again) once it has a CPU
                        await thread.woken_for_lock()
                    if self._owner is None:  # barging: the lock is still free when we arrive
                        self._owner = task
                        self._owner_site = site
                        self._owner_since = self._time._now_ns
                        break
                    if self._owner is task:  # fifo: it was handed to us
                        break
                    self._stat.requeues += 1  # barging: somebody took it meanwhile; back to the tail
                    fut = w.fut = new_future()
                    w.queued = True
                    self._queue.append(w)
            except BaseException:
                self._abandon(w)
                raise
        del self._pending[task]
        self._granted(task, k, site, w.start, w.acc, w.tacc, w.holder_site)

    def _park(self, task: Task, site: str, now: int, holder_site: str) -> _Waiter:
        """``task`` starts waiting at ``now`` (the lock held at ``holder_site``): register it as blocked."""
        w = _Waiter(task, site, now, holder_site)
        w.acc, w.tacc = self._stat.waiting(site, task.get_name())
        self._pending[task] = w
        return w

    def _granted(self, task: Task, k: QuantumKeeper | None, site: str, start: int,
                 acc: _Account, tacc: _Account, holder_site: str) -> None:
        """A wait that began at ``start`` (the lock held at ``holder_site``) ends: the task runs
        holding the lock, at its local time; the contention is counted now, with the acquisition."""
        now = self._time._now_ns
        if k is not None:
            k.locks_held += 1
            now += k.offset_ns
        self._hold_start = now
        self._stat.granted(acc, tacc, now - start, holder_site)
        if self.tracer is not None:
            self.tracer.span(task.get_name(), f"wait {self.name} ({site})", start, now)
        if self.bql:
            _bql_enter(task, self._loop)

    def _hand_over(self, task: Task, site: str, since: int) -> None:
        """``task`` owns the lock from ``since`` but has not run yet (its hold starts when it does)."""
        self._owner = task
        self._owner_site = site
        self._owner_since = since
        self._hold_start = -1
        self._stat.handoffs += 1

    def _wake_next(self, now: int) -> None:
        """The lock was freed at ``now`` with tasks queued: the policy may hand it to the oldest,
        which is woken ``handoff_ns`` later (``now`` may be ahead of global time: a run-ahead release)."""
        w = self._queue.popleft()
        w.queued = False
        if _keepers and (k := _keepers.get(w.task)) is not None and k.thread is not None:
            k.thread.woken()  # futex_wake from the releasing thread
        self._policy.release(self, w, now)
        fut = w.fut
        assert fut is not None
        when = now + self.handoff_ns
        if when > self._time._now_ns:
            w.handle = self._resolve_at(when, fut)
        elif not fut.done():
            fut.set_result(None)

    def _abandon(self, w: _Waiter) -> None:
        """A waiter was cancelled (or its coroutine closed): undo its claim, strand nobody."""
        task = w.task
        self._pending.pop(task, None)
        self._stat.cancelled_wait(w.acc, w.tacc)
        if w.handle is not None:
            w.handle.cancel()
            w.handle = None
        if w.queued:
            self._queue.remove(w)
            w.queued = False
            return
        if self._owner is task:  # handed over, cancelled before it ran: free the lock
            self._owner = None
        elif self._owner is not None:  # woken by a barging release, but somebody else took it
            return
        if self._queue:  # pass the lock (fifo) or the wake-up (barging) on
            self._wake_next(self._now())

    # -- cold helpers -------------------------------------------------------------------------------
    def _runs_holding(self, task: Task | None) -> bool:
        """Whether ``task`` holds the lock and runs with it (not a wakee still in its hand-off)."""
        return task is not None and self._owner is task and self._hold_start >= 0

    def _bind(self) -> Task:
        """Slow part of the first acquisition on a loop: find the running loop and the caller."""
        loop = _get_running_loop()
        if loop is None:
            raise RuntimeError(f"Lock {self.name!r} needs a running event loop (use aemu.clock.run)")
        task = _task_of(loop)
        if task is None:
            raise RuntimeError(f"Lock {self.name!r} must be acquired from inside an asyncio task, "
                               f"not from a plain callback")
        if loop is not self._loop:
            self._free_at = 0  # a new loop (a new run): its clock starts over
            self._free_woke = True
        self._loop = loop
        self._new_future = functools.partial(asyncio.Future, loop=loop)
        if isinstance(loop, VirtualTimeLoop):
            self._time = loop  # read loop._now_ns: a method call would cost 4 % of an acquire + release
            self._resolve_at = loop.resolve_at_ns  # no handle: a cancelled wakee's future is skipped
            self._done = loop._done
        else:
            self._time = _LoopTime(loop)
            self._resolve_at = _resolve_at
            self._done = done = loop.create_future()
            done.set_result(None)
        return task

    def _now(self) -> int:
        """Virtual time now, or the last time this lock saw if no loop is running."""
        if _get_running_loop() is None:
            return self._last_ns
        now = now_ns()
        if now > self._last_ns:
            self._last_ns = now
        return now

    def _raise_recursive(self) -> NoReturn:
        raise RuntimeError(
            f"Lock {self.name!r} is already held by this task (acquired at site "
            f"{self._owner_site!r}); aemu locks are not recursive")

    def _raise_bad_release(self) -> NoReturn:
        owner = self._owner
        task = _current_task() if _get_running_loop() is not None else None
        if owner is None:
            raise RuntimeError(f"Lock {self.name!r} released while it is not held")
        who = "code outside any task" if task is None else f"task {task.get_name()!r}"
        raise RuntimeError(
            f"Lock {self.name!r} released by {who}, but it is held by task {owner.get_name()!r} "
            f"(acquired at site {self._owner_site!r}); only the owner can release it")


class _Timebase(Protocol):
    """Where a lock reads the time: a VirtualTimeLoop, or a _LoopTime for any other loop."""

    @property
    def _now_ns(self) -> int: ...


class _LoopTime:
    """The clock of a loop that is not a VirtualTimeLoop (real-time mode), in ns."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def _now_ns(self) -> int:
        # clock.now_ns() off a virtual loop: time.monotonic_ns(), not loop.time() (uvloop: ms)
        return now_ns()


class _RunningLoopTime:
    """The running loop's clock (before a lock is bound to a loop)."""

    __slots__ = ()

    @property
    def _now_ns(self) -> int:
        return now_ns()


_RUNNING_LOOP_TIME = _RunningLoopTime()


def _no_loop_future() -> asyncio.Future[None]:
    raise RuntimeError("a Lock makes futures only after its first acquisition on a loop")


def _resolve(fut: asyncio.Future[None]) -> None:
    """Timer callback ending a hand-off window: the wakee runs now (unless it was cancelled)."""
    if not fut.done():
        fut.set_result(None)


def _resolve_at(when_ns: int, fut: asyncio.Future[None]) -> asyncio.TimerHandle:
    """End a hand-off window at ``when_ns`` on any loop (VirtualTimeLoop.resolve_at_ns is cheaper)."""
    return call_at_ns(when_ns, _resolve, fut)

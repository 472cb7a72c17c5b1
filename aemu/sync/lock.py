"""Accounted locks in virtual time: the BQL and device mutexes (:class:`Lock`), and QEMU's
sequence lock (:class:`SeqLock`).

One lock class serves both the Big QEMU Lock (``bql=True``; QEMU's ``bql_lock()``/``bql_unlock()``
in system/cpus.c, and :func:`bql_locked` for the thread-local ``bql_locked()``) and a device's own
``QemuMutex`` (the HPET mutex of the BQL-free series). Every lock keeps the books QEMU's QSP
(util/qsp.c, ``info sync-profile``) and Linux ``lock_stat`` keep, plus latency percentiles, all in
integer nanoseconds of virtual time (:func:`aemu.clock.now_ns`).

Hot-path rule: an uncontended acquire does not yield to the loop and records no sample beyond a
few counters; the hold time of each release goes into a raw ``array('q')``. Samples are folded
into HDR histograms only when :meth:`Lock.statistics` is called (``record_value`` costs about a
microsecond, too much per acquisition), or every ``_FOLD_EVERY`` samples to bound memory.
"""

from __future__ import annotations

import asyncio
import functools
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any, NoReturn

from hdrh.histogram import HdrHistogram

from ..clock import (_DONE, NS_PER_S, QuantumKeeper, VirtualTimeLoop, _keepers, call_at_ns, now_ns,
                    register_wait_source, sleep_ns)
from ..errors import ConfigError
from ._task import Task, _current_task, _get_running_loop, _task_name, _task_of
from .bql import _bql_enter, _bql_release
from .stats import ContentionPoint, LockStatistics, SiteStats, TaskLockStats, TimeStats, _value_at


__all__ = ["Lock"]

#: Lock policies (see :class:`Lock`).
POLICIES = ("fifo", "barging")

#: HDR histogram range and precision: 1 ns resolution up to 2048 ns, then 3 significant digits
#: (relative error below 1/1024, i.e. under 0.1 %) up to one day of virtual time. Longer values
#: are clamped into the top bucket for percentiles only; min/max/total/mean stay exact.
HDR_LOWEST_NS = 1
HDR_HIGHEST_NS = 24 * 3600 * 1_000_000_000
HDR_SIGNIFICANT_DIGITS = 3

#: Fold raw samples into the histogram once this many are pending (bounds memory to ~8 MiB).
_FOLD_EVERY = 1 << 20


def _real_time_ns(loop: asyncio.AbstractEventLoop) -> int:
    return int(loop.time() * NS_PER_S)



# -- accounting internals ---------------------------------------------------------------------

class _Account:
    """Counters of one call site or one task (mutable; read into frozen rows by statistics())."""

    __slots__ = ("acquisitions", "contentions", "cancelled_waits", "wait_total", "wait_max",
                 "holds", "hold_total", "hold_max")

    def __init__(self) -> None:
        self.acquisitions = 0
        self.contentions = 0
        self.cancelled_waits = 0
        self.wait_total = 0
        self.wait_max = 0
        self.holds = 0
        self.hold_total = 0
        self.hold_max = 0

    def waited(self, wait: int) -> None:
        """A contended acquisition that waited ``wait`` ns."""
        self.acquisitions += 1
        self.wait_total += wait
        if wait > self.wait_max:
            self.wait_max = wait


class _Samples:
    """Raw duration samples, folded on demand into an HDR histogram and exact aggregates.

    ``raw`` is appended to on the hot path (the lock holds the same array); ``fold`` moves its
    contents into the histogram and into exact count/min/max/total, and empties it.
    """

    __slots__ = ("raw", "count", "total", "min", "max", "_hist", "_cache")

    def __init__(self, raw: array[int]) -> None:
        self.raw = raw
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0
        self._hist: HdrHistogram | None = None
        self._cache: TimeStats | None = None

    def clear(self) -> None:
        del self.raw[:]  # in place: the lock keeps a reference to the same array
        self.count = self.total = self.min = self.max = 0
        if self._hist is not None:
            self._hist.reset()
        self._cache = None

    def fold(self, zeros: int = 0) -> None:
        """Move pending raw samples (and ``zeros`` samples of 0 ns) into the histogram."""
        raw = self.raw
        if not raw and not zeros:
            return
        hist = self._hist
        if hist is None:
            hist = self._hist = HdrHistogram(HDR_LOWEST_NS, HDR_HIGHEST_NS, HDR_SIGNIFICANT_DIGITS)
        counts = Counter(raw)  # virtual-time durations repeat a lot: one record per distinct value
        if zeros:
            counts[0] += zeros
        record = hist.record_value
        top = HDR_HIGHEST_NS
        for value, n in counts.items():
            record(value if value <= top else top, n)
        lo = 0 if zeros else min(raw)
        hi = max(raw) if raw else 0
        self.min = lo if self.count == 0 else min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += len(raw) + zeros
        self.total += sum(raw)
        del raw[:]
        self._cache = None

    def stats(self) -> TimeStats:
        """The folded distribution, cached until new samples are folded in."""
        cached = self._cache
        if cached is not None:
            return cached
        if self.count == 0:
            result = TimeStats()
        else:
            hist = self._hist
            assert hist is not None
            value_at = hist.get_value_from_index
            highest = hist.get_highest_equivalent_value
            buckets = tuple((highest(value_at(i)), c) for i, c in enumerate(hist.counts) if c)
            cumulative = tuple(accumulate(c for _, c in buckets))
            top = self.max
            result = TimeStats(self.count, self.min, top, self.total, self.total / self.count,
                               _value_at(buckets, cumulative, top, 50.0),
                               _value_at(buckets, cumulative, top, 90.0),
                               _value_at(buckets, cumulative, top, 99.0),
                               _value_at(buckets, cumulative, top, 99.9),
                               buckets, cumulative)
        self._cache = result
        return result


class _Waiter:
    """A task blocked in :meth:`Lock.acquire` (allocated on the contended path only)."""

    __slots__ = ("task", "site", "start", "holder_site", "fut", "handle", "queued", "acc", "tacc")

    # its site's and task's rows in the current window, set by Lock._count_contention
    acc: _Account
    tacc: _Account

    def __init__(self, task: Task, site: str, start: int, holder_site: str) -> None:
        self.task = task
        self.site = site
        self.start = start
        self.holder_site = holder_site
        self.fut: asyncio.Future[None] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.queued = True


def _no_loop_future() -> asyncio.Future[None]:
    raise RuntimeError("a Lock makes futures only after its first acquisition on a loop")




def _resolve(fut: asyncio.Future[None]) -> None:
    """Timer callback ending a hand-off window: the wakee runs now (unless it was cancelled)."""
    if not fut.done():
        fut.set_result(None)


def _resolve_at(when_ns: int, fut: asyncio.Future[None]) -> asyncio.TimerHandle:
    """End a hand-off window at ``when_ns`` on any loop (VirtualTimeLoop.resolve_at_ns is cheaper)."""
    return call_at_ns(when_ns, _resolve, fut)


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


# -- the lock ------------------------------------------------------------------------------------

class Lock:
    """A mutex for tasks with strict ownership, a hand-off model and full accounting.

    Models ``QemuMutex`` (and, with ``bql=True``, the BQL): ``await acquire(site=...)`` /
    ``release()``, or ``async with lock.held(site=...)``. Not recursive: the owner acquiring again
    raises ``RuntimeError``, as does a release by another task or of a free lock. The uncontended
    acquire never yields to the event loop (like ``asyncio.Lock``), so a lock costs nothing in
    virtual time unless it is contended.

    Hand-off, with ``handoff_ns`` = the wake-up latency of a blocked waiter (futex wake to the
    waiter running on a CPU; 0 means "at the next loop turn", same virtual instant):

    ``policy="fifo"`` (a fair/ticket lock; Go's mutex in starvation mode; a futex with forced
    hand-off such as a PI mutex, FUTEX_UNLOCK_PI giving the lock to the top waiter): release with
    waiters passes ownership straight to the oldest waiter, which starts running ``handoff_ns``
    later. During that window the lock is held by the wakee (``owner`` is the wakee, ``locked()``
    is True) though it has not run yet, and every other task queues behind it: this is how lock
    convoys form. Nobody can barge.

    ``policy="barging"`` (glibc's default ``PTHREAD_MUTEX_NORMAL``, lowlevellock.h): release makes
    the lock free and, if tasks are queued, wakes the oldest one (futex_wake of one waiter), which
    arrives ``handoff_ns`` later. Any task calling acquire while the lock is free takes it at once,
    even with waiters queued or a wakee on its way (a *barge*). A woken waiter that finds the lock
    taken again goes back to the tail of the queue (futex_wait re-queues at the tail) and is
    counted as a *requeue*, not as a new contention: ``contentions`` counts acquire calls that had
    to wait, once each (like lock_stat's ``lock_contended``). Every release that finds tasks
    queued wakes one, so several wakees can be on their way at once, as with glibc.

    Accounting (integer ns of virtual time). *Wait* runs from the acquire call to the moment the
    task runs holding the lock, so it includes ``handoff_ns``; *hold* runs from that moment to the
    release. A wakee's hand-off window is therefore wait, nobody's hold.
    ``acquisitions`` counts acquire calls that returned holding the lock; ``contentions`` those
    that had to wait (counted when they start waiting); ``cancelled_waits`` waits that ended in
    cancellation instead, including a fifo wakee cancelled after the hand-off but before it ran.
    Invariant: ``contentions == contended_acquisitions + cancelled_waits + tasks_waiting``.

    Cancellation: a waiter cancelled in the queue leaves it; a fifo wakee cancelled during its
    hand-off window passes ownership on to the next waiter (which then runs ``handoff_ns`` after
    the cancellation) or frees the lock; a barging wakee cancelled on its way passes its wake-up
    on if the lock is free and tasks are queued. A holder cancelled inside ``held()`` releases on
    the way out. So the lock is never left held by a task that will not release it, and no waiter
    is stranded.

    A hold is recorded when it ends (``hold_ns.count`` counts releases). :meth:`reset` opens a
    new accounting window (QEMU's ``sync-profile reset``); whatever is in flight is clipped to the
    reset instant: a running hold is measured from it (and counted as a hold of the new window at
    its site and task), and each blocked waiter counts as a contention of the new window whose
    wait starts at it. The holder's acquisition itself stays in the old window.

    A lock belongs to the thread running its event loop (like asyncio's). It remembers the loop
    it last ran on, so it can move from one :func:`aemu.clock.run` to the next. Cost on CPython
    3.11 (see PERF-NOTES): an uncontended acquire + release is about 1 µs of wall time.
    """

    __slots__ = (
        "name", "handoff_ns", "policy", "bql", "_fifo",
        "_owner", "_owner_site", "_owner_since", "_hold_start", "_owner_acc", "_owner_tacc",
        "_queue", "_pending", "_held_cache",
        "_acquisitions", "_contentions", "_contended", "_cancelled", "_handoffs", "_barges",
        "_requeues", "_sites", "_tasks", "_holder_sites", "_wait_raw", "_hold_raw",
        "_waits", "_holds", "_zeros_folded", "_window_start", "_last_ns", "_loop", "_clock", "_resolve_at",
        "_free_at", "_last_site",
        "_done", "_new_future",
        "tracer", "utilisation", "__weakref__",
    )

    def __init__(self, name: str, *, handoff_ns: int = 0, policy: str = "fifo", bql: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a Lock needs a non-empty name (it labels every report), got {name!r}")
        if isinstance(handoff_ns, bool) or not isinstance(handoff_ns, int) or handoff_ns < 0:
            raise ConfigError(
                f"Lock {name!r}: handoff_ns must be an integer number of nanoseconds >= 0, got {handoff_ns!r}")
        if policy not in POLICIES:
            raise ConfigError(f"Lock {name!r}: unknown policy {policy!r}; use 'fifo' or 'barging'")
        self.name = name
        self.handoff_ns = handoff_ns
        self.policy = policy
        self.bql = bool(bql)
        self._fifo = policy == "fifo"
        self._owner: Task | None = None
        self._owner_site: str | None = None
        self._owner_since = 0  # when the current owner was granted the lock
        self._hold_start = -1  # when the current owner started running with it; -1: not yet
        self._owner_acc = _Account()  # the current holder's site and task rows
        self._owner_tacc = _Account()
        self._queue: deque[_Waiter] = deque()
        self._pending: dict[Task, _Waiter] = {}  # every task blocked in acquire, queued or woken
        self._held_cache: dict[str, _Held] = {}
        self._wait_raw: array[int] = array("q")  # waits of contended acquisitions (others are 0)
        self._hold_raw: array[int] = array("q")  # every hold
        self._waits = _Samples(self._wait_raw)
        self._holds = _Samples(self._hold_raw)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop this lock last ran on
        self._clock: Callable[[], int] = now_ns  # that loop's virtual time in ns
        self._resolve_at: Callable[[int, asyncio.Future[None]], asyncio.TimerHandle | None] = _resolve_at
        self._done: asyncio.Future[None] = _DONE  # a completed future of the loop (what a free acquire returns)
        self._new_future: Callable[[], asyncio.Future[None]] = _no_loop_future
        self._last_ns = 0
        # Virtual time of the latest release as the releaser saw it, and its site. A holder that
        # runs ahead of global time (QuantumKeeper(hold_ahead=True)) releases "in the future":
        # until global time gets there the lock is still held, and a request is granted from it.
        self._free_at = 0
        self._last_site = "unknown"
        #: An aemu.trace.Tracer to receive wait/hold spans, or None (the default: no cost).
        self.tracer: Any = None
        #: An aemu.trace.Utilisation to receive busy intervals (owned, hand-off windows included), or None.
        self.utilisation: Any = None
        self._new_window(self._now())
        register_wait_source(self)

    def _new_window(self, start: int) -> None:
        self._window_start = start
        self._acquisitions = 0
        self._contentions = 0
        self._contended = 0
        self._cancelled = 0
        self._handoffs = 0
        self._barges = 0
        self._requeues = 0
        self._zeros_folded = 0
        self._sites: dict[str, _Account] = {}
        self._tasks: dict[str, _Account] = {}
        self._holder_sites: dict[str, int] = {}
        self._waits.clear()
        self._holds.clear()

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
        now = self._clock()
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
        self._acquisitions += 1
        if self._pending:
            self._barges += 1
        acc = self._sites.get(site)
        if acc is None:
            acc = self._sites[site] = _Account()
        acc.acquisitions += 1
        self._owner_acc = acc
        name = task.get_name()
        acc = self._tasks.get(name)
        if acc is None:
            acc = self._tasks[name] = _Account()
        acc.acquisitions += 1
        self._owner_tacc = acc
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
        now = self._clock()
        if _keepers:
            k = _keepers.get(task)
            if k is not None:
                k.locks_held -= 1
                now += k.offset_ns  # the hold ends at the holder's local time
        self._last_ns = self._free_at = now
        self._last_site = self._owner_site or "unknown"
        hold = now - self._hold_start
        self._hold_raw.append(hold)
        if self.utilisation is not None:  # busy: from the hand-off (or acquisition) to release
            self.utilisation.add(self._owner_since, now)
        if self.tracer is not None:
            self.tracer.span(self.name, task.get_name(), self._hold_start, now)
            self.tracer.span(task.get_name(), f"hold {self.name} ({self._owner_site})", self._hold_start, now)
        acc = self._owner_acc
        acc.holds += 1
        acc.hold_total += hold
        if hold > acc.hold_max:
            acc.hold_max = hold
        acc = self._owner_tacc
        acc.holds += 1
        acc.hold_total += hold
        if self.bql:
            _bql_release(task)
        if self._queue:
            self._pass_on(now)
        else:
            self._owner = None
        if len(self._hold_raw) >= _FOLD_EVERY:
            self._fold()

    def locked(self) -> bool:
        """Whether some task owns the lock (a fifo wakee in its hand-off window counts)."""
        return self._owner is not None

    @property
    def owner(self) -> Task | None:
        """The task owning the lock, or None."""
        return self._owner

    def reset(self) -> None:
        """Open a new accounting window (QEMU's ``sync-profile reset``); in-flight work is clipped."""
        now = self._now()
        self._new_window(now)
        owner = self._owner
        if owner is not None and self._hold_start >= 0:
            self._hold_start = now
            self._owner_acc = self._site_acc(self._owner_site or "unknown")
            self._owner_tacc = self._task_acc(owner.get_name())
        for w in self._pending.values():
            w.start = now
            self._count_contention(w)

    def statistics(self) -> LockStatistics:
        """A frozen snapshot of the lock's state and of the current accounting window."""
        now = self._now()
        self._fold()
        wait_ns = self._waits.stats()
        hold_ns = self._holds.stats()
        sites = tuple(sorted(
            (SiteStats(site, a.acquisitions, a.contentions, a.cancelled_waits, a.wait_total,
                       a.wait_total / a.acquisitions if a.acquisitions else 0.0, a.wait_max,
                       a.holds, a.hold_total, a.hold_total / a.holds if a.holds else 0.0, a.hold_max)
             for site, a in self._sites.items()),
            key=lambda s: (-s.wait_total_ns, -s.acquisitions, s.site)))
        holder_sites = _points(self._holder_sites.items())
        waiter_sites = _points((site, a.contentions) for site, a in self._sites.items() if a.contentions)
        tasks = tuple(sorted(
            (TaskLockStats(name, a.acquisitions, a.contentions, a.cancelled_waits, a.wait_total,
                           a.holds, a.hold_total)
             for name, a in self._tasks.items()),
            key=lambda t: (-t.wait_total_ns, t.task)))
        owner = self._owner
        return LockStatistics(
            name=self.name, policy=self.policy, handoff_ns=self.handoff_ns, bql=self.bql,
            locked=owner is not None, owner=_task_name(owner),
            owner_site=self._owner_site if owner is not None else None,
            tasks_waiting=len(self._pending), acquisitions=self._acquisitions,
            contentions=self._contentions, contended_acquisitions=self._contended,
            cancelled_waits=self._cancelled, handoffs=self._handoffs, barges=self._barges,
            requeues=self._requeues, wait_ns=wait_ns, hold_ns=hold_ns, sites=sites,
            holder_sites=holder_sites, waiter_sites=waiter_sites, tasks=tasks,
            window_start_ns=self._window_start, window_ns=max(0, now - self._window_start),
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

    # -- the contended path (one place to instrument) -----------------------------------------
    async def _acquire_contended(self, site: str) -> None:
        """Wait for the lock: queue, be woken (fifo: handed the lock), run holding it."""
        loop = self._loop
        task = _task_of(loop)
        assert loop is not None and task is not None  # try_acquire bound them
        k = _keepers.get(task) if _keepers else None
        if k is not None and k.offset_ns:  # running ahead of global time: sync first (a lock is a sync point)
            await k.sync()
            if self.try_acquire(site):
                return
        now = self._clock()
        if self._owner is None and self._free_at > now:
            # Released ahead of global time by a holder running ahead: this request comes
            # before that release in virtual time, so it is granted from it (a fifo hand-off
            # to the waiter it would have been), without queueing.
            if (k is not None and k.hold_ahead
                    and self._free_at + self.handoff_ns - now <= k.quantum_ns):
                self._take_ahead(task, k, site, now)  # runs ahead to the grant: no await at all
            else:
                await self._acquire_granted(task, k, site, now)
            return
        w = _Waiter(task, site, now, self._owner_site or "unknown")
        self._count_contention(w)
        self._pending[task] = w
        self._queue.append(w)
        new_future = self._new_future
        try:
            while True:
                fut = w.fut = new_future()
                await fut
                w.handle = None
                if self._owner is None:  # barging: the lock is still free when we arrive
                    self._owner = task
                    self._owner_site = site
                    self._owner_since = self._clock()
                    break
                if self._owner is task:  # fifo: it was handed to us
                    break
                self._requeues += 1  # barging: somebody took it meanwhile; back to the tail
                w.queued = True
                self._queue.append(w)
        except BaseException:
            self._abandon(w)
            raise
        self._granted(task, k, w)

    async def _acquire_granted(self, task: Task, k: QuantumKeeper | None, site: str, now: int) -> None:
        """Take a lock released at ``_free_at`` > now: own it through the hand-off window, then
        run at ``_free_at + handoff_ns`` (a keeper task runs ahead to it if its quantum allows)."""
        w = _Waiter(task, site, now, self._last_site)
        w.queued = False
        self._count_contention(w)
        self._pending[task] = w
        self._owner = task
        self._owner_site = site
        self._owner_since = self._free_at
        self._hold_start = -1
        self._handoffs += 1
        grant = self._free_at + self.handoff_ns
        try:
            if k is not None and k.hold_ahead:
                k.offset_ns += grant - now
                if k.offset_ns > k.quantum_ns:
                    await k.sync()
            else:
                await sleep_ns(grant - now)
        except BaseException:
            self._abandon(w)
            raise
        self._granted(task, k, w)

    def _take_ahead(self, task: Task, k: QuantumKeeper, site: str, now: int) -> None:
        """``_acquire_granted`` for a task that may run ahead to the grant: one step, no await."""
        free_at = self._free_at
        grant = free_at + self.handoff_ns
        wait = grant - now
        k.offset_ns += wait
        k.locks_held += 1
        self._owner = task
        self._owner_site = site
        self._owner_since = free_at
        self._hold_start = grant
        self._acquisitions += 1
        self._contentions += 1
        self._contended += 1
        self._handoffs += 1
        self._wait_raw.append(wait)
        hs = self._holder_sites
        hs[self._last_site] = hs.get(self._last_site, 0) + 1
        name = task.get_name()
        for acc in (self._site_acc(site), self._task_acc(name)):
            acc.contentions += 1
            acc.waited(wait)
        self._owner_acc, self._owner_tacc = self._sites[site], self._tasks[name]
        if self.tracer is not None:
            self.tracer.span(name, f"wait {self.name} ({site})", now, grant)
        if self.bql:
            _bql_enter(task, self._loop)
        if len(self._wait_raw) >= _FOLD_EVERY:
            self._fold()

    def _granted(self, task: Task, k: QuantumKeeper | None, w: _Waiter) -> None:
        """A waiter runs holding the lock: its wait ends (at its local time) and is accounted."""
        site = w.site
        loop = self._loop
        del self._pending[task]
        now = self._clock()
        if k is not None:
            k.locks_held += 1
            now += k.offset_ns
        wait = now - w.start
        self._hold_start = now
        self._acquisitions += 1
        self._contended += 1
        self._wait_raw.append(wait)
        if self.tracer is not None:
            self.tracer.span(task.get_name(), f"wait {self.name} ({site})", w.start, now)
        self._owner_acc = w.acc
        self._owner_tacc = w.tacc
        w.acc.waited(wait)
        w.tacc.waited(wait)
        if self.bql:
            _bql_enter(task, loop)
        if len(self._wait_raw) >= _FOLD_EVERY:
            self._fold()

    def _count_contention(self, w: _Waiter) -> None:
        """Count ``w`` as a contention of the current window (and cache its account rows)."""
        self._contentions += 1
        acc = self._sites.get(w.site)
        if acc is None:
            acc = self._sites[w.site] = _Account()
        w.acc = acc
        acc.contentions += 1
        name = w.task.get_name()
        acc = self._tasks.get(name)
        if acc is None:
            acc = self._tasks[name] = _Account()
        w.tacc = acc
        acc.contentions += 1
        hs = self._holder_sites
        hs[w.holder_site] = hs.get(w.holder_site, 0) + 1

    def _pass_on(self, now: int) -> None:
        """Release with tasks queued: hand over (fifo) or free the lock and wake one (barging)."""
        w = self._queue.popleft()
        w.queued = False
        if self._fifo:
            self._owner = w.task
            self._owner_site = w.site
            self._owner_since = now
            self._hold_start = -1
            self._handoffs += 1
        else:
            self._owner = None
        fut = w.fut
        assert fut is not None
        when = now + self.handoff_ns  # ``now`` may be ahead of global time (a run-ahead release)
        if when > self._clock():
            w.handle = self._resolve_at(when, fut)
        elif not fut.done():
            fut.set_result(None)

    def _abandon(self, w: _Waiter) -> None:
        """A waiter was cancelled (or its coroutine closed): undo its claim, strand nobody."""
        task = w.task
        self._pending.pop(task, None)
        self._cancelled += 1
        w.acc.cancelled_waits += 1
        w.tacc.cancelled_waits += 1
        if w.handle is not None:
            w.handle.cancel()
            w.handle = None
        if w.queued:
            self._queue.remove(w)
            w.queued = False
            return
        if self._owner is task:  # fifo: handed over, cancelled before it ran
            if self._queue:
                self._pass_on(self._now())
            else:
                self._owner = None
        elif self._owner is None and self._queue:  # barging: pass the wake-up on
            self._pass_on(self._now())

    # -- cold helpers -------------------------------------------------------------------------------
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
        self._loop = loop
        self._new_future = functools.partial(asyncio.Future, loop=loop)
        if isinstance(loop, VirtualTimeLoop):
            self._clock = loop.now_ns
            self._resolve_at = loop.resolve_at_ns  # no handle: a cancelled wakee's future is skipped
            self._done = loop._done
        else:
            self._clock = functools.partial(_real_time_ns, loop)
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

    def _site_acc(self, site: str) -> _Account:
        acc = self._sites.get(site)
        if acc is None:
            acc = self._sites[site] = _Account()
        return acc

    def _task_acc(self, name: str) -> _Account:
        acc = self._tasks.get(name)
        if acc is None:
            acc = self._tasks[name] = _Account()
        return acc

    def _fold(self) -> None:
        uncontended = self._acquisitions - self._contended
        self._waits.fold(uncontended - self._zeros_folded)
        self._zeros_folded = uncontended
        self._holds.fold()

    def _raise_bad_release(self) -> NoReturn:
        owner = self._owner
        task = _current_task() if _get_running_loop() is not None else None
        if owner is None:
            raise RuntimeError(f"Lock {self.name!r} released while it is not held")
        who = "code outside any task" if task is None else f"task {task.get_name()!r}"
        raise RuntimeError(
            f"Lock {self.name!r} released by {who}, but it is held by task {owner.get_name()!r} "
            f"(acquired at site {self._owner_site!r}); only the owner can release it")


def _points(items: Any) -> tuple[ContentionPoint, ...]:
    return tuple(sorted((ContentionPoint(s, n) for s, n in items), key=lambda p: (-p.count, p.site)))

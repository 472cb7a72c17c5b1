"""A lock's books: Linux ``lock_stat`` (Documentation/locking/lockstat.rst) and QEMU's QSP
(util/qsp.c, ``info sync-profile``), in integer nanoseconds of virtual time.

:class:`LockStat` keeps one accounting window. The lock tells it each event -- an uncontended
acquisition, a wait beginning, a grant after a wait, a cancelled wait, a release -- and it keeps
counters, a row per call site and per task, the holders' sites of contentions, and raw wait and
hold samples. The samples go into HDR histograms only for a snapshot (``record_value`` costs
about a microsecond, too much per acquisition), or every ``_FOLD_EVERY`` samples to bound memory.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from itertools import accumulate

from hdrh.histogram import HdrHistogram

from .stats import ContentionPoint, SiteStats, TaskLockStats, TimeStats, _value_at

__all__ = ["HDR_HIGHEST_NS", "HDR_LOWEST_NS", "HDR_SIGNIFICANT_DIGITS", "LockStat"]

#: HDR histogram range and precision: 1 ns resolution up to 2048 ns, then 3 significant digits
#: (relative error below 1/1024, i.e. under 0.1 %) up to one day of virtual time. Longer values
#: are clamped into the top bucket for percentiles only; min/max/total/mean stay exact.
HDR_LOWEST_NS = 1
HDR_HIGHEST_NS = 24 * 3600 * 1_000_000_000
HDR_SIGNIFICANT_DIGITS = 3

#: Fold raw samples into the histogram once this many are pending (bounds memory to ~8 MiB).
_FOLD_EVERY = 1 << 20


class _Account:
    """Counters of one call site or one task: a QSP row plus lock_stat's hold columns."""

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
        self.contentions += 1
        self.wait_total += wait
        if wait > self.wait_max:
            self.wait_max = wait


class _Rows(dict[str, _Account]):
    """Rows by call site or task name; a row is made on first use."""

    __slots__ = ()

    def __missing__(self, key: str) -> _Account:
        row = self[key] = _Account()
        return row


class _Samples:
    """Raw duration samples, folded on demand into an HDR histogram and exact aggregates."""

    __slots__ = ("raw", "count", "total", "min", "max", "_hist", "_cache")

    def __init__(self) -> None:
        self.raw: array[int] = array("q")  # appended to on the hot path; emptied by fold()
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0
        self._hist: HdrHistogram | None = None
        self._cache: TimeStats | None = None

    def clear(self) -> None:
        del self.raw[:]  # in place: LockStat keeps a reference to the same array
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


class LockStat:
    """The books of one lock over one accounting window (QEMU's ``sync-profile reset`` opens a new one).

    *Wait* runs from the acquire call to the moment the task runs holding the lock; *hold* from
    then to the release. An uncontended acquisition waits 0 ns: it is counted, not sampled (the
    zeros are added when folding).

    A contention is counted when its wait ends in the acquisition, with it (its site's and task's
    rows, its holder's site), so every snapshot -- a live one with tasks queued, a partial one
    after Ctrl-C cancelled them -- has ``contentions <= acquisitions``. A wait still in flight is
    a waiting task (the lock's ``tasks_waiting``); one that ended in cancellation is counted in
    ``cancelled`` only. Every wait that began is one of the three.
    """

    __slots__ = ("window_start", "acquisitions", "contentions", "cancelled", "handoffs",
                 "barges", "requeues", "sites", "tasks", "holder_sites", "waits", "holds",
                 "owner_acc", "owner_tacc", "_wait_raw", "_hold_raw", "_zeros_folded")

    def __init__(self, start: int) -> None:
        self.waits = _Samples()  # waits of contended acquisitions (the others are 0)
        self.holds = _Samples()  # every hold
        self._wait_raw = self.waits.raw
        self._hold_raw = self.holds.raw
        #: The rows the running hold is booked to (its acquisition's site and task).
        self.owner_acc = _Account()
        self.owner_tacc = _Account()
        self.new_window(start)

    def new_window(self, start: int) -> None:
        """Forget everything counted so far; the window starts at ``start``."""
        self.window_start = start
        self.acquisitions = 0
        #: Contended acquisitions: granted after a wait (lock_stat's ``waittime.nr``).
        self.contentions = 0
        #: Waits that ended in cancellation.
        self.cancelled = 0
        #: Ownership passed to a task before it ran (fifo release, grant from a run-ahead release).
        self.handoffs = 0
        #: A free lock taken while tasks waited for it (barging).
        self.barges = 0
        #: Woken waiters that found the lock taken and queued again (barging).
        self.requeues = 0
        self._zeros_folded = 0
        self.sites = _Rows()
        self.tasks = _Rows()
        #: lock_stat's contending points: the holder's site, once per contention.
        self.holder_sites: dict[str, int] = {}
        self.waits.clear()
        self.holds.clear()

    # -- events --------------------------------------------------------------------------------
    def acquired(self, site: str, name: str) -> None:
        """An uncontended acquisition at ``site`` by the task called ``name``."""
        self.acquisitions += 1
        self.owner_acc = acc = self.sites[site]
        acc.acquisitions += 1
        self.owner_tacc = acc = self.tasks[name]
        acc.acquisitions += 1

    def waiting(self, site: str, name: str) -> tuple[_Account, _Account]:
        """A task starts waiting (lock_stat's ``lock_contended``): its site and task rows, which
        :meth:`granted` or :meth:`cancelled_wait` count it in when the wait ends."""
        return self.sites[site], self.tasks[name]

    def granted(self, acc: _Account, tacc: _Account, wait: int, holder_site: str) -> None:
        """A waiter runs holding the lock after ``wait`` ns (lock_stat's ``lock_acquired``); the
        lock was held at ``holder_site`` when the wait began."""
        self.acquisitions += 1
        self.contentions += 1
        self._wait_raw.append(wait)
        acc.waited(wait)
        tacc.waited(wait)
        hs = self.holder_sites
        hs[holder_site] = hs.get(holder_site, 0) + 1
        self.owner_acc = acc
        self.owner_tacc = tacc
        if len(self._wait_raw) >= _FOLD_EVERY:
            self.fold()

    def cancelled_wait(self, acc: _Account, tacc: _Account) -> None:
        """A wait ended in cancellation instead of a grant."""
        self.cancelled += 1
        acc.cancelled_waits += 1
        tacc.cancelled_waits += 1

    def released(self, hold: int) -> None:
        """The holder released after ``hold`` ns (booked to its acquisition's site and task)."""
        self._hold_raw.append(hold)
        acc = self.owner_acc
        acc.holds += 1
        acc.hold_total += hold
        if hold > acc.hold_max:
            acc.hold_max = hold
        acc = self.owner_tacc
        acc.holds += 1
        acc.hold_total += hold
        if len(self._hold_raw) >= _FOLD_EVERY:
            self.fold()

    def holding(self, site: str, name: str) -> None:
        """A hold running across a new window is booked to its site and task rows of this one."""
        self.owner_acc = self.sites[site]
        self.owner_tacc = self.tasks[name]

    # -- snapshot --------------------------------------------------------------------------------
    def fold(self) -> None:
        """Move the raw samples into the histograms (uncontended acquisitions as 0 ns waits)."""
        uncontended = self.acquisitions - self.contentions
        self.waits.fold(uncontended - self._zeros_folded)
        self._zeros_folded = uncontended
        self.holds.fold()

    def site_rows(self) -> tuple[SiteStats, ...]:
        """QSP's rows, by total wait, descending (its default order)."""
        return tuple(sorted(
            (SiteStats(site, a.acquisitions, a.contentions, a.cancelled_waits, a.wait_total,
                       a.wait_total / a.acquisitions if a.acquisitions else 0.0, a.wait_max,
                       a.holds, a.hold_total, a.hold_total / a.holds if a.holds else 0.0, a.hold_max)
             for site, a in self.sites.items()),
            key=lambda s: (-s.wait_total_ns, -s.acquisitions, s.site)))

    def holder_points(self) -> tuple[ContentionPoint, ...]:
        """lock_stat's contending points: for each contention, the holder's site."""
        return _points(self.holder_sites.items())

    def waiter_points(self) -> tuple[ContentionPoint, ...]:
        """lock_stat's contention points: for each contention, the waiter's site."""
        return _points((site, a.contentions) for site, a in self.sites.items() if a.contentions)

    def task_rows(self) -> tuple[TaskLockStats, ...]:
        """One row per task name, by total wait, descending."""
        return tuple(sorted(
            (TaskLockStats(name, a.acquisitions, a.contentions, a.cancelled_waits, a.wait_total,
                           a.holds, a.hold_total)
             for name, a in self.tasks.items()),
            key=lambda t: (-t.wait_total_ns, t.task)))


def _points(items: Iterable[tuple[str, int]]) -> tuple[ContentionPoint, ...]:
    return tuple(sorted((ContentionPoint(s, n) for s, n in items), key=lambda p: (-p.count, p.site)))

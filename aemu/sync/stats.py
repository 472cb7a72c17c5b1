"""Frozen snapshots of a lock's books: what :meth:`Lock.statistics() <aemu.sync.Lock.statistics>`
returns and the reports (``info sync-profile``, lock_stat) read. Times are integer ns of virtual time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["ContentionPoint", "LockStatistics", "SiteStats", "TaskLockStats", "TimeStats"]


def _value_at(buckets: tuple[tuple[int, int], ...], cumulative: tuple[int, ...], top: int, q: float) -> int:
    """HdrHistogram's value_at_percentile over non-empty buckets, capped at the exact maximum."""
    if not cumulative:
        return 0
    target = max(1, int(q * cumulative[-1] / 100 + 0.5))
    return min(buckets[bisect_left(cumulative, target)][0], top)



@dataclass(frozen=True, slots=True)
class TimeStats:
    """Distribution of one kind of duration (integer ns of virtual time), frozen.

    ``count``, ``min``, ``max``, ``total`` and ``mean`` are exact. Percentiles come from an HDR
    histogram (exact below 2048 ns, within 0.1 % above) and follow HdrHistogram's rule: the
    highest value equivalent to the bucket holding the ``ceil``-rounded rank, capped at ``max``.
    All fields are 0 when ``count`` is 0.
    """

    count: int = 0
    min: int = 0
    max: int = 0
    total: int = 0
    mean: float = 0.0
    p50: int = 0
    p90: int = 0
    p99: int = 0
    p999: int = 0
    #: The folded histogram: (bucket value, count) for every non-empty bucket, ascending.
    buckets: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)
    #: Running totals of the counts in ``buckets``.
    _cumulative: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def percentile(self, q: float) -> int:
        """The value at percentile ``q`` (0..100), computed like HdrHistogram's value_at_percentile."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be between 0 and 100, got {q!r}")
        if q == 0.0:
            return self.min
        return _value_at(self.buckets, self._cumulative, self.max, q)

    def cdf(self) -> tuple[tuple[int, float], ...]:
        """Points (value, fraction of samples <= value) of the folded histogram, for CDF plots."""
        cum = self._cumulative
        if not cum:
            return ()
        n = cum[-1]
        return tuple((min(v, self.max), c / n) for (v, _), c in zip(self.buckets, cum))


@dataclass(frozen=True, slots=True)
class SiteStats:
    """One call site of one lock: a QSP row (wait) plus lock_stat's hold columns."""

    site: str
    acquisitions: int
    contentions: int
    cancelled_waits: int
    wait_total_ns: int
    #: QSP's "Average": total wait over all acquisitions at this site, uncontended ones included.
    wait_mean_ns: float
    wait_max_ns: int
    holds: int
    hold_total_ns: int
    hold_mean_ns: float
    hold_max_ns: int


@dataclass(frozen=True, slots=True)
class ContentionPoint:
    """A call site and how many contentions it was part of (lock_stat's contention points)."""

    site: str
    count: int


@dataclass(frozen=True, slots=True)
class TaskLockStats:
    """One task's (vCPU's) use of one lock."""

    task: str
    acquisitions: int
    contentions: int
    cancelled_waits: int
    wait_total_ns: int
    holds: int
    hold_total_ns: int


@dataclass(frozen=True, slots=True)
class LockStatistics:
    """A frozen snapshot of a :class:`Lock` and of its accounting window.

    A contention is counted when its wait ends in the acquisition, so in every snapshot, however
    partial, ``contentions == contended_acquisitions <= acquisitions``. Waits that have not ended
    are labelled separately: ``tasks_waiting`` counts every task blocked in acquire, a fifo wakee
    in its hand-off window included; waits that ended in cancellation are ``cancelled_waits``.
    :attr:`waits_begun` is all three. ``sum(p.count for p in holder_sites) == sum(p.count for p in
    waiter_sites) == contentions``; ``wait_ns.count == acquisitions``; ``hold_ns.count`` counts
    releases in the window.
    """

    name: str
    policy: str
    handoff_ns: int
    bql: bool
    locked: bool
    owner: str | None
    owner_site: str | None
    tasks_waiting: int
    acquisitions: int
    #: Acquisitions that had to wait, counted when the wait ends in the acquisition.
    contentions: int
    #: The same number, by lock_stat's name for it (``waittime.nr``).
    contended_acquisitions: int
    cancelled_waits: int
    #: fifo: releases that passed ownership straight to a waiter.
    handoffs: int
    #: barging: acquisitions that took a free lock while another task was waiting for it.
    barges: int
    #: barging: woken waiters that found the lock taken and went back to the tail of the queue.
    requeues: int
    wait_ns: TimeStats
    hold_ns: TimeStats
    #: Per call site, sorted by total wait, descending (QSP's default order).
    sites: tuple[SiteStats, ...]
    #: lock_stat's "contending points": for each contention, the site where the holder took the lock.
    holder_sites: tuple[ContentionPoint, ...]
    #: lock_stat's "contention points": for each contention, the waiter's site.
    waiter_sites: tuple[ContentionPoint, ...]
    #: Per task name, sorted by total wait, descending.
    tasks: tuple[TaskLockStats, ...]
    window_start_ns: int
    window_ns: int

    @property
    def waits_begun(self) -> int:
        """Every wait of the window, ended or not (lock_stat's ``lock_contended`` events):
        ``contentions + cancelled_waits + tasks_waiting``."""
        return self.contentions + self.cancelled_waits + self.tasks_waiting

"""Linux's ``/proc/lock_stat`` (CONFIG_LOCK_STAT) for aemu's locks.

Follows ``seq_header()``/``seq_stats()`` of kernel/locking/lockdep_proc.c and the layout shown
in Documentation/locking/lockstat.rst:

* ``lock_stat version 0.4``, a rule of 221 dashes (``40 + 1 + 12 * (14 + 1)``), the column
  header (``%40s`` then twelve `` %14s``), the rule, an empty line;
* per lock class, sorted by contentions (descending; ties keep the input order): ``%40s:`` (the
  name, cut to 37 characters as lockdep does), con-bounces ``%14lu `` then contentions ``%14lu``
  and the four wait times `` %14s``, acq-bounces `` %14lu `` then acquisitions ``%14lu`` and the
  four hold times;
* times in microseconds as ``snprint_time`` prints nanoseconds: ``(ns + 5) / 1000`` and two
  decimals of the remainder, so 1,234,567 ns is ``1234.57``; averages are integer ``total / nr``;
* then the contention points (where waiters called the lock: ``waiter_sites``) and the contending
  points (where the holder had taken it: ``holder_sites``), each group under a rule of dashes as
  long as the name, each line ``%40s %14lu %29s %s`` (name, count, ``[<address>]``, call site),
  and after the contending points an empty line, a rule of 221 dots and an empty line.

How aemu's books map onto lock_stat's columns (lock_stat records wait time only for acquisitions
that had to wait, and hold time at release):

* contentions: acquisitions that had to wait (``contended_acquisitions``, lock_stat's
  ``waittime.nr``); waittime-min/max/total/avg are over those waits. The others are exact;
  waittime-min is exact when every acquisition waited, else it comes from the wait histogram
  (:func:`contended_wait_min`: exact below 2048 ns, at most 0.1 % low above);
* acquisitions: ``acquisitions``; the hold times are over completed holds (``hold_ns``);
* con-bounces: every wait (``waits_begun``, lock_stat's ``lock_contended`` events, in-flight
  and cancelled waits included) -- in aemu the waiter is always another vCPU than the holder, so
  every contention moves the lock's data between CPUs;
* acq-bounces: ``contended_acquisitions``, a lower bound (an acquisition after a wait always takes
  the lock from another vCPU; uncontended acquisitions that follow another vCPU's are not tracked);
* a point's ``[<address>]`` is a stable pseudo kernel-text address of the site's name
  (``ffffffff81xxxxxx``) and its symbol is aemu's site label. lock_stat keeps the first 4 points
  it met; aemu shows the ``top_points`` most frequent. Points are printed whenever a lock has any
  (lock_stat prints them only once a contended acquisition completed). Locks never acquired are
  left out, as lock_stat leaves out classes never held.
"""

from __future__ import annotations

import hashlib
import math

from ..errors import ConfigError
from ..sync import HDR_SIGNIFICANT_DIGITS, ContentionPoint, LockStatistics, TimeStats
from .sync_profile import LockSnapshots, as_lock_list

__all__ = ["LOCKSTAT_POINTS", "contended_wait_min", "format_lock_stat", "lock_stat_time", "site_address"]

#: Contention points lock_stat tracks per class (LOCKSTAT_POINTS in include/linux/lockdep_types.h).
LOCKSTAT_POINTS = 4

_WIDTH = 40 + 1 + 12 * (14 + 1)
# Values below this are exact in aemu.sync's HDR histograms (HdrHistogram's sub-bucket count; the
# histograms' lowest discernible value is 1 ns, so buckets above it are 2, 4, 8 ... ns wide).
_SUB_BUCKETS = 1 << math.ceil(math.log2(2 * 10 ** HDR_SIGNIFICANT_DIGITS))
_COLUMNS = ("class name", "con-bounces", "contentions", "waittime-min", "waittime-max", "waittime-total",
            "waittime-avg", "acq-bounces", "acquisitions", "holdtime-min", "holdtime-max",
            "holdtime-total", "holdtime-avg")


def lock_stat_time(ns: int) -> str:
    """lock_stat's ``snprint_time``: nanoseconds as microseconds with two decimals, rounded."""
    whole, rem = divmod(ns + 5, 1000)
    return f"{whole}.{rem // 10:02d}"


def site_address(site: str) -> int:
    """A stable pseudo kernel-text address for a call site (``ffffffff81xxxxxx``)."""
    digest = int.from_bytes(hashlib.blake2b(site.encode(), digest_size=8).digest(), "big")
    return 0xFFFF_FFFF_8100_0000 | (digest & 0xFF_FFFF)


def _lowest_equivalent(value: int) -> int:
    """The lowest value sharing ``value``'s HDR histogram bucket (aemu.sync's histogram layout)."""
    if value < _SUB_BUCKETS:
        return value
    unit = 1 << (value.bit_length() - _SUB_BUCKETS.bit_length() + 1)
    return value - value % unit


def contended_wait_min(st: LockStatistics) -> int:
    """The shortest wait of an acquisition that had to wait (lock_stat's waittime-min), in ns.

    Exact when every acquisition waited (``wait_ns.min``). Otherwise ``wait_ns`` also holds one
    0 ns sample per uncontended acquisition: those are skipped in the histogram and the lowest
    value of the next bucket is taken -- exact below 2048 ns, at most 0.1 % low above.
    """
    w: TimeStats = st.wait_ns
    if st.contended_acquisitions <= 0:
        return 0
    skip = w.count - st.contended_acquisitions
    if skip <= 0:
        return w.min
    for value, n in w.buckets:
        if n > skip:
            return min(_lowest_equivalent(value), w.max)
        skip -= n
    return w.min


def _times(nr: int, lo: int, hi: int, total: int) -> str:
    avg = total // nr if nr else 0
    return f"{nr:14d}" + "".join(f" {lock_stat_time(t):>14}" for t in (lo, hi, total, avg))


def _points(name: str, points: tuple[ContentionPoint, ...], top: int) -> list[str]:
    shown = points[:top]
    if not shown:
        return []
    out = [" " * (40 - len(name)) + "-" * len(name)]
    for p in shown:
        ip = f"[<{site_address(p.site):016x}>]"
        out.append(f"{name:>40} {p.count:14d} {ip:>29} {p.site}")
    return out


def format_lock_stat(locks: LockSnapshots, *,
                     top_points: int = LOCKSTAT_POINTS) -> str:
    """The ``/proc/lock_stat`` text for these lock snapshots (lines end with ``\\n``)."""
    if isinstance(top_points, bool) or not isinstance(top_points, int) or top_points < 0:
        raise ConfigError(f"lock_stat: top_points must be an integer >= 0, got {top_points!r}")
    out = ["lock_stat version 0.4", "-" * _WIDTH,
           f"{_COLUMNS[0]:>40}" + "".join(f" {c:>14}" for c in _COLUMNS[1:]), "-" * _WIDTH, ""]
    used = [st for st in as_lock_list(locks) if st.acquisitions or st.hold_ns.count]
    used.sort(key=lambda st: -st.contended_acquisitions)  # lock_stat_cmp; stable for ties
    for st in used:
        name = st.name[:37]
        hold = st.hold_ns
        out.append(f"{name:>40}:{st.waits_begun:14d} "
                   + _times(st.contended_acquisitions, contended_wait_min(st), st.wait_ns.max, st.wait_ns.total)
                   + f" {st.contended_acquisitions:14d} "
                   + f"{st.acquisitions:14d}"
                   + "".join(f" {lock_stat_time(t):>14}"
                             for t in (hold.min, hold.max, hold.total, hold.total // hold.count if hold.count else 0)))
        out += _points(name, st.waiter_sites, top_points)
        contending = _points(name, st.holder_sites, top_points)
        out += contending
        if contending:
            out += ["", "." * _WIDTH, ""]
    return "\n".join(out) + "\n"

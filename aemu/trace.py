"""Recording what happened when: spans for timelines and busy time for utilisation plots.

A :class:`Tracer` collects spans ``(track, name, start_ns, end_ns)`` -- a vCPU in the guest, in
exit handling, waiting for a lock, holding it; the BQL's holder -- inside an optional virtual-time
window and up to ``max_spans``; beyond that it counts what it dropped and says the trace was
truncated. The core calls it only when one is attached (``lock.tracer``, ``machine.tracer``), so
an untraced run pays one attribute test per event.

:class:`Utilisation` bins the time a lock is unavailable -- held, or handed over to a waiter that
is still waking up -- into virtual-time buckets (cheap enough to be always on for the BQL): the
series behind "BQL utilisation over virtual time". It keeps at most ``max_bins`` buckets: when a
run outgrows them, neighbours merge in pairs and the bucket width doubles, so memory and the
result document stay bounded however long the run (a 300 s idle run as well as a 1 s one).

Both record times relative to ``origin_ns``, the run's start (a real-time loop's clock is the
host's monotonic clock, not 0).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

__all__ = ["MAX_BINS", "Span", "Tracer", "Utilisation"]

#: Most buckets a :class:`Utilisation` keeps (a run that fits keeps its first bucket width).
MAX_BINS = 10_000


@dataclass(frozen=True, slots=True)
class Span:
    """One interval on one track (virtual ns)."""

    track: str
    name: str
    start_ns: int
    end_ns: int


@dataclass(slots=True)
class Tracer:
    """Collects spans within ``[window_start_ns, window_end_ns)``, at most ``max_spans``.

    Times are kept relative to ``origin_ns`` (set to the run's start when the run starts), so a
    window and the timeline read the same on a virtual-time and on a real-time loop.
    """

    window_start_ns: int = 0
    window_end_ns: int | None = None
    max_spans: int = 200_000
    spans: list[tuple[str, str, int, int]] = field(default_factory=list)
    dropped: int = 0
    #: Loop time of the run's start: spans are recorded relative to it.
    origin_ns: int = 0
    #: Instant events ``(track, name, ns)``: the accesses of ``aemu check`` findings.
    instants: list[tuple[str, str, int]] = field(default_factory=list)

    def span(self, track: str, name: str, start_ns: int, end_ns: int) -> None:
        """Record one span (clipped to the window; dropped and counted when full)."""
        start_ns -= self.origin_ns
        end_ns -= self.origin_ns
        if end_ns <= self.window_start_ns or (self.window_end_ns is not None and start_ns >= self.window_end_ns):
            return
        if len(self.spans) >= self.max_spans:
            self.dropped += 1
            return
        if start_ns < self.window_start_ns:
            start_ns = self.window_start_ns
        if self.window_end_ns is not None and end_ns > self.window_end_ns:
            end_ns = self.window_end_ns
        self.spans.append((track, name, start_ns, end_ns))

    def instant(self, track: str, name: str, at_ns: int) -> None:
        """Record an instant event on ``track`` at loop time ``at_ns`` (not windowed, not capped:
        a checker's findings are few)."""
        self.instants.append((track, name, at_ns - self.origin_ns))

    @property
    def truncated(self) -> bool:
        """True when spans were dropped because ``max_spans`` was reached."""
        return self.dropped > 0

    def iter_spans(self) -> list[Span]:
        """The recorded spans as :class:`Span` objects."""
        return [Span(*s) for s in self.spans]


class Utilisation:
    """Busy time of one lock per bucket of virtual time, in at most ``max_bins`` buckets.

    Buckets start ``bin_ns`` wide. A hold that ends beyond the last bucket the limit allows
    merges neighbouring buckets in pairs and doubles ``bin_ns`` (as often as needed); busy time
    is kept in integer ns, so merging loses nothing but resolution.
    """

    __slots__ = ("bin_ns", "busy", "max_bins", "origin_ns")

    def __init__(self, bin_ns: int = 1_000_000, origin_ns: int = 0, *, max_bins: int = MAX_BINS) -> None:
        if bin_ns <= 0:
            raise ValueError(f"bin_ns must be positive, got {bin_ns}")
        if max_bins < 1:
            raise ValueError(f"max_bins must be at least 1, got {max_bins}")
        self.bin_ns = bin_ns
        self.max_bins = max_bins
        #: Busy ns per bucket, from the origin up to the last bucket a hold reached.
        self.busy = array("q")
        #: Times are binned relative to this (a run's start; a real-time loop's clock is not 0).
        self.origin_ns = origin_ns

    def add(self, start_ns: int, end_ns: int) -> None:
        """Add a hold from ``start_ns`` to ``end_ns`` (loop clock), split across buckets."""
        start_ns -= self.origin_ns
        end_ns -= self.origin_ns
        if start_ns < 0:
            start_ns = 0
        if end_ns <= start_ns:
            return
        b = self.bin_ns
        last = (end_ns - 1) // b
        busy = self.busy
        if last >= len(busy):
            if last >= self.max_bins:
                self._fit(end_ns)
                b, busy = self.bin_ns, self.busy
                last = (end_ns - 1) // b
            if last >= len(busy):
                busy.frombytes(bytes(8 * (last + 1 - len(busy))))
        i = start_ns // b
        if i == last:
            busy[i] += end_ns - start_ns
            return
        busy[i] += (i + 1) * b - start_ns
        for j in range(i + 1, last):
            busy[j] += b
        busy[last] += end_ns - last * b

    def _fit(self, end_ns: int) -> None:
        """Merge neighbouring buckets (doubling ``bin_ns``) until ``[0, end_ns)`` fits in ``max_bins``."""
        while (end_ns - 1) // self.bin_ns >= self.max_bins:
            old = self.busy
            n = len(old)
            merged = array("q", old[0::2])
            for k, v in enumerate(old[1::2]):
                merged[k] += v
            self.busy = merged if n else old
            self.bin_ns *= 2

    def series(self, until_ns: int | None = None) -> list[tuple[int, float]]:
        """(bucket start ns, fraction of the bucket the lock was held), for every bucket.

        With ``until_ns`` (relative to the origin) the series covers exactly the buckets up to the
        one holding ``until_ns - 1`` (merging buckets first if that many would exceed
        ``max_bins``): a release booked after the run's end (a real-time run's vCPUs are cancelled
        after its end time is taken) is outside the run.
        """
        if until_ns is None:
            count = len(self.busy)
        else:
            self._fit(until_ns)
            count = max(1, (until_ns - 1) // self.bin_ns + 1)
        b = self.bin_ns
        busy = self.busy
        n = len(busy)
        return [(i * b, (busy[i] if i < n else 0) / b) for i in range(count)]

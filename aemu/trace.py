"""Recording what happened when: spans for timelines and busy time for utilisation plots.

A :class:`Tracer` collects spans ``(track, name, start_ns, end_ns)`` -- a vCPU in the guest, in
exit handling, waiting for a lock, holding it; the BQL's holder -- inside an optional virtual-time
window and up to ``max_spans``; beyond that it counts what it dropped and says the trace was
truncated. The core calls it only when one is attached (``lock.tracer``, ``machine.tracer``), so
an untraced run pays one attribute test per event.

:class:`Utilisation` bins the time a lock is unavailable -- held, or handed over to a waiter that
is still waking up -- into fixed virtual-time buckets (cheap enough to be always on for the BQL):
the series behind "BQL utilisation over virtual time".
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Span", "Tracer", "Utilisation"]


@dataclass(frozen=True, slots=True)
class Span:
    """One interval on one track (virtual ns)."""

    track: str
    name: str
    start_ns: int
    end_ns: int


@dataclass(slots=True)
class Tracer:
    """Collects spans within ``[window_start_ns, window_end_ns)``, at most ``max_spans``."""

    window_start_ns: int = 0
    window_end_ns: int | None = None
    max_spans: int = 200_000
    spans: list[tuple[str, str, int, int]] = field(default_factory=list)
    dropped: int = 0

    def span(self, track: str, name: str, start_ns: int, end_ns: int) -> None:
        """Record one span (clipped to the window; dropped and counted when full)."""
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

    @property
    def truncated(self) -> bool:
        """True when spans were dropped because ``max_spans`` was reached."""
        return self.dropped > 0

    def iter_spans(self) -> list[Span]:
        """The recorded spans as :class:`Span` objects."""
        return [Span(*s) for s in self.spans]


class Utilisation:
    """Hold time of one lock per ``bin_ns`` bucket of virtual time."""

    __slots__ = ("bin_ns", "busy", "origin_ns")

    def __init__(self, bin_ns: int = 1_000_000, origin_ns: int = 0) -> None:
        if bin_ns <= 0:
            raise ValueError(f"bin_ns must be positive, got {bin_ns}")
        self.bin_ns = bin_ns
        self.busy: dict[int, int] = {}
        #: Times are binned relative to this (a run's start; a real-time loop's clock is not 0).
        self.origin_ns = origin_ns

    def add(self, start_ns: int, end_ns: int) -> None:
        """Add a hold from ``start_ns`` to ``end_ns`` (loop clock), split across buckets."""
        start_ns -= self.origin_ns
        end_ns -= self.origin_ns
        if start_ns < 0:
            start_ns = 0
        b = self.bin_ns
        busy = self.busy
        while start_ns < end_ns:
            i = start_ns // b
            edge = (i + 1) * b
            stop = end_ns if end_ns < edge else edge
            busy[i] = busy.get(i, 0) + stop - start_ns
            start_ns = stop

    def series(self, until_ns: int | None = None) -> list[tuple[int, float]]:
        """(bucket start ns, fraction of the bucket the lock was held), for every bucket."""
        if not self.busy and until_ns is None:
            return []
        last = max(self.busy, default=0)
        if until_ns is not None:
            last = max(last, (until_ns - 1) // self.bin_ns)
        return [(i * self.bin_ns, self.busy.get(i, 0) / self.bin_ns) for i in range(last + 1)]

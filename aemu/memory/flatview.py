"""FlatView: a root region rendered into sorted, disjoint ranges (QEMU's ``generate_memory_topology``).

:func:`render` follows ``render_memory_region`` (higher priority wins, later-added wins ties,
aliases resolve, disabled regions vanish) and merges neighbours as ``flatview_simplify`` does.
:meth:`FlatView.lookup` is ``flatview_lookup`` (a bisect over the range starts) and
:meth:`FlatView.pieces` cuts an access that spans ranges as ``flatview_read_continue`` does.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, NamedTuple

from .region import _ROM, MemoryRegion

__all__ = ["FlatRange", "FlatView", "flatview_root", "render"]


class FlatRange(NamedTuple):
    """One range of a FlatView: ``[start, end)`` maps to ``region`` from ``offset_in_region``."""

    start: int
    end: int
    region: MemoryRegion
    offset_in_region: int


class FlatView:
    """The ranges an address space dispatches to, sorted by start."""

    __slots__ = ("ranges", "starts", "limit")

    def __init__(self, ranges: list[FlatRange], limit: int) -> None:
        self.ranges = ranges
        self.starts = [fr.start for fr in ranges]
        self.limit = limit

    def lookup(self, addr: int) -> FlatRange | None:
        """The range holding ``addr``, or None for a hole (``flatview_lookup``)."""
        i = bisect_right(self.starts, addr) - 1
        if i >= 0:
            fr = self.ranges[i]
            if addr < fr.end:
                return fr
        return None

    def pieces(self, addr: int, size: int) -> list[tuple[int, int, FlatRange | None]]:
        """``[addr, addr+size)`` as power-of-two pieces ``(addr, size, range or None)``, each in one region.

        As QEMU (``address_space_translate_internal``: ``mr->size - addr``), a piece is limited by
        the end of the *region* it starts in, not of the FlatRange: an access that runs into a
        higher-priority overlap still goes whole to the region it started in.
        """
        pieces: list[tuple[int, int, FlatRange | None]] = []
        ranges, starts = self.ranges, self.starts
        done = 0
        while done < size:
            a = addr + done
            i = bisect_right(starts, a) - 1
            fr: FlatRange | None = ranges[i] if i >= 0 else None
            if fr is not None and a < fr.end:
                avail = fr.start - fr.offset_in_region + fr.region._size - a
            else:
                fr = None
                avail = (starts[i + 1] if i + 1 < len(starts) else self.limit) - a
            n = min(size - done, avail)
            n = 1 << (n.bit_length() - 1)  # pow2floor
            pieces.append((a, n, fr))
            done += n
        return pieces


def render(root: MemoryRegion, limit: int) -> FlatView:
    """``generate_memory_topology``: render ``root`` into ``[0, limit)``, merge neighbours."""
    view: list[list[Any]] = []
    _render_memory_region(view, root, 0, 0, limit)
    merged: list[FlatRange] = []
    for start, end, mr, off in view:
        if merged:
            last = merged[-1]
            if last.end == start and last.region is mr and last.offset_in_region + (last.end - last.start) == off:
                merged[-1] = FlatRange(last.start, end, mr, last.offset_in_region)
                continue
        merged.append(FlatRange(start, end, mr, off))
    return FlatView(merged, limit)

def _render_memory_region(view: list[list[Any]], mr: MemoryRegion, base: int, clip_start: int, clip_end: int) -> None:
    """QEMU's ``render_memory_region``: ranges already in ``view`` obscure ``mr``.

    Subregions are rendered first, in list order (priority descending, later-added first), so the
    winner claims its addresses before the others; a terminating region then fills the gaps left.
    """
    if not mr._enabled:
        return
    base += mr._addr
    start = base
    end = base + mr._size
    if not (start < clip_end and clip_start < end):
        return
    if start > clip_start:
        clip_start = start
    if end < clip_end:
        clip_end = end
    alias = mr._alias
    if alias is not None:
        _render_memory_region(view, alias, base - alias._addr - mr._alias_offset, clip_start, clip_end)
        return
    for sub in mr._subregions:
        _render_memory_region(view, sub, base, clip_start, clip_end)
    if mr._kind > _ROM:  # containers do not terminate: where no child maps is a hole
        return
    offset = clip_start - base
    b = clip_start
    remain = clip_end - clip_start
    i = 0
    while i < len(view) and remain:
        fr_start, fr_end = view[i][0], view[i][1]
        if b >= fr_end:
            i += 1
            continue
        if b < fr_start:
            now = min(remain, fr_start - b)
            view.insert(i, [b, b + now, mr, offset])
            i += 1
            b += now
            offset += now
            remain -= now
        now = min(b + remain, fr_end) - b
        b += now
        offset += now
        remain -= now
        i += 1
    if remain:
        view.insert(i, [b, b + remain, mr, offset])


def flatview_root(mr: MemoryRegion | None) -> MemoryRegion | None:
    """QEMU's ``memory_region_get_flatview_root``: the region the FlatView is really rendered from."""
    while mr is not None and mr._enabled:
        alias = mr._alias
        if alias is not None:
            if not mr._alias_offset and mr._size >= alias._size:
                mr = alias
                continue
        elif not mr.terminates:
            found = 0
            nxt: MemoryRegion | None = None
            for child in mr._subregions:
                if child._enabled:
                    found += 1
                    if found > 1:
                        nxt = None
                        break
                    if not child._addr and mr._size >= child._size:
                        nxt = child
            if found == 0:
                return None
            if nxt is not None:
                mr = nxt
                continue
        return mr
    return None


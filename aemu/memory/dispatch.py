"""One guest access, resolved once: QEMU's ``prepare_mmio_access`` and ``memory_region_dispatch_*``.

:meth:`AddressSpace.access <aemu.memory.space.AddressSpace.access>` resolves ``(addr, size)``
against the current FlatView into a :class:`MemoryAccess` (cached until the FlatView is
re-rendered). Every access offers the same four calls:

* ``read_nowait()`` / ``write_nowait(value)`` complete the access synchronously when no lock is
  needed -- RAM and ROM, errors, a lockless region, a caller that already holds the BQL -- and
  return None ("would wait"), having done nothing, when it needs the BQL or a coroutine handler;
* ``await read()`` / ``await write(value)`` are the full path: :func:`prepare_mmio_access`
  takes the BQL for a region that is not lockless, then the region's ops run.

So a caller that never holds a lock (a vCPU after an exit) writes ``r = acc.read_nowait()`` and,
if that is None, ``r = await acc.read()``; the BQL is decided in :func:`prepare_mmio_access`
alone. The kinds of access are small classes: :class:`IOAccess` (one I/O region),
:class:`DirectAccess` (RAM/ROM), :class:`UnassignedAccess` (a hole or an address outside the
space), :class:`InvalidAccess` (a size or alignment the region's ops refuse, or no access size
at all) and :class:`SplitAccess` (an access that spans regions, cut into pieces).
"""

from __future__ import annotations

import abc
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..sync import bql_locked
from .region import _IO, _MASK, _RAM, _SIZES, MemoryRegion, MemoryRegionOps, MemTxResult

if TYPE_CHECKING:
    from .space import AddressSpace

__all__ = [
    "DirectAccess", "IOAccess", "InvalidAccess", "MemoryAccess", "SplitAccess", "UnassignedAccess",
    "prepare_mmio_access", "resolve",
]

_OK = MemTxResult.OK
_DECODE_ERROR = MemTxResult.DECODE_ERROR
_ACCESS_ERROR = MemTxResult.ACCESS_ERROR


async def prepare_mmio_access(space: AddressSpace, mr: MemoryRegion, site: str) -> bool:
    """QEMU's ``prepare_mmio_access()`` (system/physmem.c, after the lockless-I/O series).

    Takes ``space.bql`` when the current task does not hold the BQL (``bql_locked()``) and the
    region is not lockless, then flushes coalesced MMIO if the region asks for it (aemu counts the
    flush). Returns True when the caller must release the BQL after dispatch. Does not yield
    unless the BQL is held by another task.
    """
    release_lock = False
    if not mr.lockless_io and not bql_locked():
        await space.bql.acquire(site)
        release_lock = True
    if mr.flush_coalesced_mmio:
        space.coalesced_mmio_flushes += 1
    return release_lock


class MemoryAccess(abc.ABC):
    """A ``size``-byte access at ``addr`` of one address space, resolved (see the module docstring).

    ``name`` is the region at ``addr`` (``"unassigned"`` for a hole): what per-region accounting
    files the access under.
    """

    __slots__ = ("space", "addr", "size", "name")

    def __init__(self, space: AddressSpace, addr: int, size: int, name: str) -> None:
        self.space = space
        self.addr = addr
        self.size = size
        self.name = name

    @abc.abstractmethod
    def read_nowait(self) -> tuple[int, MemTxResult] | None:
        """``(value, result)`` if the read needs no lock and no await; else None, nothing done."""

    @abc.abstractmethod
    def write_nowait(self, value: int) -> MemTxResult | None:
        """The result if the write needs no lock and no await; else None, nothing done."""

    async def read(self) -> tuple[int, MemTxResult]:
        """The full read (``address_space_read``): may wait for the BQL or a coroutine handler."""
        return self.read_nowait()  # type: ignore[return-value]  # kinds that never wait

    async def write(self, value: int) -> MemTxResult:
        """The full write (``address_space_write``)."""
        return self.write_nowait(value)  # type: ignore[return-value]  # kinds that never wait

    def completes_now(self, is_write: bool) -> bool:
        """Whether ``*_nowait`` would complete (for split accesses, which must not half-happen)."""
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.space.name} {self.addr:#x}/{self.size} {self.name}>"


class UnassignedAccess(MemoryAccess):
    """Nothing is mapped there, or the access leaves the space: ``MEMTX_DECODE_ERROR``, all-ones."""

    __slots__ = ()

    def read_nowait(self) -> tuple[int, MemTxResult]:
        self.space.decode_errors += 1
        return _MASK[self.size], _DECODE_ERROR

    def write_nowait(self, value: int) -> MemTxResult:
        self.space.decode_errors += 1
        return _DECODE_ERROR


class InvalidAccess(MemoryAccess):
    """A size or alignment the region's ``valid`` limits refuse (or no access size at all):
    ``MEMTX_ACCESS_ERROR``, all-ones, and no lock taken."""

    __slots__ = ("region",)

    def __init__(self, space: AddressSpace, addr: int, size: int, name: str, region: MemoryRegion | None) -> None:
        super().__init__(space, addr, size, name)
        self.region = region

    def read_nowait(self) -> tuple[int, MemTxResult]:
        self._count()
        size = self.size
        if self.region is None:  # not an access size
            return (_MASK[min(max(size, 0), 8)] if isinstance(size, int) else 0), _ACCESS_ERROR
        return _MASK[size], _ACCESS_ERROR

    def write_nowait(self, value: int) -> MemTxResult:
        self._count()
        return _ACCESS_ERROR

    def _count(self) -> None:
        if self.region is not None:
            self.region.access_errors += 1
        self.space.access_errors += 1


class DirectAccess(MemoryAccess):
    """RAM or ROM: read and written directly, never the BQL (``memory_access_is_direct``).

    Writes to ROM are not direct; its ops are QEMU's ``unassigned_mem_ops``: a decode error."""

    __slots__ = ("region", "offset")

    def __init__(self, space: AddressSpace, addr: int, size: int, region: MemoryRegion, offset: int) -> None:
        super().__init__(space, addr, size, region.name)
        self.region = region
        self.offset = offset

    def read_nowait(self) -> tuple[int, MemTxResult]:
        mr, off = self.region, self.offset
        mr.reads += 1
        return int.from_bytes(mr.ram_block[off: off + self.size], "little"), _OK  # type: ignore[index]

    def write_nowait(self, value: int) -> MemTxResult:
        mr = self.region
        if mr._kind == _RAM:
            off, size = self.offset, self.size
            mr.ram_block[off: off + size] = (value & _MASK[size]).to_bytes(size, "little")  # type: ignore[index]
            mr.writes += 1
            return _OK
        self.space.decode_errors += 1
        return _DECODE_ERROR


class IOAccess(MemoryAccess):
    """An access inside one I/O region, within its ``valid`` limits (``memory_region_dispatch_*``).

    Dispatch splits or widens to the ops' ``impl`` sizes (``access_with_adjusted_size``) and sets
    the owner's re-entrancy guard around the handler (off for lockless regions, as in QEMU).
    """

    __slots__ = ("region", "offset", "ops", "mask", "implemented", "_read_fast")

    def __init__(self, space: AddressSpace, addr: int, size: int, region: MemoryRegion, offset: int) -> None:
        super().__init__(space, addr, size, region.name)
        self.region = region
        self.offset = offset
        self.ops: MemoryRegionOps = region.ops  # type: ignore[assignment]
        self.mask = _MASK[size]
        #: the handlers implement this size as is (no split, no widening)
        self.implemented = size in self.ops._impl_sizes
        #: a coroutine read's no-await variant, when the ops have one and the size needs no adjusting
        self._read_fast = self.ops.read_nowait if self.ops.read_is_coroutine and self.implemented else None

    def completes_now(self, is_write: bool) -> bool:
        ops = self.ops
        if ops.write_is_coroutine if is_write else ops.read_is_coroutine:
            return False
        return self.region.lockless_io or bql_locked()

    # -- no await ------------------------------------------------------------------------------
    def read_nowait(self) -> tuple[int, MemTxResult] | None:
        mr = self.region
        fast = self._read_fast
        if fast is not None:
            # a device may serve some registers of a lockless region without awaiting (the HPET
            # counter, the PM timer): ``ops.read_nowait`` gives the value or None
            if not mr.lockless_io:
                return None
            v = fast(self.offset, self.size)
            if v is None:
                return None
            mr.reads += 1
            return v & self.mask, _OK
        if self.ops.read_is_coroutine or (not mr.lockless_io and not bql_locked()):
            return None  # a coroutine handler, or prepare_mmio_access would take the BQL
        if mr.flush_coalesced_mmio:
            self.space.coalesced_mmio_flushes += 1
        return self._read_plain()

    def write_nowait(self, value: int) -> MemTxResult | None:
        mr = self.region
        if self.ops.write_is_coroutine or (not mr.lockless_io and not bql_locked()):
            return None
        if mr.flush_coalesced_mmio:
            self.space.coalesced_mmio_flushes += 1
        return self._write_plain(value)

    # -- the full path ---------------------------------------------------------------------------
    def read(self) -> Coroutine[Any, Any, tuple[int, MemTxResult]]:
        return self._dispatch(None)  # the caller awaits the dispatch itself: no frame in between

    async def write(self, value: int) -> MemTxResult:
        return (await self._dispatch(value))[1]

    async def _dispatch(self, value: int | None) -> tuple[int, MemTxResult]:
        """A read (``value`` None) or a write: :func:`prepare_mmio_access` unless the region is
        lockless, then the region's ops inside the owner's re-entrancy guard; ``(value read, result)``."""
        mr = self.region
        space = self.space
        is_write = value is not None
        release_lock = False
        if mr.lockless_io:
            if mr.flush_coalesced_mmio:
                space.coalesced_mmio_flushes += 1
        else:
            release_lock = await prepare_mmio_access(space, mr, mr._write_site if is_write else mr._read_site)
        try:
            ops = self.ops
            if is_write:
                if not ops.write_is_coroutine:
                    return 0, self._write_plain(value)  # type: ignore[arg-type]
            elif not ops.read_is_coroutine:
                return self._read_plain()
            guard = mr._guard
            guarded = guard is not None and not mr.disable_reentrancy_guard
            if guarded:
                if guard.engaged_in_io:  # type: ignore[union-attr]
                    return self._blocked(), _ACCESS_ERROR
                guard.engaged_in_io = True  # type: ignore[union-attr]
            try:
                off, size = self.offset, self.size
                if is_write:
                    await _write_adjusted_async(ops, off, value, size)  # type: ignore[arg-type]
                    mr.writes += 1
                    return 0, _OK
                if self.implemented:
                    read = await ops._read(off, size) & self.mask
                else:
                    read = await _read_adjusted_async(ops, off, size)
                mr.reads += 1
                return read, _OK
            finally:
                if guarded:
                    guard.engaged_in_io = False  # type: ignore[union-attr]
        finally:
            if release_lock:
                space.bql.release()

    # -- plain handlers, inside the re-entrancy guard ------------------------------------------
    def _read_plain(self) -> tuple[int, MemTxResult]:
        mr = self.region
        ops, off, size = self.ops, self.offset, self.size
        guard = mr._guard
        if guard is None or mr.disable_reentrancy_guard:
            value = ops._read(off, size) & self.mask if self.implemented else _read_adjusted(ops, off, size)
        else:
            if guard.engaged_in_io:
                return self._blocked(), _ACCESS_ERROR
            guard.engaged_in_io = True
            try:
                value = ops._read(off, size) & self.mask if self.implemented else _read_adjusted(ops, off, size)
            finally:
                guard.engaged_in_io = False
        mr.reads += 1
        return value, _OK

    def _write_plain(self, value: int) -> MemTxResult:
        mr = self.region
        ops, off, size = self.ops, self.offset, self.size
        guard = mr._guard
        if guard is None or mr.disable_reentrancy_guard:
            if self.implemented:
                ops._write(off, value & self.mask, size)
            else:
                _write_adjusted(ops, off, value, size)
        else:
            if guard.engaged_in_io:
                self._blocked()
                return _ACCESS_ERROR
            guard.engaged_in_io = True
            try:
                if self.implemented:
                    ops._write(off, value & self.mask, size)
                else:
                    _write_adjusted(ops, off, value, size)
            finally:
                guard.engaged_in_io = False
        mr.writes += 1
        return _OK

    def _blocked(self) -> int:
        """Record QEMU's re-entrancy warning; returns the all-ones value of a blocked read."""
        mr, space = self.region, self.space
        mr.access_errors += 1
        space.access_errors += 1
        space.blocked_reentrant_io += 1
        if len(space.blocked_messages) < space.MAX_BLOCKED_MESSAGES:
            # access_with_adjusted_size: "%s at addr: 0x%" HWADDR_PRIX (upper-case hex)
            space.blocked_messages.append(
                f"Blocked re-entrant IO on MemoryRegion: {mr.name} at addr: 0x{self.offset:X}")
        return self.mask


class SplitAccess(MemoryAccess):
    """An access that spans regions (``flatview_read_continue``): power-of-two pieces, each
    dispatched on its own (each through :func:`prepare_mmio_access` when it needs the BQL).

    The no-await forms complete only if every piece would; otherwise none is started."""

    __slots__ = ("pieces",)

    def __init__(self, space: AddressSpace, addr: int, size: int, name: str,
                 pieces: list[tuple[int, MemoryAccess]]) -> None:
        super().__init__(space, addr, size, name)
        #: (byte shift in the value, the piece's access)
        self.pieces = pieces

    def completes_now(self, is_write: bool) -> bool:
        return all(p.completes_now(is_write) for _shift, p in self.pieces)

    def read_nowait(self) -> tuple[int, MemTxResult] | None:
        if not self.completes_now(False):
            return None
        value, result = 0, _OK
        for shift, p in self.pieces:
            v, r = p.read_nowait()  # type: ignore[misc]
            value |= v << shift
            result |= r
        return value, MemTxResult(result)

    def write_nowait(self, value: int) -> MemTxResult | None:
        if not self.completes_now(True):
            return None
        result = _OK
        for shift, p in self.pieces:
            result |= p.write_nowait((value >> shift) & _MASK[p.size])  # type: ignore[operator]
        return MemTxResult(result)

    async def read(self) -> tuple[int, MemTxResult]:
        value, result = 0, _OK
        for shift, p in self.pieces:
            r = p.read_nowait()
            if r is None:
                r = await p.read()
            value |= r[0] << shift
            result |= r[1]
        return value, MemTxResult(result)

    async def write(self, value: int) -> MemTxResult:
        result = _OK
        for shift, p in self.pieces:
            piece = (value >> shift) & _MASK[p.size]
            r = p.write_nowait(piece)
            if r is None:
                r = await p.write(piece)
            result |= r
        return MemTxResult(result)


def resolve(space: AddressSpace, addr: int, size: int) -> MemoryAccess:
    """``address_space_translate`` for one access: the :class:`MemoryAccess` that serves it.

    The caller has rendered the space's FlatView.
    """
    view = space.view
    fr = view.lookup(addr) if isinstance(addr, int) and 0 <= addr < space.limit else None
    name = fr.region.name if fr is not None else "unassigned"
    if size not in _SIZES:
        return InvalidAccess(space, addr, size, name, None)
    if addr < 0 or addr + size > space.limit:
        return UnassignedAccess(space, addr, size, name)
    if fr is not None and addr + size <= fr.end:
        return _section(space, addr, size, fr.region, addr - fr.start + fr.offset_in_region)
    pieces = view.pieces(addr, size)
    if len(pieces) == 1:
        a, n, piece = pieces[0]
        if piece is None:
            return UnassignedAccess(space, addr, size, name)
        return _section(space, addr, size, piece.region, addr - piece.start + piece.offset_in_region)
    parts: list[tuple[int, MemoryAccess]] = []
    for a, n, piece in pieces:
        if piece is None:
            part: MemoryAccess = UnassignedAccess(space, a, n, "unassigned")
        else:
            part = _section(space, a, n, piece.region, a - piece.start + piece.offset_in_region)
        parts.append((8 * (a - addr), part))
    return SplitAccess(space, addr, size, name, parts)


def _section(space: AddressSpace, addr: int, size: int, mr: MemoryRegion, off: int) -> MemoryAccess:
    """The access of ``size`` bytes at offset ``off`` of the terminating region ``mr``."""
    if mr._kind != _IO:
        return DirectAccess(space, addr, size, mr, off)
    ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
    if size not in ops._valid_sizes or (off & (size - 1) and not ops.valid_unaligned):
        return InvalidAccess(space, addr, size, mr.name, mr)
    return IOAccess(space, addr, size, mr, off)


# -- access_with_adjusted_size ---------------------------------------------------------------------

def _read_adjusted(ops: MemoryRegionOps, off: int, size: int) -> int:
    """Split into / widen to ``impl``-sized reads, assembled little-endian (``access_with_adjusted_size``).

    As QEMU, a widened read is issued at the same (unaligned) offset and its low bytes are kept.
    """
    access_size = max(min(size, ops.impl_max), ops.impl_min)
    mask = _MASK[access_size]
    read = ops._read
    value = 0
    for i in range(0, size, access_size):
        value |= (read(off + i, access_size) & mask) << (8 * i)
    return value & _MASK[size]


def _write_adjusted(ops: MemoryRegionOps, off: int, value: int, size: int) -> None:
    """Split into / widen to ``impl``-sized writes (a widened write carries the value zero-extended)."""
    access_size = max(min(size, ops.impl_max), ops.impl_min)
    mask = _MASK[access_size]
    write = ops._write
    value &= _MASK[size]
    for i in range(0, size, access_size):
        write(off + i, (value >> (8 * i)) & mask, access_size)


async def _read_adjusted_async(ops: MemoryRegionOps, off: int, size: int) -> int:
    access_size = max(min(size, ops.impl_max), ops.impl_min)
    mask = _MASK[access_size]
    read = ops._read
    value = 0
    for i in range(0, size, access_size):
        value |= (await read(off + i, access_size) & mask) << (8 * i)
    return value & _MASK[size]


async def _write_adjusted_async(ops: MemoryRegionOps, off: int, value: int, size: int) -> None:
    access_size = max(min(size, ops.impl_max), ops.impl_min)
    mask = _MASK[access_size]
    write = ops._write
    value &= _MASK[size]
    for i in range(0, size, access_size):
        await write(off + i, (value >> (8 * i)) & mask, access_size)

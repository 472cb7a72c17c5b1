"""AddressSpace: a root region seen through its FlatView, and the one entry point of dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping

from ..errors import AddressOutOfRangeError, ConfigError, InvalidSizeError
from ..sync import Lock
from .dispatch import MemoryAccess, resolve
from .flatview import FlatRange, FlatView, render
from .region import _SIZES, MemoryRegion, MemTxResult

__all__ = ["AddressSpace", "AddressSpaceStatistics"]


@dataclass(frozen=True, slots=True)
class AddressSpaceStatistics:
    """A snapshot of one address space's counters."""

    name: str
    decode_errors: int
    access_errors: int
    blocked_reentrant_io: int
    coalesced_mmio_flushes: int
    render_count: int


class AddressSpace:
    """QEMU's ``AddressSpace``: a root region seen through its FlatView, and dispatch into it.

    ``AddressSpace("memory", system)`` is the 64-bit memory space, ``AddressSpace("I/O", io,
    width_bits=16)`` the port space 0..0xffff. A machine passes one shared BQL to both; without one
    a space creates ``Lock("BQL", bql=True)``.

    :meth:`access` resolves ``(addr, size)`` once into a :class:`~aemu.memory.dispatch.MemoryAccess`
    (cached until the next render); :meth:`read`, :meth:`write` and their ``_nowait`` forms are
    that access's calls.
    """

    __slots__ = (
        "name",
        "root",
        "bql",
        "width_bits",
        "limit",
        "view",
        "render_count",
        "decode_errors",
        "access_errors",
        "blocked_reentrant_io",
        "blocked_messages",
        "coalesced_mmio_flushes",
        "_dirty",
        "_accesses",
    )

    #: how many blocked re-entrant I/O messages are kept (the count goes on)
    MAX_BLOCKED_MESSAGES = 1000
    #: resolved accesses kept per space; past this the cache starts again (a guest sweeping RAM)
    MAX_CACHED_ACCESSES = 1 << 16

    def __init__(self, name: str, root: MemoryRegion, *, bql: Lock | None = None, width_bits: int = 64) -> None:
        if not isinstance(root, MemoryRegion):
            raise TypeError(f"address space {name!r} needs a root MemoryRegion, got {root!r}")
        if isinstance(width_bits, bool) or not isinstance(width_bits, int) or not 1 <= width_bits <= 64:
            raise ConfigError(f"address space {name!r}: width_bits={width_bits!r}; use 1..64 (16 for I/O ports)")
        self.name = name
        self.root = root
        self.bql: Lock = bql if bql is not None else Lock("BQL", bql=True)
        self.width_bits = width_bits
        self.limit = 1 << width_bits
        if root._size > self.limit:
            raise InvalidSizeError(
                f"root {root.name!r} of size {root._size:#x} does not fit in the {width_bits}-bit "
                f"address space {name!r} ({self.limit:#x} bytes)"
            )
        if root._addr + root._size > self.limit:
            raise AddressOutOfRangeError(
                f"root {root.name!r} at {root._addr:#x} ends at {root._addr + root._size:#x}, beyond the "
                f"end of address space {name!r} ({self.limit:#x})"
            )
        self.render_count = 0
        self.decode_errors = 0
        self.access_errors = 0
        self.blocked_reentrant_io = 0
        self.blocked_messages: list[str] = []
        self.coalesced_mmio_flushes = 0
        #: ``addr << 4 | size`` -> the resolved access; emptied when the FlatView changes
        self._accesses: dict[int, MemoryAccess] = {}
        root._spaces.append(self)
        self._render()

    # -- the FlatView ------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """The topology changed: the FlatView is re-rendered at the next access, and the accesses
        resolved against the old one are dropped now (so :attr:`resolved` never holds a stale one)."""
        self._dirty = True
        self._accesses.clear()

    @property
    def resolved(self) -> Mapping[int, MemoryAccess]:
        """The accesses resolved against the current FlatView, by ``addr << 4 | size``: a hit is
        what :meth:`access` would return; on a miss, call :meth:`access`. The vCPU's exit path
        looks here first, with one dict lookup (the same dict, emptied on every change)."""
        return self._accesses

    def _render(self) -> None:
        """``generate_memory_topology``: a new FlatView; resolved accesses are dropped with the old one."""
        self.view: FlatView = render(self.root, self.limit)
        self._dirty = False
        self.render_count += 1
        self._accesses.clear()

    def flatview(self) -> list[FlatRange]:
        """The current FlatView: sorted, disjoint ``(start, end_exclusive, region, offset_in_region)``."""
        if self._dirty:
            self._render()
        return list(self.view.ranges)

    def translate(self, addr: int) -> tuple[MemoryRegion, int] | None:
        """The region and offset that ``addr`` dispatches to, or None for a hole (``address_space_translate``)."""
        if not 0 <= addr < self.limit:
            raise AddressOutOfRangeError(
                f"address {addr:#x} is outside address space {self.name!r} [0, {self.limit:#x})"
            )
        if self._dirty:
            self._render()
        fr = self.view.lookup(addr)
        return (fr.region, addr - fr.start + fr.offset_in_region) if fr is not None else None

    # -- dispatch ------------------------------------------------------------------------------------
    def access(self, addr: int, size: int) -> MemoryAccess:
        """The access of ``size`` bytes at ``addr``, resolved against the current FlatView.

        Cached by ``addr << 4 | size`` for access sizes (1, 2, 4, 8) at non-negative integer
        addresses until the next render; anything else is resolved every time.
        """
        try:
            return self._accesses[addr << 4 | size]  # emptied whenever the FlatView changes
        except (KeyError, TypeError):
            return self._resolve(addr, size)

    def _resolve(self, addr: int, size: int) -> MemoryAccess:
        if self._dirty:
            self._render()
        acc = resolve(self, addr, size)
        if size in _SIZES and addr.__class__ is int and size.__class__ is int and addr >= 0:
            cache = self._accesses
            if len(cache) >= self.MAX_CACHED_ACCESSES:
                cache.clear()
            cache[addr << 4 | size] = acc
        return acc

    def read_nowait(self, addr: int, size: int) -> tuple[int, MemTxResult] | None:
        """Read synchronously if no lock and no await is needed; else None, having done nothing."""
        return self.access(addr, size).read_nowait()

    def write_nowait(self, addr: int, value: int, size: int) -> MemTxResult | None:
        """Write synchronously if no lock and no await is needed; else None, having done nothing."""
        return self.access(addr, size).write_nowait(value)

    async def read(self, addr: int, size: int) -> tuple[int, MemTxResult]:
        """Read ``size`` bytes at ``addr``: ``(value, result)`` (``address_space_read``).

        Does not yield to the event loop unless it waits for the BQL or a coroutine handler suspends.
        """
        acc = self.access(addr, size)
        r = acc.read_nowait()
        return r if r is not None else await acc.read()

    async def write(self, addr: int, value: int, size: int) -> MemTxResult:
        """Write the low ``size`` bytes of ``value`` at ``addr`` (``address_space_write``)."""
        acc = self.access(addr, size)
        r = acc.write_nowait(value)
        return r if r is not None else await acc.write(value)

    # -- reports -----------------------------------------------------------------------------------
    def statistics(self) -> AddressSpaceStatistics:
        """A snapshot of this space's counters."""
        return AddressSpaceStatistics(
            self.name,
            self.decode_errors,
            self.access_errors,
            self.blocked_reentrant_io,
            self.coalesced_mmio_flushes,
            self.render_count,
        )

    def mtree(self, *, flat: bool = False, disabled: bool = False) -> str:
        """``info mtree`` for this space alone (see :func:`~aemu.memory.mtree.mtree_text`)."""
        from .mtree import mtree_text

        return mtree_text(self, flat=flat, disabled=disabled)

    def __repr__(self) -> str:
        return (
            f"<AddressSpace {self.name!r} root={self.root.name!r} {self.width_bits}-bit, "
            f"{len(self.view.ranges)} flat ranges{' (stale)' if self._dirty else ''}>"
        )

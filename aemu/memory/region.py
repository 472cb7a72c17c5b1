"""QEMU's memory API: MemoryRegion, AddressSpace, FlatView, dispatch under the BQL, ``info mtree``.

Models ``system/memory.c`` and the dispatch half of ``system/physmem.c`` as they are after the
BQL-free PIO/MMIO series (QEMU 10.2):

* A :class:`MemoryRegion` is an I/O region (callbacks in :class:`MemoryRegionOps`), RAM, ROM, a
  container, or an alias (a window onto another region). Subregions are placed at an offset with
  a priority; ``enabled`` can be toggled; ``lockless_io`` (set by :meth:`MemoryRegion.enable_lockless_io`,
  QEMU's ``memory_region_enable_lockless_io()``) lets dispatch skip the BQL.
* An :class:`AddressSpace` renders its root into a FlatView once, and again only after the topology
  under the root changed (``render_memory_region`` / ``generate_memory_topology``); lookups are a
  bisect over the sorted range starts.
* :meth:`AddressSpace.read` / :meth:`AddressSpace.write` follow ``flatview_read_continue`` /
  ``flatview_write_continue``: :func:`prepare_mmio_access` takes the BQL unless the caller holds it
  or the region is lockless, then ``memory_region_dispatch_read/write`` checks the access against
  the ops' ``valid`` limits, applies the per-device re-entrancy guard and splits or widens the
  access to the ops' ``impl`` limits (``access_with_adjusted_size``). RAM and ROM reads are direct
  and never take the BQL.
* :meth:`AddressSpace.read_nowait` / :meth:`AddressSpace.write_nowait` run the same dispatch
  synchronously when nothing has to wait (plain handler, and a lockless region, the BQL already
  held or free; RAM; errors) and return None otherwise; ``read``/``write`` start with them, so a
  lockless access never yields to the event loop.
* :func:`mtree_text` prints ``info mtree`` (and ``info mtree -f``) in QEMU 7.2's format.

Run-time guest mistakes are results (:class:`MemTxResult`), never exceptions; layout mistakes
raise the :mod:`aemu.errors` layout errors when the layout is built.

Where aemu differs from QEMU (on purpose, to keep one simple rule per case):

* A failed read (decode error, invalid access, blocked re-entrant access) returns all-ones of the
  access size. QEMU returns 0 from ``unassigned_mem_read`` for those; all-ones is what a PC guest
  sees from an absent device (QEMU's q35 I/O space gets it from the ``io`` root region, whose
  ``unassigned_io_ops`` read -1 with MEMTX_OK, and aemu renders that the same way if the root is
  an I/O region).
* An access whose size is outside the region's ``valid`` limits (or unaligned without
  ``valid_unaligned``) returns ``ACCESS_ERROR`` and takes no lock; QEMU's
  ``memory_region_dispatch_read`` returns ``MEMTX_DECODE_ERROR`` after taking the BQL. An access
  that hits no region takes no lock either (QEMU dispatches it to ``io_mem_unassigned`` under the
  BQL).
* An access that spans FlatRanges is split at their boundaries into power-of-two pieces, each
  dispatched on its own; QEMU's ``memory_access_size`` also cuts pieces to the region's
  ``valid_max`` and alignment, which aemu leaves to ``valid`` (rejected) and ``impl`` (split).
* Writes to ROM are dropped with ``DECODE_ERROR`` without taking the BQL.
* Every blocked re-entrant access is recorded (QEMU's ``warn_report_once`` prints the first only).
* Only little-endian devices (x86's case); ``impl``/``valid`` split and widen as QEMU does for
  ``DEVICE_LITTLE_ENDIAN``.
"""

from __future__ import annotations

import enum
import inspect
import mmap
import sys
import weakref
from bisect import bisect_right as _bisect_right
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from .errors import (
    AddressOutOfRangeError,
    ConfigError,
    InvalidAccessSizeError,
    InvalidOffsetError,
    InvalidSizeError,
    LayoutError,
    RegionInUseError,
    RegionOutOfBoundsError,
)
from .sync import Lock, bql_locked

__all__ = [
    "AddressSpace",
    "AddressSpaceStatistics",
    "FlatRange",
    "MemReentrancyGuard",
    "MemTxResult",
    "MemoryRegion",
    "MemoryRegionOps",
    "MemoryRegionStatistics",
    "mtree_text",
    "prepare_mmio_access",
]

ReadFn = Union[Callable[[int, int], int], Callable[[int, int], Awaitable[int]]]
WriteFn = Union[Callable[[int, int, int], None], Callable[[int, int, int], Awaitable[None]]]

_U64 = (1 << 64) - 1
#: access sizes a caller may ask for (QEMU's MemOp sizes MO_8..MO_64)
_SIZES = frozenset((1, 2, 4, 8))
#: _MASK[n] == MAKE_64BIT_MASK(0, 8 * n)
_MASK = tuple((1 << (8 * n)) - 1 for n in range(9))


class MemTxResult(enum.IntFlag):
    """QEMU's ``MemTxResult`` (include/exec/memattrs.h), same values; results of split accesses OR together."""

    OK = 0
    ERROR = 1  #: the device returned an error
    DECODE_ERROR = 2  #: nothing at that address
    ACCESS_ERROR = 4  #: access denied (invalid size/alignment, blocked re-entrant I/O)


_OK = MemTxResult.OK
_DECODE_ERROR = MemTxResult.DECODE_ERROR
_ACCESS_ERROR = MemTxResult.ACCESS_ERROR


def _is_coroutine_function(fn: Any) -> bool:
    """True for ``async def`` functions, bound methods, partials and objects with an async ``__call__``."""
    if fn is None:
        return False
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _read_none(offset: int, size: int) -> int:
    return 0


def _write_none(offset: int, value: int, size: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class MemoryRegionOps:
    """QEMU's ``MemoryRegionOps``: a region's read/write callbacks and access-size limits.

    ``read(offset, size) -> int`` and ``write(offset, value, size)`` get the offset inside the
    region; bind the device with a bound method or a closure. Either may be a plain function or a
    coroutine function (detected once, here). A missing ``read`` reads 0, a missing ``write``
    ignores the value.

    ``valid_*`` is what the guest may do (an access outside it is rejected); ``impl_*`` is what the
    callbacks implement (dispatch splits wider accesses and widens narrower ones,
    ``access_with_adjusted_size``). Defaults: ``impl`` 1..4 (QEMU's) and ``valid`` 1..4. QEMU treats
    an unset ``valid`` as "any size"; aemu makes 8-byte guest accesses opt-in (``valid_max=8``) so
    a device says so explicitly, as the HPET does. Unaligned accesses are rejected unless
    ``valid_unaligned``.
    """

    read: ReadFn | None = None
    write: WriteFn | None = None
    #: Optional plain-function fast path for a coroutine ``read`` on a lockless region:
    #: ``read_nowait(offset, size)`` returns the value, or None to take the coroutine path.
    #: Lets a device serve some registers with no await (the HPET counter, the PM timer).
    read_nowait: Callable[[int, int], int | None] | None = None
    valid_min: int = 1
    valid_max: int = 4
    valid_unaligned: bool = False
    impl_min: int = 1
    impl_max: int = 4
    # derived once at construction (hot-path helpers)
    read_is_coroutine: bool = field(init=False, repr=False, compare=False)
    write_is_coroutine: bool = field(init=False, repr=False, compare=False)
    _read: Any = field(init=False, repr=False, compare=False)
    _write: Any = field(init=False, repr=False, compare=False)
    _valid_sizes: frozenset[int] = field(init=False, repr=False, compare=False)
    _impl_sizes: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for label, lo, hi in (("valid", self.valid_min, self.valid_max), ("impl", self.impl_min, self.impl_max)):
            for which, n in (("min", lo), ("max", hi)):
                if n not in _SIZES or isinstance(n, bool):
                    raise InvalidAccessSizeError(
                        f"MemoryRegionOps {label}_{which}={n!r} is not an access size; use 1, 2, 4 or 8"
                    )
            if lo > hi:
                raise InvalidAccessSizeError(
                    f"MemoryRegionOps {label}_min={lo} is larger than {label}_max={hi}; "
                    f"use {label}_min <= {label}_max"
                )
        if self.read is not None and not callable(self.read):
            raise TypeError(f"MemoryRegionOps read must be callable, got {self.read!r}")
        if self.write is not None and not callable(self.write):
            raise TypeError(f"MemoryRegionOps write must be callable, got {self.write!r}")
        setattr_ = object.__setattr__
        setattr_(self, "read_is_coroutine", _is_coroutine_function(self.read))
        setattr_(self, "write_is_coroutine", _is_coroutine_function(self.write))
        setattr_(self, "_read", self.read if self.read is not None else _read_none)
        setattr_(self, "_write", self.write if self.write is not None else _write_none)
        setattr_(self, "_valid_sizes", frozenset(n for n in _SIZES if self.valid_min <= n <= self.valid_max))
        setattr_(self, "_impl_sizes", frozenset(n for n in _SIZES if self.impl_min <= n <= self.impl_max))


class MemReentrancyGuard:
    """QEMU's ``MemReentrancyGuard``: one flag per owner device, set while it is inside its own I/O.

    As in QEMU the flag is per device, not per task: while any access is inside a handler of the
    device, a second access to a guarded region of the same device is blocked. That is why lockless
    regions (which are meant to be entered concurrently) disable the guard.
    An owner may provide its own guard as ``owner.mem_reentrancy_guard``.
    """

    __slots__ = ("engaged_in_io",)

    def __init__(self) -> None:
        self.engaged_in_io = False

    def __repr__(self) -> str:
        return f"<MemReentrancyGuard engaged_in_io={self.engaged_in_io}>"


# id(owner) -> (reference to the owner, its guard); entries of weak-referenceable owners go away with them
_guards: dict[int, tuple[Any, MemReentrancyGuard]] = {}


def _guard_for(owner: Any) -> MemReentrancyGuard | None:
    if owner is None:
        return None
    own = getattr(owner, "mem_reentrancy_guard", None)
    if isinstance(own, MemReentrancyGuard):
        return own
    key = id(owner)
    entry = _guards.get(key)
    if entry is not None:
        ref = entry[0]
        if (ref() if isinstance(ref, weakref.ref) else ref) is owner:
            return entry[1]
    guard = MemReentrancyGuard()

    def forget(_ref: weakref.ref[Any]) -> None:
        _guards.pop(key, None)

    try:
        ref = weakref.ref(owner, forget)
    except TypeError:  # not weak-referenceable (ints, strings, slotted objects): keep it alive
        ref = owner
    _guards[key] = (ref, guard)
    return guard


# region kinds
_IO, _RAM, _ROM, _CONTAINER, _ALIAS = range(5)
_KIND_NAMES = ("io", "ram", "rom", "container", "alias")
#: RAM larger than this is an anonymous mmap (zero pages cost nothing until touched)
_MMAP_THRESHOLD = 1 << 20
#: Linux: private, and MAP_NORESERVE (0x4000) so guest RAM larger than free memory can be mapped
_MMAP_FLAGS: dict[str, int] = (
    {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)}
    if sys.platform == "linux"
    else {}
)


@dataclass(frozen=True, slots=True)
class MemoryRegionStatistics:
    """A snapshot of one region's counters."""

    name: str
    reads: int
    writes: int
    access_errors: int


class MemoryRegion:
    """QEMU's ``MemoryRegion``: an I/O region, RAM, ROM, a container or an alias.

    Build regions with :meth:`io`, :meth:`ram`, :meth:`rom`, :meth:`container` and :meth:`alias`
    (``memory_region_init_io/_ram/_rom``, ``memory_region_init`` and ``memory_region_init_alias``),
    and place them with :meth:`add_subregion`. Changing the layout (adding, removing, ``enabled``,
    ``priority``, ``addr``, ``alias_offset``) re-renders the FlatView of every address space that
    can see the region, lazily at its next access.
    """

    __slots__ = (
        "name",
        "owner",
        "ops",
        "lockless_io",
        "disable_reentrancy_guard",
        "flush_coalesced_mmio",
        "ram_block",
        "reads",
        "writes",
        "access_errors",
        "_kind",
        "_size",
        "_addr",
        "_priority",
        "_enabled",
        "_container",
        "_subregions",
        "_alias",
        "_alias_offset",
        "_alias_users",
        "_spaces",
        "_guard",
        "_read_site",
        "_write_site",
    )

    def __init__(
        self,
        name: str,
        size: int,
        *,
        kind: str = "container",
        ops: MemoryRegionOps | None = None,
        owner: Any = None,
        target: MemoryRegion | None = None,
        alias_offset: int = 0,
        data: bytes | None = None,
    ) -> None:
        """Low-level constructor; prefer :meth:`io`, :meth:`ram`, :meth:`rom`, :meth:`container`, :meth:`alias`."""
        if kind not in _KIND_NAMES:
            raise ValueError(f"unknown region kind {kind!r}; use one of {', '.join(_KIND_NAMES)}")
        self.name = str(name)
        self._kind = _KIND_NAMES.index(kind)
        self._size = _check_size(self.name, size)
        self.owner = owner
        self.ops: MemoryRegionOps | None = None
        self.lockless_io = False
        self.disable_reentrancy_guard = False
        self.flush_coalesced_mmio = False
        self.ram_block: bytearray | mmap.mmap | None = None
        self.reads = 0
        self.writes = 0
        self.access_errors = 0
        self._addr = 0
        self._priority = 0
        self._enabled = True
        self._container: MemoryRegion | None = None
        self._subregions: list[MemoryRegion] = []
        self._alias: MemoryRegion | None = None
        self._alias_offset = 0
        self._alias_users: list[MemoryRegion] = []
        self._spaces: list[AddressSpace] = []
        self._guard: MemReentrancyGuard | None = None
        self._read_site = f"{self.name} read"
        self._write_site = f"{self.name} write"
        k = self._kind
        if k == _IO:
            if not isinstance(ops, MemoryRegionOps):
                raise TypeError(f"I/O region {self.name!r} needs a MemoryRegionOps, got {ops!r}")
            self.ops = ops
            self._guard = _guard_for(owner)
        elif k == _RAM or k == _ROM:
            self.ram_block = _allocate_ram(self.name, self._size, data)
        elif k == _ALIAS:
            if not isinstance(target, MemoryRegion):
                raise TypeError(f"alias {self.name!r} needs a target MemoryRegion, got {target!r}")
            _check_alias_window(self.name, target, alias_offset, self._size)
            self._alias = target
            self._alias_offset = alias_offset
            target._alias_users.append(self)

    # -- constructors (memory_region_init_*) -----------------------------------------------------
    @classmethod
    def io(cls, name: str, size: int, ops: MemoryRegionOps, owner: Any = None) -> MemoryRegion:
        """An I/O region whose accesses go to ``ops`` (``memory_region_init_io``)."""
        return cls(name, size, kind="io", ops=ops, owner=owner)

    @classmethod
    def ram(cls, name: str, size: int, owner: Any = None, data: bytes | None = None) -> MemoryRegion:
        """RAM read and written directly, without the BQL (``memory_region_init_ram``)."""
        return cls(name, size, kind="ram", owner=owner, data=data)

    @classmethod
    def rom(cls, name: str, size: int, owner: Any = None, data: bytes | None = None) -> MemoryRegion:
        """Read-only memory (``memory_region_init_rom``): direct reads; writes are dropped with a decode error."""
        return cls(name, size, kind="rom", owner=owner, data=data)

    @classmethod
    def container(cls, name: str, size: int, owner: Any = None) -> MemoryRegion:
        """A region that only holds subregions; where none maps, it is a hole (``memory_region_init``)."""
        return cls(name, size, kind="container", owner=owner)

    @classmethod
    def alias(cls, name: str, target: MemoryRegion, offset: int, size: int, owner: Any = None) -> MemoryRegion:
        """A window of ``size`` bytes onto ``target`` starting at ``offset`` (``memory_region_init_alias``)."""
        return cls(name, size, kind="alias", owner=owner, target=target, alias_offset=offset)

    # -- read-only facts ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"io"``, ``"ram"``, ``"rom"``, ``"container"`` or ``"alias"``."""
        return _KIND_NAMES[self._kind]

    @property
    def size(self) -> int:
        return self._size

    @property
    def container_region(self) -> MemoryRegion | None:
        """The region this one is a subregion of (QEMU's ``mr->container``), or None."""
        return self._container

    @property
    def subregions(self) -> tuple[MemoryRegion, ...]:
        """Subregions in QEMU's list order: priority descending, later-added first among equals."""
        return tuple(self._subregions)

    @property
    def alias_target(self) -> MemoryRegion | None:
        """The region an alias points to (QEMU's ``mr->alias``)."""
        return self._alias

    @property
    def terminates(self) -> bool:
        """True for regions that render themselves (I/O, RAM, ROM), False for containers and aliases."""
        return self._kind <= _ROM

    # -- layout changes (each re-renders the affected address spaces) ----------------------------
    @property
    def addr(self) -> int:
        """Offset inside the container (``memory_region_set_address`` when set)."""
        return self._addr

    @addr.setter
    def addr(self, value: int) -> None:
        if value == self._addr:
            return
        container = self._container
        if container is None:
            if value < 0:
                raise InvalidOffsetError(f"region {self.name!r}: address {value:#x} is negative")
            self._addr = value
            return
        container._check_fit(value, self)
        container._unlink(self)
        self._addr = value
        container._link(self)

    @property
    def priority(self) -> int:
        """Priority among overlapping siblings; setting it re-sorts the container like a re-add."""
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        value = int(value)
        if value == self._priority:
            return
        container = self._container
        if container is None:
            self._priority = value
            return
        container._unlink(self)
        self._priority = value
        container._link(self)

    @property
    def enabled(self) -> bool:
        """A disabled region vanishes from the FlatView (``memory_region_set_enabled``)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if value != self._enabled:
            self._enabled = value
            self._topology_changed()

    @property
    def alias_offset(self) -> int:
        """Start of an alias's window in its target (``memory_region_set_alias_offset`` when set)."""
        return self._alias_offset

    @alias_offset.setter
    def alias_offset(self, value: int) -> None:
        if self._alias is None:
            raise LayoutError(f"region {self.name!r} is not an alias; only aliases have an alias_offset")
        if value == self._alias_offset:
            return
        _check_alias_window(self.name, self._alias, value, self._size)
        self._alias_offset = value
        self._topology_changed()

    def set_enabled(self, enabled: bool) -> None:
        """``memory_region_set_enabled``."""
        self.enabled = enabled

    def enable_lockless_io(self) -> None:
        """``memory_region_enable_lockless_io``: dispatch without the BQL, and no re-entrancy guard.

        The guard is per device; lockless regions are entered concurrently, so QEMU turns it off.
        """
        self.lockless_io = True
        self.disable_reentrancy_guard = True

    def add_subregion(self, offset: int, subregion: MemoryRegion, priority: int = 0) -> None:
        """Place ``subregion`` at ``offset`` (``memory_region_add_subregion[_overlap]``).

        Among overlapping siblings the highest priority wins, and among equal priorities the one
        added last.
        """
        if not isinstance(subregion, MemoryRegion):
            raise TypeError(f"add_subregion needs a MemoryRegion, got {subregion!r}")
        if self._kind == _ALIAS:
            raise LayoutError(
                f"cannot add {subregion.name!r} to alias {self.name!r}: an alias has no subregions; "
                f"add it to the alias target {self._alias.name!r} instead"  # type: ignore[union-attr]
            )
        if subregion._container is not None:
            raise RegionInUseError(
                f"region {subregion.name!r} is already a subregion of {subregion._container.name!r}; "
                f"del_subregion it there first"
            )
        if subregion is self or subregion._reaches(self):
            raise RegionInUseError(
                f"adding {subregion.name!r} to {self.name!r} would make a cycle "
                f"({self.name!r} is inside {subregion.name!r} or its alias targets)"
            )
        self._check_fit(offset, subregion)
        subregion._addr = offset
        subregion._priority = int(priority)
        subregion._container = self
        self._link(subregion)

    def add_subregion_overlap(self, offset: int, subregion: MemoryRegion, priority: int) -> None:
        """``memory_region_add_subregion_overlap``: :meth:`add_subregion` with a priority."""
        self.add_subregion(offset, subregion, priority)

    def del_subregion(self, subregion: MemoryRegion) -> None:
        """Remove ``subregion`` from this container (``memory_region_del_subregion``)."""
        if subregion._container is not self:
            where = f"of {subregion._container.name!r}" if subregion._container is not None else "of nothing"
            raise LayoutError(
                f"region {subregion.name!r} is not a subregion of {self.name!r} (it is a subregion {where})"
            )
        self._unlink(subregion)
        subregion._container = None

    # -- counters ----------------------------------------------------------------------------------
    def statistics(self) -> MemoryRegionStatistics:
        """A snapshot of this region's access counters."""
        return MemoryRegionStatistics(self.name, self.reads, self.writes, self.access_errors)

    # -- internals ---------------------------------------------------------------------------------
    def _check_fit(self, offset: int, subregion: MemoryRegion) -> None:
        if offset < 0:
            raise InvalidOffsetError(
                f"subregion {subregion.name!r}: offset {offset:#x} in container {self.name!r} is negative"
            )
        end = offset + subregion._size
        if end > self._size:
            raise RegionOutOfBoundsError(
                f"subregion {subregion.name!r} [{offset:#x}, {end:#x}) does not fit in container "
                f"{self.name!r} of size {self._size:#x}"
            )

    def _link(self, subregion: MemoryRegion) -> None:
        """Insert before the first sibling of lower or equal priority.

        QEMU's ``memory_region_update_container_subregions``: later-added wins among equals.
        """
        subs = self._subregions
        prio = subregion._priority
        for i, other in enumerate(subs):
            if prio >= other._priority:
                subs.insert(i, subregion)
                break
        else:
            subs.append(subregion)
        self._topology_changed()

    def _unlink(self, subregion: MemoryRegion) -> None:
        self._subregions.remove(subregion)
        self._topology_changed()

    def _reaches(self, other: MemoryRegion) -> bool:
        """True if ``other`` is below this region through subregions or alias targets."""
        seen: set[int] = set()
        stack = [self]
        while stack:
            mr = stack.pop()
            if mr is other:
                return True
            if id(mr) in seen:
                continue
            seen.add(id(mr))
            stack.extend(mr._subregions)
            if mr._alias is not None:
                stack.append(mr._alias)
        return False

    def _topology_changed(self) -> None:
        """Mark every address space that can see this region dirty (re-rendered at its next access)."""
        seen: set[int] = set()
        stack = [self]
        while stack:
            mr = stack.pop()
            if id(mr) in seen:
                continue
            seen.add(id(mr))
            for space in mr._spaces:
                space._dirty = True
            if mr._container is not None:
                stack.append(mr._container)
            stack.extend(mr._alias_users)

    def __repr__(self) -> str:
        parts = [f"<MemoryRegion {self.kind} {self.name!r} size={self._size:#x}"]
        if self._alias is not None:
            parts.append(f"-> {self._alias.name!r} @{self._alias_offset:#x}")
        if self._container is not None:
            parts.append(f"at {self._addr:#x} in {self._container.name!r} prio {self._priority}")
        if not self._enabled:
            parts.append("disabled")
        if self.lockless_io:
            parts.append("lockless")
        return " ".join(parts) + ">"


def _check_size(name: str, size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"region {name!r}: size must be an int, got {size!r}")
    if size <= 0:
        raise InvalidSizeError(f"region {name!r}: size {size:#x} must be positive")
    if size == _U64:  # QEMU: UINT64_MAX means the whole 2**64 space
        return 1 << 64
    if size > 1 << 64:
        raise InvalidSizeError(f"region {name!r}: size {size:#x} is larger than 2**64")
    return size


def _check_alias_window(name: str, target: MemoryRegion, offset: int, size: int) -> None:
    if offset < 0:
        raise InvalidOffsetError(f"alias {name!r}: offset {offset:#x} into {target.name!r} is negative")
    if offset + size > target._size:
        raise RegionOutOfBoundsError(
            f"alias {name!r} window [{offset:#x}, {offset + size:#x}) is outside its target "
            f"{target.name!r} of size {target._size:#x}"
        )


def _allocate_ram(name: str, size: int, data: bytes | None) -> bytearray | mmap.mmap:
    if data is not None and len(data) > size:
        raise InvalidSizeError(f"region {name!r}: {len(data):#x} bytes of data do not fit in size {size:#x}")
    try:
        if size >= _MMAP_THRESHOLD:
            buf: bytearray | mmap.mmap = mmap.mmap(-1, size, **_MMAP_FLAGS)
        else:
            buf = bytearray(size)
    except (OverflowError, OSError, MemoryError, ValueError) as exc:
        raise InvalidSizeError(f"region {name!r}: cannot allocate {size:#x} bytes of RAM ({exc})") from None
    if data:
        buf[: len(data)] = data
    return buf


class FlatRange(NamedTuple):
    """One range of a FlatView: ``[start, end)`` maps to ``region`` from ``offset_in_region``."""

    start: int
    end: int
    region: MemoryRegion
    offset_in_region: int


@dataclass(frozen=True, slots=True)
class AddressSpaceStatistics:
    """A snapshot of one address space's counters."""

    name: str
    decode_errors: int
    access_errors: int
    blocked_reentrant_io: int
    coalesced_mmio_flushes: int
    render_count: int


#: What :meth:`AddressSpace.fast_read` resolves: (read_nowait, offset in region, region, value mask).
FastRead = tuple[Callable[[int, int], "int | None"], int, "MemoryRegion", int]


async def prepare_mmio_access(space: AddressSpace, mr: MemoryRegion, site: str) -> bool:
    """QEMU's ``prepare_mmio_access()`` (system/physmem.c, after the lockless-I/O series).

    Takes ``space.bql`` when the current task does not hold the BQL (``bql_locked()``) and the
    region is not lockless, then flushes coalesced MMIO if the region asks for it (aemu counts the
    flush). Returns True when the caller must release the BQL after dispatch. Does not yield unless
    the BQL is held by another task. (The synchronous dispatch path does the same with
    ``Lock.try_acquire`` and gives up instead of waiting.)
    """
    release_lock = False
    if not mr.lockless_io and not bql_locked():
        await space.bql.acquire(site)
        release_lock = True
    if mr.flush_coalesced_mmio:
        space.coalesced_mmio_flushes += 1
    return release_lock


class AddressSpace:
    """QEMU's ``AddressSpace``: a root region seen through its FlatView, and dispatch into it.

    ``AddressSpace("memory", system)`` is the 64-bit memory space, ``AddressSpace("I/O", io,
    width_bits=16)`` the port space 0..0xffff. A machine passes one shared BQL to both; without one
    a space creates ``Lock("BQL", bql=True)``.
    """

    __slots__ = (
        "name",
        "root",
        "bql",
        "width_bits",
        "limit",
        "render_count",
        "decode_errors",
        "access_errors",
        "blocked_reentrant_io",
        "blocked_messages",
        "coalesced_mmio_flushes",
        "_dirty",
        "_ranges",
        "_starts",
        "fast_reads",
    )

    #: how many blocked re-entrant I/O messages are kept (the count goes on)
    MAX_BLOCKED_MESSAGES = 1000

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
        self._ranges: list[FlatRange] = []
        self._starts: list[int] = []
        #: ``addr << 4 | size`` -> :data:`FastRead` for accesses a device serves with a plain
        #: ``read_nowait`` function (see :meth:`fast_read`); emptied when the FlatView changes.
        self.fast_reads: dict[int, FastRead | None] = {}
        root._spaces.append(self)
        self._render()

    # -- the FlatView ------------------------------------------------------------------------------
    def _render(self) -> None:
        """``generate_memory_topology``: render the root, merge neighbours (``flatview_simplify``)."""
        view: list[list[Any]] = []
        _render_memory_region(view, self.root, 0, 0, self.limit)
        merged: list[FlatRange] = []
        for start, end, mr, off in view:
            if merged:
                last = merged[-1]
                if last.end == start and last.region is mr and last.offset_in_region + (last.end - last.start) == off:
                    merged[-1] = FlatRange(last.start, end, mr, last.offset_in_region)
                    continue
            merged.append(FlatRange(start, end, mr, off))
        self._ranges = merged
        self._starts = [fr.start for fr in merged]
        self._dirty = False
        self.render_count += 1
        self.fast_reads.clear()

    def flatview(self) -> list[FlatRange]:
        """The current FlatView: sorted, disjoint ``(start, end_exclusive, region, offset_in_region)``."""
        if self._dirty:
            self._render()
        return list(self._ranges)

    def translate(self, addr: int) -> tuple[MemoryRegion, int] | None:
        """The region and offset that ``addr`` dispatches to, or None for a hole (``address_space_translate``)."""
        if not 0 <= addr < self.limit:
            raise AddressOutOfRangeError(
                f"address {addr:#x} is outside address space {self.name!r} [0, {self.limit:#x})"
            )
        if self._dirty:
            self._render()
        i = _bisect_right(self._starts, addr) - 1
        if i >= 0:
            fr = self._ranges[i]
            if addr < fr.end:
                return fr.region, addr - fr.start + fr.offset_in_region
        return None

    # -- dispatch: the synchronous fast path -------------------------------------------------------
    def fast_read(self, addr: int, size: int) -> FastRead | None:
        """The dispatch of a ``size``-byte read at ``addr``, resolved once for a hot caller.

        For a read that lands in one I/O region whose ops have a plain ``read_nowait`` function
        and accept this size and alignment as is: ``(read_nowait, offset, region, mask)``. The
        caller may then, while the FlatView is unchanged (``not space._dirty``; a render empties
        the cache) and ``region.lockless_io`` holds, do exactly what :meth:`read_nowait` does:
        ``v = read_nowait(offset, size)``; None means "take the full path"; else the value is
        ``v & mask`` and ``region.reads`` is incremented. None for any other access.
        """
        key = addr << 4 | size
        fast = self.fast_reads
        if key in fast and not self._dirty:
            return fast[key]
        hit = None
        if size in _SIZES and 0 <= addr < self.limit:
            if self._dirty:
                self._render()
            i = _bisect_right(self._starts, addr) - 1
            if i >= 0:
                start, end, mr, off = self._ranges[i]
                ops = mr.ops
                if (addr + size <= end and mr._kind == _IO and ops is not None and ops.read_is_coroutine
                        and ops.read_nowait is not None and size in ops._valid_sizes
                        and size in ops._impl_sizes):
                    off += addr - start
                    if not off & (size - 1) or ops.valid_unaligned:
                        hit = (ops.read_nowait, off, mr, _MASK[size])
        fast[key] = hit
        return hit

    def read_nowait(self, addr: int, size: int) -> tuple[int, MemTxResult] | None:
        """Read synchronously if nothing has to wait; else None (then ``await read()``).

        Completes here whenever the handler is a plain function and no lock has to be waited
        for: RAM/ROM, lockless regions, regions whose caller holds the BQL, regions whose BQL is
        free (taken with ``try_acquire`` and released, exactly what ``acquire`` does uncontended),
        and every error. Returns None, having done nothing, when the BQL is held by another task or
        the handler is a coroutine function. Regions that take the BQL must be accessed from a task.
        """
        if self._dirty:
            self._render()
        if size in _SIZES and addr >= 0:
            i = _bisect_right(self._starts, addr) - 1
            if i >= 0:
                start, end, mr, off = self._ranges[i]
                if addr + size <= end:
                    return self._read_region_nowait(mr, addr - start + off, size)
        return self._read_unusual(addr, size, True)

    def write_nowait(self, addr: int, value: int, size: int) -> MemTxResult | None:
        """Write synchronously if nothing has to wait; else None, having done nothing (then ``await write()``)."""
        if self._dirty:
            self._render()
        if size in _SIZES and addr >= 0:
            i = _bisect_right(self._starts, addr) - 1
            if i >= 0:
                start, end, mr, off = self._ranges[i]
                if addr + size <= end:
                    return self._write_region_nowait(mr, addr - start + off, value, size)
        return self._write_unusual(addr, value, size, True)

    # -- dispatch: the async API -------------------------------------------------------------------
    async def read(self, addr: int, size: int) -> tuple[int, MemTxResult]:
        """Read ``size`` bytes at ``addr``: ``(value, result)`` (``address_space_read``).

        Does not yield to the event loop unless it has to wait for the BQL or a coroutine handler
        suspends.
        """
        r = self.read_nowait(addr, size)
        if r is not None:
            return r
        if size in _SIZES and addr >= 0:  # the common waiting case: one range of one I/O region
            i = _bisect_right(self._starts, addr) - 1
            if i >= 0:
                start, end, mr, off = self._ranges[i]
                if addr + size <= end and mr._kind == _IO:
                    return await self._io_read_async(mr, addr - start + off, size)
        return await self._read_slow(addr, size)

    async def write(self, addr: int, value: int, size: int) -> MemTxResult:
        """Write the low ``size`` bytes of ``value`` at ``addr`` (``address_space_write``)."""
        r = self.write_nowait(addr, value, size)
        if r is not None:
            return r
        if size in _SIZES and addr >= 0:  # the common waiting case: one range of one I/O region
            i = _bisect_right(self._starts, addr) - 1
            if i >= 0:
                start, end, mr, off = self._ranges[i]
                if addr + size <= end and mr._kind == _IO:
                    return await self._io_write_async(mr, addr - start + off, value, size)
        return await self._write_slow(addr, value, size)

    # -- per-region dispatch (memory_region_dispatch_read/write) -----------------------------------
    def _read_region_nowait(self, mr: MemoryRegion, off: int, size: int) -> tuple[int, MemTxResult] | None:
        kind = mr._kind
        if kind == _IO:
            ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
            if size not in ops._valid_sizes or (off & (size - 1) and not ops.valid_unaligned):
                return self._invalid_access(mr, size)
            if ops.read_is_coroutine:
                fast = ops.read_nowait
                if fast is None or not mr.lockless_io or size not in ops._impl_sizes:
                    return None
                v = fast(off, size)
                if v is None:
                    return None
                mr.reads += 1
                return v & _MASK[size], _OK
            # prepare_mmio_access, without waiting: a free BQL is taken as acquire() would take it
            if mr.lockless_io or bql_locked():
                if mr.flush_coalesced_mmio:
                    self.coalesced_mmio_flushes += 1
                return self._io_read(mr, off, size)
            bql = self.bql
            if not bql.try_acquire(mr._read_site):
                return None
            try:
                if mr.flush_coalesced_mmio:
                    self.coalesced_mmio_flushes += 1
                return self._io_read(mr, off, size)
            finally:
                bql.release()
        # RAM or ROM: direct access, never the BQL (the FlatView holds no containers or aliases)
        mr.reads += 1
        return int.from_bytes(mr.ram_block[off : off + size], "little"), _OK  # type: ignore[index]

    def _write_region_nowait(self, mr: MemoryRegion, off: int, value: int, size: int) -> MemTxResult | None:
        kind = mr._kind
        if kind == _IO:
            ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
            if size not in ops._valid_sizes or (off & (size - 1) and not ops.valid_unaligned):
                return self._invalid_access(mr, size)[1]
            if ops.write_is_coroutine:
                return None
            if mr.lockless_io or bql_locked():
                if mr.flush_coalesced_mmio:
                    self.coalesced_mmio_flushes += 1
                return self._io_write(mr, off, value, size)
            bql = self.bql
            if not bql.try_acquire(mr._write_site):
                return None
            try:
                if mr.flush_coalesced_mmio:
                    self.coalesced_mmio_flushes += 1
                return self._io_write(mr, off, value, size)
            finally:
                bql.release()
        if kind == _RAM:
            mr.ram_block[off : off + size] = (value & _MASK[size]).to_bytes(size, "little")  # type: ignore[index]
            mr.writes += 1
            return _OK
        # ROM: not direct for writes; its ops are QEMU's unassigned_mem_ops, which refuse the access
        self.decode_errors += 1
        return _DECODE_ERROR

    def _io_read(self, mr: MemoryRegion, off: int, size: int) -> tuple[int, MemTxResult]:
        """``access_with_adjusted_size`` for a plain read handler, inside the re-entrancy guard."""
        ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
        guard = mr._guard
        if guard is None or mr.disable_reentrancy_guard:
            if size in ops._impl_sizes:
                value = ops._read(off, size) & _MASK[size]
            else:
                value = _read_adjusted(ops, off, size)
        else:
            if guard.engaged_in_io:
                return self._blocked(mr, off, size), _ACCESS_ERROR
            guard.engaged_in_io = True
            try:
                if size in ops._impl_sizes:
                    value = ops._read(off, size) & _MASK[size]
                else:
                    value = _read_adjusted(ops, off, size)
            finally:
                guard.engaged_in_io = False
        mr.reads += 1
        return value, _OK

    def _io_write(self, mr: MemoryRegion, off: int, value: int, size: int) -> MemTxResult:
        ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
        guard = mr._guard
        if guard is None or mr.disable_reentrancy_guard:
            if size in ops._impl_sizes:
                ops._write(off, value & _MASK[size], size)
            else:
                _write_adjusted(ops, off, value, size)
        else:
            if guard.engaged_in_io:
                self._blocked(mr, off, size)
                return _ACCESS_ERROR
            guard.engaged_in_io = True
            try:
                if size in ops._impl_sizes:
                    ops._write(off, value & _MASK[size], size)
                else:
                    _write_adjusted(ops, off, value, size)
            finally:
                guard.engaged_in_io = False
        mr.writes += 1
        return _OK

    async def _io_read_async(self, mr: MemoryRegion, off: int, size: int) -> tuple[int, MemTxResult]:
        """An I/O read that may wait: for the BQL (``prepare_mmio_access``) and/or a coroutine handler."""
        ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
        if size not in ops._valid_sizes or (off & (size - 1) and not ops.valid_unaligned):
            return self._invalid_access(mr, size)
        release_lock = await prepare_mmio_access(self, mr, mr._read_site)
        try:
            if not ops.read_is_coroutine:
                return self._io_read(mr, off, size)
            guard = mr._guard
            guarded = guard is not None and not mr.disable_reentrancy_guard
            if guarded:
                if guard.engaged_in_io:  # type: ignore[union-attr]
                    return self._blocked(mr, off, size), _ACCESS_ERROR
                guard.engaged_in_io = True  # type: ignore[union-attr]
            try:
                if size in ops._impl_sizes:
                    value = await ops._read(off, size) & _MASK[size]
                else:
                    value = await _read_adjusted_async(ops, off, size)
            finally:
                if guarded:
                    guard.engaged_in_io = False  # type: ignore[union-attr]
            mr.reads += 1
            return value, _OK
        finally:
            if release_lock:
                self.bql.release()

    async def _io_write_async(self, mr: MemoryRegion, off: int, value: int, size: int) -> MemTxResult:
        ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
        if size not in ops._valid_sizes or (off & (size - 1) and not ops.valid_unaligned):
            return self._invalid_access(mr, size)[1]
        release_lock = await prepare_mmio_access(self, mr, mr._write_site)
        try:
            if not ops.write_is_coroutine:
                return self._io_write(mr, off, value, size)
            guard = mr._guard
            guarded = guard is not None and not mr.disable_reentrancy_guard
            if guarded:
                if guard.engaged_in_io:  # type: ignore[union-attr]
                    self._blocked(mr, off, size)
                    return _ACCESS_ERROR
                guard.engaged_in_io = True  # type: ignore[union-attr]
            try:
                await _write_adjusted_async(ops, off, value, size)
            finally:
                if guarded:
                    guard.engaged_in_io = False  # type: ignore[union-attr]
            mr.writes += 1
            return _OK
        finally:
            if release_lock:
                self.bql.release()

    # -- errors ------------------------------------------------------------------------------------
    def _invalid_access(self, mr: MemoryRegion, size: int) -> tuple[int, MemTxResult]:
        mr.access_errors += 1
        self.access_errors += 1
        return _MASK[size], _ACCESS_ERROR

    def _blocked(self, mr: MemoryRegion, off: int, size: int) -> int:
        """Record QEMU's re-entrancy warning; returns the all-ones value of a blocked read."""
        mr.access_errors += 1
        self.access_errors += 1
        self.blocked_reentrant_io += 1
        if len(self.blocked_messages) < self.MAX_BLOCKED_MESSAGES:
            # access_with_adjusted_size: "%s at addr: 0x%" HWADDR_PRIX (upper-case hex)
            self.blocked_messages.append(f"Blocked re-entrant IO on MemoryRegion: {mr.name} at addr: 0x{off:X}")
        return _MASK[size]

    # -- unusual accesses: bad sizes, out of range, holes, accesses that span ranges -------------
    def _pieces(self, addr: int, size: int) -> list[tuple[int, int, FlatRange | None]]:
        """Split ``[addr, addr+size)`` into power-of-two pieces, each within one region (``flatview_read_continue``)."""
        pieces: list[tuple[int, int, FlatRange | None]] = []
        ranges, starts = self._ranges, self._starts
        done = 0
        while done < size:
            a = addr + done
            i = _bisect_right(starts, a) - 1
            fr: FlatRange | None = ranges[i] if i >= 0 else None
            if fr is not None and a < fr.end:
                # QEMU limits the length by the end of the *region*, not of the FlatRange
                # (address_space_translate_internal: mr->size - addr): an access that runs into
                # a higher-priority overlap still goes whole to the region it started in
                avail = fr.start - fr.offset_in_region + fr.region._size - a
            else:
                fr = None
                avail = (starts[i + 1] if i + 1 < len(starts) else self.limit) - a
            n = min(size - done, avail)
            n = 1 << (n.bit_length() - 1)  # pow2floor
            pieces.append((a, n, fr))
            done += n
        return pieces

    def _needs_await(self, fr: FlatRange | None, is_write: bool) -> bool:
        if fr is None:
            return False
        mr = fr.region
        if mr._kind != _IO:
            return False
        ops: MemoryRegionOps = mr.ops  # type: ignore[assignment]
        if ops.write_is_coroutine if is_write else ops.read_is_coroutine:
            return True
        return not mr.lockless_io and not bql_locked() and self.bql.locked()

    def _read_unusual(self, addr: int, size: int, nowait: bool) -> tuple[int, MemTxResult] | None:
        if size not in _SIZES:
            self.access_errors += 1
            return _MASK[min(max(size, 0), 8)] if isinstance(size, int) else 0, _ACCESS_ERROR
        if addr < 0 or addr + size > self.limit:
            self.decode_errors += 1
            return _MASK[size], _DECODE_ERROR
        pieces = self._pieces(addr, size)
        if len(pieces) == 1 and pieces[0][2] is None:
            self.decode_errors += 1
            return _MASK[size], _DECODE_ERROR
        if nowait and any(self._needs_await(fr, False) for _a, _n, fr in pieces):
            return None
        value = 0
        result = _OK
        for a, n, fr in pieces:
            if fr is None:
                self.decode_errors += 1
                v, r = _MASK[n], _DECODE_ERROR
            else:
                rr = self._read_region_nowait(fr.region, a - fr.start + fr.offset_in_region, n)
                assert rr is not None
                v, r = rr
            value |= v << (8 * (a - addr))
            result |= r
        return value, MemTxResult(result)

    def _write_unusual(self, addr: int, value: int, size: int, nowait: bool) -> MemTxResult | None:
        if size not in _SIZES:
            self.access_errors += 1
            return _ACCESS_ERROR
        if addr < 0 or addr + size > self.limit:
            self.decode_errors += 1
            return _DECODE_ERROR
        pieces = self._pieces(addr, size)
        if len(pieces) == 1 and pieces[0][2] is None:
            self.decode_errors += 1
            return _DECODE_ERROR
        if nowait and any(self._needs_await(fr, True) for _a, _n, fr in pieces):
            return None
        result = _OK
        for a, n, fr in pieces:
            if fr is None:
                self.decode_errors += 1
                result |= _DECODE_ERROR
                continue
            piece = (value >> (8 * (a - addr))) & _MASK[n]
            r = self._write_region_nowait(fr.region, a - fr.start + fr.offset_in_region, piece, n)
            assert r is not None
            result |= r
        return MemTxResult(result)

    async def _read_slow(self, addr: int, size: int) -> tuple[int, MemTxResult]:
        """The waiting path of :meth:`read`: each piece goes through ``prepare_mmio_access``."""
        value = 0
        result = _OK
        for a, n, fr in self._pieces(addr, size):
            if fr is None:
                self.decode_errors += 1
                v, r = _MASK[n], _DECODE_ERROR
            else:
                mr = fr.region
                off = a - fr.start + fr.offset_in_region
                if mr._kind == _IO:
                    v, r = await self._io_read_async(mr, off, n)
                else:
                    v, r = self._read_region_nowait(mr, off, n)  # type: ignore[misc]
            value |= v << (8 * (a - addr))
            result |= r
        return value, MemTxResult(result)

    async def _write_slow(self, addr: int, value: int, size: int) -> MemTxResult:
        result = _OK
        for a, n, fr in self._pieces(addr, size):
            if fr is None:
                self.decode_errors += 1
                result |= _DECODE_ERROR
                continue
            mr = fr.region
            off = a - fr.start + fr.offset_in_region
            piece = (value >> (8 * (a - addr))) & _MASK[n]
            if mr._kind == _IO:
                result |= await self._io_write_async(mr, off, piece, n)
            else:
                result |= self._write_region_nowait(mr, off, piece, n)  # type: ignore[operator]
        return MemTxResult(result)

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
        """``info mtree`` for this space alone (see :func:`mtree_text`)."""
        return mtree_text(self, flat=flat, disabled=disabled)

    def __repr__(self) -> str:
        return (
            f"<AddressSpace {self.name!r} root={self.root.name!r} {self.width_bits}-bit, "
            f"{len(self._ranges)} flat ranges{' (stale)' if self._dirty else ''}>"
        )


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


# -- render_memory_region --------------------------------------------------------------------------

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


def _flatview_root(mr: MemoryRegion | None) -> MemoryRegion | None:
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


# -- info mtree --------------------------------------------------------------------------------------

def _region_type(mr: MemoryRegion) -> str:
    """QEMU 7.2's ``memory_region_type``: an alias has its target's type; containers print as i/o."""
    while mr._alias is not None:
        mr = mr._alias
    if mr._kind == _ROM:
        return "rom"
    if mr._kind == _RAM:
        return "ram"
    return "i/o"


def _mtree_print_mr(
    out: list[str],
    mr: MemoryRegion,
    level: int,
    base: int,
    alias_queue: list[MemoryRegion],
    display_disabled: bool,
) -> None:
    """QEMU's ``mtree_print_mr``; aemu appends `` [lockless]`` to lockless regions."""
    cur_start = base + mr._addr
    cur_end = cur_start + mr._size - 1
    overflow = "[DETECTED OVERFLOW!] " if cur_end > _U64 else ""
    cur_start &= _U64
    cur_end &= _U64
    suffix = ("" if mr._enabled else " [disabled]") + (" [lockless]" if mr.lockless_io else "")
    alias = mr._alias
    if alias is not None:
        if not any(q is alias for q in alias_queue):
            alias_queue.append(alias)
        if mr._enabled or display_disabled:
            ao = mr._alias_offset
            out.append(
                f"{overflow}{'  ' * level}{cur_start:016x}-{cur_end:016x} (prio {mr._priority}, {_region_type(mr)}): "
                f"alias {mr.name} @{alias.name} {ao:016x}-{(ao + mr._size - 1) & _U64:016x}{suffix}"
            )
    elif mr._enabled or display_disabled:
        out.append(
            f"{overflow}{'  ' * level}{cur_start:016x}-{cur_end:016x} (prio {mr._priority}, {_region_type(mr)}): "
            f"{mr.name}{suffix}"
        )
    # siblings by address, then priority descending; stable for ties (QEMU's insertion sort)
    for sub in sorted(mr._subregions, key=lambda s: (s._addr, -s._priority)):
        _mtree_print_mr(out, sub, level + 1, cur_start, alias_queue, display_disabled)


def _mtree_flat(spaces: Iterable[AddressSpace], out: list[str]) -> None:
    """``info mtree -f``: one block per distinct FlatView, with the spaces that share it."""
    groups: dict[int, tuple[MemoryRegion | None, list[AddressSpace]]] = {}
    for space in spaces:
        root = _flatview_root(space.root)
        groups.setdefault(id(root) if root is not None else 0, (root, []))[1].append(space)
    for n, (root, members) in enumerate(groups.values()):
        out.append(f"FlatView #{n}")
        for space in members:
            line = f' AS "{space.name}", root: {space.root.name}'
            if space.root._alias is not None:
                line += f", alias {space.root._alias.name}"
            out.append(line)
        out.append(f" Root memory region: {root.name if root is not None else '(none)'}")
        ranges = members[0].flatview()
        if not ranges:
            out.append("  No rendered FlatView")
            out.append("")
            continue
        for start, end, mr, off in ranges:
            line = f"  {start:016x}-{end - 1:016x} (prio {mr._priority}, {_region_type(mr)}): {mr.name}"
            if off:
                line += f" @{off:016x}"
            if mr.lockless_io:
                line += " [lockless]"
            out.append(line)
        out.append("")


def mtree_text(*spaces: AddressSpace, flat: bool = False, disabled: bool = False) -> str:
    """HMP ``info mtree`` (``flat=True``: ``info mtree -f``; ``disabled=True``: ``-D``) in QEMU 7.2's format.

    Spaces that share a root print together (names sorted, as QEMU does); every alias target met
    is printed afterwards as ``memory-region: <name>``. As in QEMU, disabled regions are left out
    unless ``disabled=True``, which prints them with `` [disabled]``. aemu's addition: lockless
    regions end with `` [lockless]`` (QEMU prints nothing for them). Spaces print in the order
    given (QEMU's order is its hash table's).
    """
    out: list[str] = []
    if flat:
        _mtree_flat(spaces, out)
        return "\n".join(out) + "\n" if out else ""
    by_root: dict[int, tuple[MemoryRegion, list[AddressSpace]]] = {}
    for space in spaces:
        by_root.setdefault(id(space.root), (space.root, []))[1].append(space)
    alias_queue: list[MemoryRegion] = []
    for root, members in by_root.values():
        for space in sorted(members, key=lambda s: s.name.encode()):
            out.append(f"address-space: {space.name}")
        _mtree_print_mr(out, root, 1, 0, alias_queue, disabled)
        out.append("")
    i = 0
    while i < len(alias_queue):  # the queue grows while it is printed, as in QEMU
        mr = alias_queue[i]
        out.append(f"memory-region: {mr.name}")
        _mtree_print_mr(out, mr, 1, 0, alias_queue, disabled)
        out.append("")
        i += 1
    return "\n".join(out) + "\n" if out else ""

"""MemoryRegion and MemoryRegionOps: QEMU's ``memory_region_init_*`` and the region tree.

A :class:`MemoryRegion` is an I/O region (callbacks in :class:`MemoryRegionOps`), RAM, ROM, a
container, or an alias (a window onto another region). Subregions are placed at an offset with a
priority; ``enabled`` can be toggled; ``lockless_io`` (:meth:`MemoryRegion.enable_lockless_io`,
QEMU's ``memory_region_enable_lockless_io()``) lets dispatch skip the BQL. Changing the layout
marks every :class:`~aemu.memory.space.AddressSpace` that can see the region for a re-render.
"""

from __future__ import annotations

import enum
import inspect
import mmap
import sys
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from ..errors import (
    InvalidAccessSizeError,
    InvalidOffsetError,
    InvalidSizeError,
    LayoutError,
    RegionInUseError,
    RegionOutOfBoundsError,
)

if TYPE_CHECKING:
    from .space import AddressSpace

__all__ = ["MemReentrancyGuard", "MemTxResult", "MemoryRegion", "MemoryRegionOps", "MemoryRegionStatistics"]

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
                space.invalidate()
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


"""Watching a machine for the checker: devices' fields, its locks and seqlocks, by class swap.

Nothing here costs anything until a checker attaches: then each object it watches gets, for the
run, a subclass of its own class with the same name and layout (``__slots__ = ()``) that reports
to the checker -- a device's instance attribute reads (``__getattribute__``) and writes
(``__setattr__``), a lock's acquisitions and releases, a seqlock's read and write sections -- and
gets its class back when the checker detaches. Other machines in the process, and these objects
outside the run, keep their classes untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..devices.base import Device
from ..sync import Lock, SeqLock

if TYPE_CHECKING:
    from .checker import Checker

__all__ = ["unwatch", "watch_device", "watch_lock", "watch_seqlock"]

#: The checker the watched objects report to (one at a time per process).
active: Checker | None = None

_object_getattribute = object.__getattribute__
_object_setattr = object.__setattr__
_device_classes: dict[type, type] = {}


def _getattribute(self: Any, name: str) -> Any:
    value = _object_getattribute(self, name)
    c = active
    if c is not None and name not in type(self)._aemu_skip and name in _object_getattribute(self, "__dict__"):
        c.field(self, name, False)
    return value


def _setattr(self: Any, name: str, value: Any) -> None:
    _object_setattr(self, name, value)
    c = active
    if c is not None and name not in type(self)._aemu_skip:
        c.field(self, name, True)


def _device_class(cls: type[Device]) -> type[Device]:
    sub = _device_classes.get(cls)
    if sub is None:
        skip = frozenset(cls.atomic_fields) | frozenset(cls.stat_fields) | {"__dict__", "__class__"}
        sub = _device_classes[cls] = type(cls.__name__, (cls,), {
            "__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__getattribute__": _getattribute, "__setattr__": _setattr, "_aemu_skip": skip,
            "_aemu_watched": cls})
    return sub


def watch_device(dev: Device) -> bool:
    """Report ``dev``'s instance attribute accesses to the active checker (False if already)."""
    cls = type(dev)
    if "_aemu_watched" in cls.__dict__:
        return False
    dev.__class__ = _device_class(cls)
    return True


class _CheckedLock(Lock):
    """A :class:`~aemu.sync.Lock` that tells the checker who takes and releases it."""

    __slots__ = ()
    _aemu_watched = Lock

    def try_acquire(self, site: str = "unknown") -> bool:
        if Lock.try_acquire(self, site):
            if active is not None:
                active.acquired(self)
            return True
        return False

    def _granted(self, *args: Any) -> None:  # every contended acquisition ends here
        Lock._granted(self, *args)
        if active is not None:
            active.acquired(self)

    def release(self) -> None:
        owner = self._owner
        Lock.release(self)
        if active is not None and owner is not None:
            active.released(self, owner.get_name())


class _CheckedSeqLock(SeqLock):
    """A :class:`~aemu.sync.SeqLock` that tells the checker where its read and write sections are."""

    __slots__ = ()
    _aemu_watched = SeqLock

    def read_begin(self) -> int:
        if active is not None:
            active.seq_read(self, True)
        return SeqLock.read_begin(self)

    def read_retry(self, start: int) -> bool:
        retry = SeqLock.read_retry(self, start)
        if active is not None:
            active.seq_read(self, False)
        return retry

    def write_begin(self) -> None:
        SeqLock.write_begin(self)
        if active is not None:
            active.seq_write(self, True)

    def write_end(self) -> None:
        if active is not None:
            active.seq_write(self, False)
        SeqLock.write_end(self)


def watch_lock(lock: Lock) -> bool:
    """Report ``lock``'s acquisitions and releases to the active checker (False if already)."""
    if type(lock) is not Lock:
        return False
    lock.__class__ = _CheckedLock
    return True


def watch_seqlock(seq: SeqLock) -> bool:
    """Report ``seq``'s read and write sections to the active checker (False if already)."""
    if type(seq) is not SeqLock:
        return False
    seq.__class__ = _CheckedSeqLock
    return True


def unwatch(obj: Any) -> None:
    """Give ``obj`` its own class back."""
    base = type(obj).__dict__.get("_aemu_watched")
    if base is not None:
        obj.__class__ = base

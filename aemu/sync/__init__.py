"""Accounted locks in virtual time: the BQL and device mutexes (:class:`Lock`), and QEMU's
sequence lock (:class:`SeqLock`).

* :mod:`.lock` -- :class:`Lock`, a ``QemuMutex`` or, with ``bql=True``, the Big QEMU Lock;
* :mod:`.policy` -- what a release does for the waiters (``fifo``, ``barging``);
* :mod:`.lockstat` -- the books QEMU's QSP (``info sync-profile``) and Linux ``lock_stat`` keep;
* :mod:`.stats` -- the frozen snapshots :meth:`Lock.statistics` returns;
* :mod:`.bql` -- :func:`bql_locked`, QEMU's thread-local ``bql_locked()``;
* :mod:`.seqlock` -- :class:`SeqLock`, QEMU's ``QemuSeqLock``.

All times are integer nanoseconds of virtual time (:func:`aemu.clock.now_ns`).
"""

from __future__ import annotations

from .bql import bql_locked
from .lock import Lock
from .seqlock import SeqLock, SeqLockStatistics
from .stats import ContentionPoint, LockStatistics, SiteStats, TaskLockStats, TimeStats

# Importable from aemu.sync as before it became a package, though not in __all__.
from .lockstat import HDR_HIGHEST_NS as HDR_HIGHEST_NS, HDR_LOWEST_NS as HDR_LOWEST_NS  # isort: skip
from .lockstat import HDR_SIGNIFICANT_DIGITS as HDR_SIGNIFICANT_DIGITS  # isort: skip
from .policy import POLICIES as POLICIES  # isort: skip

__all__ = [
    "ContentionPoint",
    "Lock",
    "LockStatistics",
    "SeqLock",
    "SeqLockStatistics",
    "SiteStats",
    "TaskLockStats",
    "TimeStats",
    "bql_locked",
]

"""Accounted locks in virtual time: the BQL and device mutexes (:class:`Lock`), and QEMU's
sequence lock (:class:`SeqLock`)."""

from __future__ import annotations

from .lock import (HDR_HIGHEST_NS, HDR_LOWEST_NS, HDR_SIGNIFICANT_DIGITS, POLICIES, ContentionPoint, Lock,
                   LockStatistics, SeqLock, SeqLockStatistics, SiteStats, TaskLockStats, TimeStats, bql_locked)

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

"""Accounted locks in virtual time: the BQL and device mutexes (:class:`Lock`), and QEMU's
sequence lock (:class:`SeqLock`)."""

from __future__ import annotations

from .bql import bql_locked
from .lock import HDR_HIGHEST_NS, HDR_LOWEST_NS, HDR_SIGNIFICANT_DIGITS, POLICIES, Lock
from .seqlock import SeqLock, SeqLockStatistics
from .stats import ContentionPoint, LockStatistics, SiteStats, TaskLockStats, TimeStats

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

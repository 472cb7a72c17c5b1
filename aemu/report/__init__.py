"""Reports read from a run's frozen snapshots; the simulation core never prints.

* :mod:`aemu.report.sync_profile`: QEMU's ``info sync-profile`` table (util/qsp.c), exactly;
* :mod:`aemu.report.lock_stat`: Linux's ``/proc/lock_stat`` layout;
* :mod:`aemu.report.tables`: the ``aemu run`` report (rich tables or plain text).
"""

from __future__ import annotations

from .lock_stat import format_lock_stat
from .sync_profile import format_sync_profile, parse_sync_profile_args
from .tables import render_run_report

__all__ = [
    "format_lock_stat",
    "format_sync_profile",
    "parse_sync_profile_args",
    "render_run_report",
]

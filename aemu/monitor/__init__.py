"""The QMP monitor: steer and inspect a running machine with QEMU's own tools (``qemu.qmp``, ``qmp-shell``).

* :mod:`aemu.monitor.qmp` -- the server: framing, negotiation, events, limits (documented there);
* :mod:`aemu.monitor.commands` -- the QMP commands and :class:`Monitor`, what they act on;
* :mod:`aemu.monitor.hmp` -- HMP text commands through ``human-monitor-command``;
* :mod:`aemu.monitor.runner` -- a run with a monitor (``aemu run -qmp unix:PATH,server``).
"""

from __future__ import annotations

from .commands import COMMANDS, Monitor
from .hmp import execute_hmp
from .qmp import (
    MAX_CLIENTS,
    MAX_MESSAGE_BYTES,
    MAX_NESTING,
    MAX_OUTPUT_BYTES,
    JSONStreamer,
    QMPAddress,
    QMPError,
    QMPServer,
    parse_qmp_option,
)
from .runner import run_with_monitor, serve

__all__ = [
    "COMMANDS",
    "MAX_CLIENTS",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "MAX_OUTPUT_BYTES",
    "JSONStreamer",
    "Monitor",
    "QMPAddress",
    "QMPError",
    "QMPServer",
    "execute_hmp",
    "parse_qmp_option",
    "run_with_monitor",
    "serve",
]

"""Workloads by name: the built-in table, and :func:`register` for workloads of your own.

:data:`BUILTIN_WORKLOADS` lists the workloads aemu ships (``--workload NAME``); :data:`WORKLOADS`
starts as that table and :func:`register` adds to it. The table is written here, once: the
built-in modules (:mod:`.micro`, :mod:`.boot`) register nothing when imported. The trace replay
workload (:mod:`.replay`) is not in it: it needs a trace, and :func:`aemu.replay.replay` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..result import Metric
from .base import Workload
from .boot import Boot
from .micro import HPETBench, Idle, PMTimerBench

__all__ = ["BUILTIN_WORKLOADS", "Metric", "WORKLOADS", "Workload", "get_workload", "register"]

#: The workloads aemu ships, in ``--help`` order.
BUILTIN_WORKLOADS: tuple[type[Workload], ...] = (HPETBench, PMTimerBench, Idle, Boot)

#: Every workload by name: the built-ins and those added with :func:`register`.
WORKLOADS: dict[str, Callable[..., Workload]] = {cls.name: cls for cls in BUILTIN_WORKLOADS}


def register(cls: type[Workload]) -> type[Workload]:
    """Make a workload available by its ``name`` (usable as a class decorator; replaces a namesake)."""
    WORKLOADS[cls.name] = cls
    return cls


def get_workload(name: str, **params: Any) -> Workload:
    """The workload called ``name`` built with ``params`` (ConfigError listing the accepted names otherwise)."""
    try:
        factory = WORKLOADS[name]
    except KeyError:
        raise ConfigError(f"unknown workload {name!r}; accepted: {', '.join(sorted(WORKLOADS))}") from None
    return factory(**params)

"""Workloads by name: the built-in table, and :func:`register` for workloads of your own.

:data:`BUILTIN_WORKLOADS` lists the workloads aemu ships (``--workload NAME``); :data:`WORKLOADS`
starts as that table and :func:`register` adds to it. The table is written here, once: no module
registers anything when imported. ``replay`` (:class:`aemu.replay.ReplayWorkload`) is in it so
that its name is known, but it needs a trace: ``aemu replay TRACE`` or :func:`aemu.replay.replay`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..replay.workload import ReplayWorkload
from .base import Workload
from .boot import Boot
from .console import Console
from .micro import HPETBench, HPETTorture, Idle, PMTimerBench

__all__ = ["BUILTIN_WORKLOADS", "WORKLOADS", "Workload", "get_workload", "register"]

#: The workloads aemu ships, in ``--help`` order.
BUILTIN_WORKLOADS: tuple[type[Workload], ...] = (HPETBench, HPETTorture, PMTimerBench, Idle, Boot, Console, ReplayWorkload)

#: Every workload by name: the built-ins and those added with :func:`register`.
WORKLOADS: dict[str, Callable[..., Workload]] = {cls.name: cls for cls in BUILTIN_WORKLOADS}


def register(cls: type[Workload]) -> type[Workload]:
    """Make a workload of your own available by its ``name`` (``--workload NAME``, ``Machine``,
    ``simulate``); usable as a class decorator; replaces a namesake. Also ``aemu.register_workload``."""
    WORKLOADS[cls.name] = cls
    return cls


def get_workload(name: str, **params: Any) -> Workload:
    """The workload called ``name`` built with ``params`` (ConfigError listing the accepted names otherwise)."""
    try:
        factory = WORKLOADS[name]
    except KeyError:
        raise ConfigError(f"unknown workload {name!r}; accepted: {', '.join(sorted(WORKLOADS))}") from None
    return factory(**params)

"""What a workload is: guest programs per vCPU, a metric, and when the run is over.

A workload hands each vCPU a guest program (a generator of exits, see :mod:`aemu.cpu`) and says
how to score the run. Users write their own by subclassing :class:`Workload` and registering it
with :func:`aemu.workloads.register`.
"""

from __future__ import annotations

import abc
import random
from typing import TYPE_CHECKING, Any

from ..cpu import GuestProgram
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..machine import Machine
    from ..result import Metric

__all__ = ["Workload"]


class Workload(abc.ABC):
    """Base class: override :meth:`program` and :meth:`metric`."""

    #: The name used on the command line (``--workload NAME``).
    name = "workload"
    #: One line for ``--help`` and reports.
    summary = ""
    #: True if the run ends only when stopped or at ``--duration`` (e.g. ``idle``).
    open_ended = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults()))
        if unknown:
            raise ConfigError(f"workload {self.name!r}: unknown parameter {unknown[0]!r}; "
                              f"accepted: {', '.join(sorted(self.defaults())) or 'none'}")
        self.params = {**self.defaults(), **params}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Tunable parameters and their defaults."""
        return {}

    def setup(self, machine: Machine) -> None:
        """Called once the machine is built, before vCPUs start."""

    @abc.abstractmethod
    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        """The guest program vCPU ``index`` runs."""

    @abc.abstractmethod
    def metric(self, machine: Machine) -> Metric:
        """Score a finished (or capped) run."""


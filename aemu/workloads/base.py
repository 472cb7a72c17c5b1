"""What a workload is: guest programs per vCPU, a metric, and when the run is over.

A workload hands each vCPU a guest program (a generator of exits, see :mod:`aemu.cpu`) and says
how to score the run. Users write their own by subclassing :class:`Workload` and registering it
with :func:`aemu.workloads.register`.
"""

from __future__ import annotations

import abc
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..cpu import GuestProgram
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..machine import Machine
    from ..result import Metric

__all__ = ["Param", "Workload"]


@dataclass(frozen=True, slots=True)
class Param:
    """A workload parameter (``--param NAME=VALUE``): its default, what it is, and its range.

    The default's type is the parameter's: an ``int`` default takes integers only, a ``float``
    default any finite number.
    """

    default: int | float
    help: str = ""
    min: int | float = 0
    max: int | float | None = None

    def check(self, workload: str, name: str, value: Any) -> int | float:
        """``value`` if it has the parameter's type and is in range (ConfigError naming both otherwise)."""
        integral = isinstance(self.default, int)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (isinstance(value, int) or not integral and math.isfinite(value))
        if not ok or value < self.min or (self.max is not None and value > self.max):
            raise ConfigError(f"workload {workload!r}: parameter {name} must be {self.describe()}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def describe(self) -> str:
        """``"an integer >= 1"``, ``"an integer from 0 to 32"``."""
        kind = "an integer" if isinstance(self.default, int) else "a number"
        if self.max is None:
            return f"{kind} >= {self.min}"
        return f"{kind} from {self.min} to {self.max}"


class Workload(abc.ABC):
    """Base class: override :meth:`program` and :meth:`metric`."""

    #: The name used on the command line (``--workload NAME``).
    name = "workload"
    #: One line for ``--help`` and reports.
    summary = ""
    #: True if the run ends only when stopped or at ``--duration`` (e.g. ``idle``).
    open_ended = False
    #: The parameters (``--param NAME=VALUE``), checked when the workload is built.
    parameters: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults()))
        if unknown:
            raise ConfigError(f"workload {self.name!r}: unknown parameter {unknown[0]!r}; "
                              f"accepted: {', '.join(sorted(self.defaults())) or 'none'}")
        for key, value in params.items():
            if key in self.parameters:
                self.parameters[key].check(self.name, key, value)
        self.params = {**self.defaults(), **params}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Tunable parameters and their defaults (those of :attr:`parameters` unless overridden)."""
        return {key: p.default for key, p in cls.parameters.items()}

    def setup(self, machine: Machine) -> None:
        """Called once the machine is built, before vCPUs start."""

    @abc.abstractmethod
    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        """The guest program vCPU ``index`` runs."""

    @abc.abstractmethod
    def metric(self, machine: Machine) -> Metric:
        """Score a finished (or capped) run."""


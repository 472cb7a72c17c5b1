"""Replaying a QEMU trace log on the modelled machine: :func:`replay` and what it is built from.

* :mod:`.trace` -- the parser: ``memory_region_ops_read/write`` lines into a :class:`Trace`.
* :mod:`.workload` -- :class:`ReplayWorkload`: the trace's accesses as guest programs, generic
  stand-ins for regions aemu does not model, the device context (``cpu -1``), scaling to ``-smp N``.
* :mod:`.report` -- :class:`ReplayReport`: what was mapped, replicated and replayed, and the
  per-region counts checked against what the trace asks for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .report import CountMismatch, GenericRegionInfo, ReplayReport
from .trace import Access, Trace, TraceError, TraceSummary, load_trace, parse_trace
from .workload import ReplayWorkload, stream_assignment

if TYPE_CHECKING:
    from ..config import MachineConfig
    from ..result import Result
    from ..runner import ProgressFn
    from ..trace import Tracer

__all__ = [
    "Access", "CountMismatch", "GenericRegionInfo", "ReplayReport", "ReplayWorkload", "Trace",
    "TraceError", "TraceSummary", "load_trace", "parse_trace", "replay", "stream_assignment",
]


def replay(trace_path: str | os.PathLike[str] | Trace, config: MachineConfig, *, time_scale: float = 1.0,
           lenient: bool = False, tracer: Tracer | None = None, progress: ProgressFn | None = None,
           device_context: bool = True) -> tuple[Result, ReplayReport]:
    """Replay a trace on the machine ``config`` describes; returns the run's result and a report.

    The run has no virtual-time cap unless ``config.duration_ns`` sets one (the guest programs are
    finite); the cap ends the device context (cpu -1) too, however late its recorded accesses.
    ``config.workload`` is recorded as ``replay``.
    """
    from .. import clock
    from ..result import Result
    from ..runner import run_machine

    trace = trace_path if isinstance(trace_path, Trace) else load_trace(trace_path, lenient=lenient)
    config = config.replace(workload="replay", workload_params=(("time_scale", time_scale),))
    workload = ReplayWorkload(trace, time_scale=time_scale, device_context=device_context)
    machine = clock.run(run_machine(config, workload, tracer=tracer, progress=progress, default_cap_ns=None))
    result = Result.from_machine(machine)
    return result, workload.report(machine, result)

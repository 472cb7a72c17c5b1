"""aemu: emulate how a VMM's vCPUs, memory-mapped devices and the Big QEMU Lock interact,
in virtual time, on asyncio.

The public API, re-exported here:

* virtual time (:mod:`aemu.clock`): :func:`run`, :func:`now_ns`, :func:`sleep_ns`,
  :func:`clock_get_ns` with :data:`VIRTUAL`/:data:`REALTIME`/:data:`HOST`, :class:`VirtualTimeLoop`;
* locks (:mod:`aemu.sync`): :class:`Lock` (the BQL and device mutexes, with lock_stat/QSP
  accounting), :class:`SeqLock`, :func:`bql_locked`, and their frozen statistics;
* QEMU's memory API (:mod:`aemu.memory`): :class:`MemoryRegion`, :class:`MemoryRegionOps`,
  :class:`AddressSpace`, :class:`MemTxResult`, :func:`prepare_mmio_access`, :func:`mtree_text`;
* the machine (:mod:`aemu.machine`, :mod:`aemu.config`, :mod:`aemu.cpu`): :class:`MachineConfig`
  (``MachineConfig.parse("-M q35,hpet=off -smp 240,sockets=4 ...")``), :func:`simulate` returning a
  :class:`Result` (``result.to_dict()`` is the ``aemu.result/1`` document), :class:`Machine`,
  :class:`CostModel`, guest exits (:class:`PIORead`, :class:`MMIORead`, :class:`Compute`,
  :class:`Halt`, ...), spin barriers in guest memory (:class:`GuestBarrier`, :class:`Arrive`,
  :class:`SpinUntil`) and :class:`Workload` for guest programs of your own;
* host CPUs (:mod:`aemu.sched`): :class:`HostCPUs` shares N CPUs among :class:`HostThread` s in
  time slices (lock-holder preemption, KVM's directed yield), with the wake-up policy
  :class:`EEVDF` or :class:`CFS` (``--host-cpus``, ``--host-sched``);
* the checker (:mod:`aemu.check`): :func:`check` runs a machine in checker mode and returns a
  :class:`CheckReport` whose ``findings`` name races, IRQ updates without the BQL and lock-order
  inversions (``aemu check``);
* embedding (:mod:`aemu.embed`): :func:`simulate_async` and :func:`live` (snapshots) for asyncio,
  uvloop and trio apps, :func:`run_realtime` on the app's own loop;
* errors (:mod:`aemu.errors`).
"""

from __future__ import annotations

import os as _os
import signal as _signal
import sys as _sys

# Run as the ``aemu`` command, a Ctrl-C while the package is still importing ends it quietly
# (exit 130) like one after start-up, not with a KeyboardInterrupt traceback; the CLI installs
# its own handling once it runs, and a program importing aemu keeps Python's default.
_quiet_start = ((bool(_sys.argv) and _os.path.basename(_sys.argv[0]) == "aemu")
                or "aemu.cli" in getattr(_sys, "orig_argv", ())[1:3])  # python -m aemu.cli
if _quiet_start:
    def _quit(signum: int, frame: object) -> None:
        raise SystemExit(130)

    _signal.signal(_signal.SIGINT, _quit)

from .clock import (
    HOST,
    REALTIME,
    VIRTUAL,
    VIRTUAL_RT,
    QEMUClockType,
    VirtualTimeLoop,
    call_at_ns,
    clock_get_ns,
    now_ns,
    run,
    sleep_ns,
)
from .config import SMP, MachineConfig
from .costs import CostModel
from .cpu import (VCPU, Arrive, Compute, GuestBarrier, GuestError, Halt, LAPICTimer, MMIORead, MMIOWrite, PIORead, PIOWrite,
                  SendIPI, SpinUntil)
from .errors import (
    AddressOutOfRangeError,
    AemuError,
    ConfigError,
    InvalidAccessSizeError,
    InvalidOffsetError,
    InvalidSizeError,
    LayoutError,
    NeedsAsyncioError,
    RegionInUseError,
    RegionOutOfBoundsError,
    SimulationDeadlock,
)
from .memory import (
    AddressSpace,
    FlatRange,
    MemoryRegion,
    MemoryRegionOps,
    MemTxResult,
    mtree_text,
    prepare_mmio_access,
)
from .embed import Snapshot, live, run_realtime, simulate_async
from .machine import Machine, simulate, simulate_machine
from .result import Metric, Result
from .sched import CFS, EEVDF, HostCPUs, HostThread
from .sync import (
    ContentionPoint,
    Lock,
    LockStatistics,
    SeqLock,
    SeqLockStatistics,
    SiteStats,
    TaskLockStats,
    TimeStats,
    bql_locked,
)

from .workloads import Workload
from .workloads import register as register_workload
from .check import CheckReport, Finding, check  # noqa: E402  (the function shadows the module: aemu.check(...))

__version__ = "0.1.0"

__all__ = [
    "HOST", "REALTIME", "VIRTUAL", "VIRTUAL_RT", "QEMUClockType", "VirtualTimeLoop",
    "call_at_ns", "clock_get_ns", "now_ns", "run", "sleep_ns",
    "AddressOutOfRangeError", "AemuError", "ConfigError", "InvalidAccessSizeError",
    "InvalidOffsetError", "InvalidSizeError", "LayoutError", "NeedsAsyncioError", "RegionInUseError",
    "RegionOutOfBoundsError", "SimulationDeadlock",
    "AddressSpace", "FlatRange", "MemoryRegion", "MemoryRegionOps", "MemTxResult",
    "mtree_text", "prepare_mmio_access",
    "ContentionPoint", "Lock", "LockStatistics", "SeqLock", "SeqLockStatistics", "SiteStats",
    "TaskLockStats", "TimeStats", "bql_locked",
    "SMP", "MachineConfig", "CostModel", "VCPU", "Compute", "GuestError", "Halt", "LAPICTimer",
    "MMIORead", "MMIOWrite", "PIORead", "PIOWrite", "SendIPI", "GuestBarrier", "Arrive", "SpinUntil",
    "Machine", "simulate", "simulate_machine",
    "CFS", "EEVDF", "HostCPUs", "HostThread",
    "Result", "Workload", "Metric", "register_workload",
    "Snapshot", "live", "run_realtime", "simulate_async",
    "CheckReport", "Finding", "check",
    "__version__",
]

if _quiet_start:
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)

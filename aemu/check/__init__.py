"""Is it safe to drop the BQL? The checker mode: races, QEMU's lock rules, lock order.

``report = aemu.check(machine_or_config)`` runs a machine to completion with the checker attached
(:class:`~aemu.check.checker.Checker`) and returns a :class:`~aemu.check.report.CheckReport`
whose ``findings`` have ``.kind`` (``"race"``, ``"irq-without-bql"``, ``"lock-order"``),
``.subject`` (``ClassName.attribute``, ``gsi N``, ``A -> B -> A``) and ``.sites`` (strings: task,
virtual time, what was done where, the locks held). ``aemu check`` and ``aemu run --check`` print
them; the result document carries them under ``check``.

* :mod:`.lockset` -- Eraser's states and the pairwise lockset comparison;
* :mod:`.order` -- the lock-order graph (lockdep);
* :mod:`.watch` -- how a machine's devices, locks and seqlocks are watched (only while checking);
* :mod:`.checker` -- the :class:`Checker` that ties them to tasks, locks and QEMU's rules;
* :mod:`.report` -- :class:`Finding`, :class:`CheckReport` and their text.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .checker import Checker
from .report import KINDS, CheckReport, Finding

if TYPE_CHECKING:
    from ..config import MachineConfig
    from ..machine import Machine
    from ..runner import ProgressFn
    from ..trace import Tracer
    from ..workloads.base import Workload

__all__ = ["KINDS", "CheckReport", "Checker", "Finding", "check"]


def check(target: Machine | MachineConfig | str, workload: Workload | None = None, *,
          duration_ns: int | None = None, tracer: Tracer | None = None,
          progress: ProgressFn | None = None, keep_partial: bool = False) -> CheckReport:
    """Run ``target`` to completion in checker mode and report what the checker found.

    ``target`` is a built :class:`aemu.machine.Machine` that has not run yet (a custom device
    added to it is watched like the built-in ones), or a :class:`aemu.MachineConfig` (or its
    option string) to build one from, with ``workload`` if given. The run is a normal virtual-time
    run (:func:`aemu.runner.run_machine`: ``--duration`` or the default cap; a replay has none);
    ``report.result`` is its :class:`aemu.Result`, whose document has the findings under
    ``check``. ``tracer`` receives the run's spans and an instant event at each finding's accesses.
    """
    from .. import clock
    from ..config import MachineConfig
    from ..machine import Machine
    from ..result import Result
    from ..runner import DEFAULT_CAP_NS, run_machine

    checker = Checker(tracer=tracer)
    if isinstance(target, Machine):
        if workload is not None:
            raise TypeError("aemu.check: a workload goes with a configuration, not with a built Machine")
        if any(c.task is not None for c in target.vcpus):
            raise RuntimeError("aemu.check needs a machine that has not run yet; build a new one")
        checker.attach(target)
        name = target.workload.name
    else:  # built by run_machine on the run's loop, as simulate() builds it: the same figures
        name = workload.name if workload is not None else (
            target if isinstance(target, MachineConfig) else MachineConfig.parse(target)).workload
    try:
        machine = clock.run(run_machine(
            target, workload, tracer=tracer, duration_ns=duration_ns, progress=progress,
            default_cap_ns=None if name == "replay" else DEFAULT_CAP_NS, keep_partial=keep_partial,
            on_start=None if isinstance(target, Machine) else checker.attach))
    finally:
        checker.detach()
    report = checker.report(config=machine.config)
    result = dataclasses.replace(Result.from_machine(machine), check=report.to_dict())
    return dataclasses.replace(report, result=result)

"""A run with a QMP monitor: the machine and the QMP server on one loop (``aemu run -qmp ...``).

Real time (:func:`serve` with ``realtime=True``, or ``aemu run --realtime -qmp ...``): with
``wait=on`` (the default) the machine starts when the first client connects, as QEMU waits for
its ``server,wait=on`` chardev; ``stop`` parks the vCPUs at their next entry and holds the main
loop's timers (wall time goes on). Virtual time: with ``wait=on`` the machine starts paused
(``prelaunch``) and virtual time stands still until a client sends ``cont``; while paused the loop
serves only the sockets.

The run ends with a ``SHUTDOWN`` event (``data.reason``): ``quit`` ("host-qmp-quit"), every
vCPU's program returned ("guest-shutdown", ``guest: true``), ``--duration`` reached ("none"), or
Ctrl-C / cancellation ("host-signal", the Result then has ``interrupted`` set). The server is
closed (the unix socket removed) and the run's :class:`~aemu.result.Result` returned. The run
itself is :func:`aemu.runner.run_machine`'s, with the monitor's ``quit`` as its stop request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .. import clock
from ..config import MachineConfig
from ..machine import Machine
from ..result import Result
from ..runner import run_machine, run_on_host_loop
from ..trace import Tracer
from ..workloads.base import Workload
from .commands import Monitor
from .qmp import QMPAddress, QMPServer, parse_qmp_option

__all__ = ["run_with_monitor", "serve"]


async def serve(config: MachineConfig | str, address: QMPAddress | str, *, realtime: bool = True,
                workload: Workload | None = None, duration_s: float | None = None, tracer: Tracer | None = None,
                on_listening: Callable[[QMPServer], object] | None = None) -> Result:
    """Run ``config`` with a QMP server on ``address`` until quit, the end, the duration, or cancel.

    ``realtime`` says which loop this runs on (real time: a host loop; else a virtual-time loop)
    and so how the run starts. ``duration_s`` defaults to the config's ``--duration`` (wall
    seconds in real time, virtual seconds otherwise; a virtual-time run of a workload that ends
    has the usual 2 s cap). ``on_listening(server)`` is called once the socket listens
    (``server.bound`` has the port).
    """
    if isinstance(config, str):
        config = MachineConfig.parse(config)
    if isinstance(address, str):
        address = parse_qmp_option(address)
    machine = Machine(config, workload, realtime=realtime)
    start_paused = address.wait and not realtime
    monitor = Monitor(machine, start_paused=start_paused)
    server = QMPServer(monitor, address)
    monitor.emit = server.emit_event
    await server.start()
    try:
        if on_listening is not None:
            on_listening(server)
        if realtime and address.wait:
            await server.first_client.wait()
        if start_paused:
            machine.pause()
        await run_machine(machine, tracer=tracer, stop=monitor.quit_requested, keep_partial=True,
                          duration_ns=None if duration_s is None else round(duration_s * clock.NS_PER_S))
    except asyncio.CancelledError:
        machine.interrupted = True  # before the run started (waiting for a client)
    finally:
        if machine.interrupted:
            reason, guest = "host-signal", False
        elif monitor.quit_requested.is_set():
            reason, guest = "host-qmp-quit", False
        elif machine.finished:
            reason, guest = "guest-shutdown", True
        else:
            reason, guest = "none", False  # --duration reached
        monitor.shutdown(reason, guest=guest)
        # after `quit` the client hangs up itself (qmp-shell reads its next line first): give it
        # a moment, so it does not see EOF mid-read, as it would not with QEMU's slower teardown
        await server.close(linger_s=1.0 if reason == "host-qmp-quit" else 0.0)
    return Result.from_machine(machine)


def run_with_monitor(config: MachineConfig | str, address: QMPAddress | str, *, realtime: bool = True,
                     workload: Workload | None = None, duration_s: float | None = None, tracer: Tracer | None = None,
                     on_listening: Callable[[QMPServer], object] | None = None) -> Result:
    """:func:`serve` on a fresh loop: uvloop (asyncio if missing) in real time, else a virtual-time loop.
    Ctrl-C ends the run with its partial report."""
    coro = serve(config, address, realtime=realtime, workload=workload, duration_s=duration_s, tracer=tracer,
                 on_listening=on_listening)
    if not realtime:
        return clock.run(coro)
    return run_on_host_loop(coro)

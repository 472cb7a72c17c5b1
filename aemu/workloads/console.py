"""``console``: someone types at the serial console while the guest reads and echoes it.

The host side is QEMU's chardev: every ``line_gap_ns`` a line of input reaches the UART from the
main loop, under the BQL (``fd_chr_read`` -> ``qemu_chr_be_write`` -> ``serial_receive1``). The
guest is a getty on vCPU 0: it turns the FIFOs on (trigger level 14, so a short line waits for the
FIFO timeout timer, ``fifo_timeout_int``, which the main loop runs), enables the receive
interrupt, then polls LSR and reads RBR until it has every character, echoing each to THR. The
other vCPUs read the ACPI PM timer now and then. It is the case where the UART's state is touched
by a vCPU and by the main loop: what ``aemu check --lockless serial`` needs to show a race. The
metric is the mean time from a line's arrival to its last character read.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from ..cpu import Compute, GuestProgram, PIORead, PIOWrite
from ..result import Metric
from .base import Param, Workload

if TYPE_CHECKING:
    from ..machine import Machine

__all__ = ["Console"]

_RBR_THR, _IER, _FCR, _LSR = 0x3F8, 0x3F9, 0x3FA, 0x3FD
_LINE = b"uname -a\r"


class Console(Workload):
    """Input typed at the serial console, read and echoed by vCPU 0 (see module docstring)."""

    name = "console"
    summary = "the host types lines into the UART (main loop), vCPU 0 polls, reads and echoes them"
    parameters = {
        "lines": Param(4, "lines typed", min=1, max=1000),
        "line_gap_ns": Param(300_000, "time between two lines, ns", min=1),
        "poll_ns": Param(2_000, "guest compute between two LSR polls, ns", min=1),
    }

    def setup(self, machine: Machine) -> None:
        self.typed: list[int] = []
        self.read_at: list[int] = []
        serial = machine.serial
        gap = int(self.params["line_gap_ns"])
        left = int(self.params["lines"])

        def type_line() -> None:  # the main loop, BQL held
            nonlocal left
            self.typed.append(machine.host.now_ns())
            serial._input.extend(_LINE)
            serial._accept_input()
            left -= 1
            if left:
                self._timer.mod_ns(machine.host.now_ns() + gap)

        self._timer = machine.host.timer_new_ns("chardev-input", type_line)

    def start_side_tasks(self, machine: Machine) -> list[asyncio.Task[None]]:
        """Arm the first line's timer once the run's loop runs (the machine may be built before)."""
        async def arm() -> None:
            self._timer.mod_ns(machine.host.now_ns() + int(self.params["line_gap_ns"]))

        return [asyncio.get_running_loop().create_task(arm(), name="chardev")]

    def program(self, machine: Machine, index: int, rng: random.Random) -> GuestProgram:
        poll = Compute(int(self.params["poll_ns"]))
        if index != 0:
            for _ in range(20):
                yield PIORead(machine.pm_timer_port, 4)
                yield Compute(50_000)
            return
        yield PIOWrite(_FCR, 0xC7, 1)  # FIFO on, both cleared, trigger level 14
        yield PIOWrite(_IER, 0x01, 1)  # receive interrupt
        want = int(self.params["lines"]) * len(_LINE)
        got = 0
        while got < want:
            lsr = yield PIORead(_LSR, 1)
            if lsr & 0x01:  # DR
                ch = yield PIORead(_RBR_THR, 1)
                got += 1
                if got % len(_LINE) == 0:
                    self.read_at.append(machine.host.now_ns())
                yield PIOWrite(_RBR_THR, ch, 1)  # echo
            else:
                yield poll

    def metric(self, machine: Machine) -> Metric:
        lat = [r - t for t, r in zip(self.typed, self.read_at)]
        return Metric("mean line latency", sum(lat) / len(lat) / 1000 if lat else 0.0, "us")

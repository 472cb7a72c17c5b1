"""Exception types aemu raises for bad input and for simulations that cannot go on.

Layout errors are raised when a memory layout is *built* (a user mistake in a machine or device
description). A guest's bad access at run time is never an exception: it is a result code.
"""

from __future__ import annotations


class AemuError(Exception):
    """Base class of every error aemu raises on purpose."""


class SimulationDeadlock(AemuError, RuntimeError):
    """Nothing is ready, no timer is pending, and tasks are still blocked.

    The message names every blocked task and what it waits on.
    """

    def __init__(self, message: str, blocked: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: task name -> what it waits on
        self.blocked: dict[str, str] = dict(blocked or {})


class NeedsAsyncioError(AemuError, RuntimeError):
    """A machine was to run where no asyncio event loop is running (under trio, or outside async code).

    aemu's machines are asyncio tasks: virtual time on a :class:`~aemu.clock.VirtualTimeLoop`,
    real time on the running asyncio loop (uvloop welcome). The message says what to do instead.
    """

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs a running asyncio event loop and none is running here: aemu runs machines on "
            "asyncio (a VirtualTimeLoop for virtual time, any asyncio loop, uvloop included, for real time). "
            "Under trio, run a virtual-time machine with aemu.simulate_async or aemu.live, and a real-time one "
            "in a thread: await trio.to_thread.run_sync(aemu.embed.run_realtime_blocking, config)")
        self.what = what


class LayoutError(AemuError, ValueError):
    """A memory layout that cannot be built (base class of the specific cases below)."""


class InvalidSizeError(LayoutError):
    """A region size that is zero, negative, or too large for the address space."""


class InvalidOffsetError(LayoutError):
    """A negative subregion offset or alias offset."""


class RegionOutOfBoundsError(LayoutError):
    """A subregion (or alias window) that does not fit inside its container (or target)."""


class InvalidAccessSizeError(LayoutError):
    """Access-size limits in MemoryRegionOps outside 1..8, not powers of two, or min > max."""


class AddressOutOfRangeError(LayoutError):
    """An address beyond the end of the address space it is used in."""


class RegionInUseError(LayoutError):
    """A region added twice, or added to a container while it already has a parent."""


class ConfigError(AemuError, ValueError):
    """A machine, patch or cost configuration that cannot be used."""

"""aemu: emulate how a VMM's vCPUs, memory-mapped devices and the Big QEMU Lock interact,
in virtual time, on asyncio."""

from __future__ import annotations

__version__ = "0.1.0"

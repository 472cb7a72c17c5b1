"""QEMU's memory API: MemoryRegion, AddressSpace, FlatView, dispatch under the BQL, ``info mtree``.

Models ``system/memory.c`` and the dispatch half of ``system/physmem.c`` as they are after the
BQL-free PIO/MMIO series (QEMU 10.2):

* A :class:`MemoryRegion` is an I/O region (callbacks in :class:`MemoryRegionOps`), RAM, ROM, a
  container, or an alias (a window onto another region). Subregions are placed at an offset with
  a priority; ``enabled`` can be toggled; ``lockless_io`` (set by :meth:`MemoryRegion.enable_lockless_io`,
  QEMU's ``memory_region_enable_lockless_io()``) lets dispatch skip the BQL.
* An :class:`AddressSpace` renders its root into a :class:`FlatView` once, and again only after
  the topology under the root changed (``render_memory_region`` / ``generate_memory_topology``);
  lookups are a bisect over the sorted range starts (:mod:`.flatview`).
* :meth:`AddressSpace.access` resolves ``(addr, size)`` once into a :class:`MemoryAccess`, cached
  until the next render (:mod:`.dispatch`). Its ``read_nowait()``/``write_nowait()`` complete an
  access that needs no lock (RAM/ROM, errors, a lockless region, a caller holding the BQL) and
  return None otherwise; its ``read()``/``write()`` are the one path that may wait:
  :func:`prepare_mmio_access` takes the BQL for a region that is not lockless, then
  ``memory_region_dispatch_read/write`` applies the per-device re-entrancy guard and splits or
  widens the access to the ops' ``impl`` limits (``access_with_adjusted_size``).
  :meth:`AddressSpace.read`/:meth:`AddressSpace.write` are those two steps for one-off callers.
* :func:`mtree_text` prints ``info mtree`` (and ``info mtree -f``) in QEMU 7.2's format (:mod:`.mtree`).

Run-time guest mistakes are results (:class:`MemTxResult`), never exceptions; layout mistakes
raise the :mod:`aemu.errors` layout errors when the layout is built.

Where aemu differs from QEMU (on purpose, to keep one simple rule per case):

* A failed read (decode error, invalid access, blocked re-entrant access) returns all-ones of the
  access size. QEMU returns 0 from ``unassigned_mem_read`` for those; all-ones is what a PC guest
  sees from an absent device (QEMU's q35 I/O space gets it from the ``io`` root region, whose
  ``unassigned_io_ops`` read -1 with MEMTX_OK, and aemu renders that the same way if the root is
  an I/O region).
* An access whose size is outside the region's ``valid`` limits (or unaligned without
  ``valid_unaligned``) returns ``ACCESS_ERROR`` and takes no lock; QEMU's
  ``memory_region_dispatch_read`` returns ``MEMTX_DECODE_ERROR`` after taking the BQL. An access
  that hits no region takes no lock either (QEMU dispatches it to ``io_mem_unassigned`` under the
  BQL).
* An access that spans FlatRanges is split at their boundaries into power-of-two pieces, each
  dispatched on its own; QEMU's ``memory_access_size`` also cuts pieces to the region's
  ``valid_max`` and alignment, which aemu leaves to ``valid`` (rejected) and ``impl`` (split).
* Writes to ROM are dropped with ``DECODE_ERROR`` without taking the BQL.
* Every blocked re-entrant access is recorded (QEMU's ``warn_report_once`` prints the first only).
* Only little-endian devices (x86's case); ``impl``/``valid`` split and widen as QEMU does for
  ``DEVICE_LITTLE_ENDIAN``.
"""

from .dispatch import MemoryAccess, prepare_mmio_access
from .flatview import FlatRange, FlatView
from .mtree import mtree_text
from .region import MemoryRegion, MemoryRegionOps, MemoryRegionStatistics, MemReentrancyGuard, MemTxResult
from .space import AddressSpace, AddressSpaceStatistics

__all__ = [
    "AddressSpace",
    "AddressSpaceStatistics",
    "FlatRange",
    "FlatView",
    "MemReentrancyGuard",
    "MemTxResult",
    "MemoryAccess",
    "MemoryRegion",
    "MemoryRegionOps",
    "MemoryRegionStatistics",
    "mtree_text",
    "prepare_mmio_access",
]

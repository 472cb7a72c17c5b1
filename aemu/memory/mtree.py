"""HMP ``info mtree`` in QEMU 7.2's format (``mtree_print_mr``, ``mtree_print_flatview``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .flatview import flatview_root
from .region import _RAM, _ROM, _U64, MemoryRegion

if TYPE_CHECKING:
    from .space import AddressSpace

__all__ = ["mtree_text"]


def _region_type(mr: MemoryRegion) -> str:
    """QEMU 7.2's ``memory_region_type``: an alias has its target's type; containers print as i/o."""
    while mr._alias is not None:
        mr = mr._alias
    if mr._kind == _ROM:
        return "rom"
    if mr._kind == _RAM:
        return "ram"
    return "i/o"


def _mtree_print_mr(
    out: list[str],
    mr: MemoryRegion,
    level: int,
    base: int,
    alias_queue: list[MemoryRegion],
    display_disabled: bool,
) -> None:
    """QEMU's ``mtree_print_mr``; aemu appends `` [lockless]`` to lockless regions."""
    cur_start = base + mr._addr
    cur_end = cur_start + mr._size - 1
    overflow = "[DETECTED OVERFLOW!] " if cur_end > _U64 else ""
    cur_start &= _U64
    cur_end &= _U64
    suffix = ("" if mr._enabled else " [disabled]") + (" [lockless]" if mr.lockless_io else "")
    alias = mr._alias
    if alias is not None:
        if not any(q is alias for q in alias_queue):
            alias_queue.append(alias)
        if mr._enabled or display_disabled:
            ao = mr._alias_offset
            out.append(
                f"{overflow}{'  ' * level}{cur_start:016x}-{cur_end:016x} (prio {mr._priority}, {_region_type(mr)}): "
                f"alias {mr.name} @{alias.name} {ao:016x}-{(ao + mr._size - 1) & _U64:016x}{suffix}"
            )
    elif mr._enabled or display_disabled:
        out.append(
            f"{overflow}{'  ' * level}{cur_start:016x}-{cur_end:016x} (prio {mr._priority}, {_region_type(mr)}): "
            f"{mr.name}{suffix}"
        )
    # siblings by address, then priority descending; stable for ties (QEMU's insertion sort)
    for sub in sorted(mr._subregions, key=lambda s: (s._addr, -s._priority)):
        _mtree_print_mr(out, sub, level + 1, cur_start, alias_queue, display_disabled)


def _mtree_flat(spaces: Iterable[AddressSpace], out: list[str]) -> None:
    """``info mtree -f``: one block per distinct FlatView, with the spaces that share it."""
    groups: dict[int, tuple[MemoryRegion | None, list[AddressSpace]]] = {}
    for space in spaces:
        root = flatview_root(space.root)
        groups.setdefault(id(root) if root is not None else 0, (root, []))[1].append(space)
    for n, (root, members) in enumerate(groups.values()):
        out.append(f"FlatView #{n}")
        for space in members:
            line = f' AS "{space.name}", root: {space.root.name}'
            if space.root._alias is not None:
                line += f", alias {space.root._alias.name}"
            out.append(line)
        out.append(f" Root memory region: {root.name if root is not None else '(none)'}")
        ranges = members[0].flatview()
        if not ranges:
            out.append("  No rendered FlatView")
            out.append("")
            continue
        for start, end, mr, off in ranges:
            line = f"  {start:016x}-{end - 1:016x} (prio {mr._priority}, {_region_type(mr)}): {mr.name}"
            if off:
                line += f" @{off:016x}"
            if mr.lockless_io:
                line += " [lockless]"
            out.append(line)
        out.append("")


def mtree_text(*spaces: AddressSpace, flat: bool = False, disabled: bool = False) -> str:
    """HMP ``info mtree`` (``flat=True``: ``info mtree -f``; ``disabled=True``: ``-D``) in QEMU 7.2's format.

    Spaces that share a root print together (names sorted, as QEMU does); every alias target met
    is printed afterwards as ``memory-region: <name>``. As in QEMU, disabled regions are left out
    unless ``disabled=True``, which prints them with `` [disabled]``. aemu's addition: lockless
    regions end with `` [lockless]`` (QEMU prints nothing for them). Spaces print in the order
    given (QEMU's order is its hash table's).
    """
    out: list[str] = []
    if flat:
        _mtree_flat(spaces, out)
        return "\n".join(out) + "\n" if out else ""
    by_root: dict[int, tuple[MemoryRegion, list[AddressSpace]]] = {}
    for space in spaces:
        by_root.setdefault(id(space.root), (space.root, []))[1].append(space)
    alias_queue: list[MemoryRegion] = []
    for root, members in by_root.values():
        for space in sorted(members, key=lambda s: s.name.encode()):
            out.append(f"address-space: {space.name}")
        _mtree_print_mr(out, root, 1, 0, alias_queue, disabled)
        out.append("")
    i = 0
    while i < len(alias_queue):  # the queue grows while it is printed, as in QEMU
        mr = alias_queue[i]
        out.append(f"memory-region: {mr.name}")
        _mtree_print_mr(out, mr, 1, 0, alias_queue, disabled)
        out.append("")
        i += 1
    return "\n".join(out) + "\n" if out else ""

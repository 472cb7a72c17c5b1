"""Tests for aemu.memory: layouts, FlatView rendering, dispatch, the BQL, the re-entrancy guard, info mtree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aemu.clock import sleep_ns
from aemu.errors import (
    AddressOutOfRangeError,
    ConfigError,
    InvalidAccessSizeError,
    InvalidOffsetError,
    InvalidSizeError,
    LayoutError,
    RegionInUseError,
    RegionOutOfBoundsError,
)
from aemu.memory import (
    AddressSpace,
    FlatRange,
    MemoryRegion,
    MemoryRegionOps,
    MemTxResult,
    mtree_text,
    prepare_mmio_access,
)
from aemu.memory.dispatch import DirectAccess, InvalidAccess, IOAccess, SplitAccess, UnassignedAccess
from aemu.sync import Lock, bql_locked

OK = MemTxResult.OK
DECODE_ERROR = MemTxResult.DECODE_ERROR
ACCESS_ERROR = MemTxResult.ACCESS_ERROR


def ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class Device:
    """An owner for regions (the re-entrancy guard is per owner)."""


class Recorder:
    """A device whose registers log every call: reads return ``value(offset)`` (default ``base + offset``)."""

    def __init__(self, base: int = 0, value: Callable[[int], int] | None = None) -> None:
        self.base = base
        self.value = value
        self.log: list[tuple[Any, ...]] = []
        self.bql_seen: list[bool] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        self.bql_seen.append(bql_locked())
        return self.value(offset) if self.value is not None else self.base + offset

    def write(self, offset: int, value: int, size: int) -> None:
        self.log.append(("w", offset, value, size))
        self.bql_seen.append(bql_locked())

    def ops(self, **kw: Any) -> MemoryRegionOps:
        return MemoryRegionOps(read=self.read, write=self.write, **kw)


def io(name: str, size: int, dev: Recorder | None = None, owner: Any = None, **kw: Any) -> MemoryRegion:
    dev = dev or Recorder()
    return MemoryRegion.io(name, size, dev.ops(**kw), owner=owner)


def flat(space: AddressSpace) -> list[tuple[int, int, str, int]]:
    return [(s, e, mr.name, off) for s, e, mr, off in space.flatview()]


# ---------------------------------------------------------------------------------------------
class TestMemoryRegionOps:
    @pytest.mark.parametrize(
        ("kw", "msg"),
        [
            ({"valid_max": 3}, "valid_max=3 is not an access size; use 1, 2, 4 or 8"),
            ({"impl_min": 0}, "impl_min=0 is not an access size; use 1, 2, 4 or 8"),
            ({"valid_max": 16}, "valid_max=16 is not an access size"),
            ({"valid_min": 8, "valid_max": 4}, "valid_min=8 is larger than valid_max=4; use valid_min <= valid_max"),
            ({"impl_min": 4, "impl_max": 2}, "impl_min=4 is larger than impl_max=2"),
        ],
    )
    def test_bad_access_sizes_are_rejected_at_construction(self, kw: dict[str, Any], msg: str) -> None:
        with pytest.raises(InvalidAccessSizeError, match=msg.replace("(", r"\(")):
            MemoryRegionOps(read=lambda o, s: 0, **kw)

    def test_defaults_are_1_to_4(self) -> None:
        ops = MemoryRegionOps()
        assert (ops.impl_min, ops.impl_max) == (1, 4)
        assert (ops.valid_min, ops.valid_max) == (1, 4)
        assert not ops.valid_unaligned

    def test_coroutine_handlers_are_detected_once(self) -> None:
        async def aread(o: int, s: int) -> int:
            return 0

        class Dev:
            async def write(self, o: int, v: int, s: int) -> None:
                pass

        ops = MemoryRegionOps(read=aread, write=Dev().write)
        assert ops.read_is_coroutine and ops.write_is_coroutine
        plain = MemoryRegionOps(read=lambda o, s: 0)
        assert not plain.read_is_coroutine and not plain.write_is_coroutine


# ---------------------------------------------------------------------------------------------
class TestLayoutErrors:
    def test_sizes(self) -> None:
        with pytest.raises(InvalidSizeError, match=r"region 'hpet': size 0x0 must be positive"):
            MemoryRegion.container("hpet", 0)
        with pytest.raises(InvalidSizeError, match=r"size -0x10 must be positive"):
            MemoryRegion.ram("ram", -16)
        with pytest.raises(InvalidSizeError, match=r"larger than 2\*\*64"):
            MemoryRegion.container("huge", (1 << 64) + 1)
        assert MemoryRegion.container("all", (1 << 64) - 1).size == 1 << 64  # QEMU's UINT64_MAX rule

    def test_negative_offset(self) -> None:
        c = MemoryRegion.container("pci", 0x1000)
        with pytest.raises(InvalidOffsetError, match=r"subregion 'x': offset -0x4 in container 'pci' is negative"):
            c.add_subregion(-4, io("x", 4))
        with pytest.raises(InvalidOffsetError, match=r"alias 'a': offset -0x1 into 'pci' is negative"):
            MemoryRegion.alias("a", c, -1, 4)

    def test_subregion_must_fit(self) -> None:
        pci = MemoryRegion.container("pci", 0x1000)
        with pytest.raises(RegionOutOfBoundsError) as exc:
            pci.add_subregion(0xFED00000, io("hpet", 0x400))
        assert str(exc.value) == (
            "subregion 'hpet' [0xfed00000, 0xfed00400) does not fit in container 'pci' of size 0x1000"
        )
        assert pci.subregions == ()

    def test_alias_window_must_fit_target(self) -> None:
        bios = MemoryRegion.rom("pc.bios", 0x40000)
        with pytest.raises(RegionOutOfBoundsError) as exc:
            MemoryRegion.alias("isa-bios", bios, 0x30000, 0x20000)
        assert str(exc.value) == (
            "alias 'isa-bios' window [0x30000, 0x50000) is outside its target 'pc.bios' of size 0x40000"
        )
        alias = MemoryRegion.alias("isa-bios", bios, 0x20000, 0x20000)
        with pytest.raises(RegionOutOfBoundsError):
            alias.alias_offset = 0x30000
        assert alias.alias_offset == 0x20000

    def test_region_in_use(self) -> None:
        a = MemoryRegion.container("a", 0x100)
        b = MemoryRegion.container("b", 0x100)
        r = io("serial", 8)
        a.add_subregion(0, r)
        msg = r"region 'serial' is already a subregion of 'a'; del_subregion it there first"
        with pytest.raises(RegionInUseError, match=msg):
            b.add_subregion(0, r)
        a.del_subregion(r)
        b.add_subregion(0x10, r)
        assert r.container_region is b and r.addr == 0x10

    def test_cycles_are_refused(self) -> None:
        outer = MemoryRegion.container("outer", 0x100)
        inner = MemoryRegion.container("inner", 0x80)
        outer.add_subregion(0, inner)
        with pytest.raises(RegionInUseError, match="would make a cycle"):
            inner.add_subregion(0, MemoryRegion.alias("loop", outer, 0, 0x10))
        lonely = MemoryRegion.container("lonely", 0x10)
        with pytest.raises(RegionInUseError, match="would make a cycle"):
            lonely.add_subregion(0, lonely)

    def test_del_subregion_of_a_stranger(self) -> None:
        a = MemoryRegion.container("a", 0x100)
        with pytest.raises(LayoutError, match=r"region 'x' is not a subregion of 'a'"):
            a.del_subregion(io("x", 1))

    def test_address_space_limits(self) -> None:
        msg = r"root 'big' of size 0x20000 does not fit in the 16-bit address space 'I/O' \(0x10000 bytes\)"
        with pytest.raises(InvalidSizeError, match=msg):
            AddressSpace("I/O", MemoryRegion.container("big", 0x20000), width_bits=16)
        parent = MemoryRegion.container("parent", 0x40000)
        root = MemoryRegion.container("io", 0x10000)
        parent.add_subregion(0x8000, root)
        with pytest.raises(AddressOutOfRangeError, match=r"root 'io' at 0x8000 ends at 0x18000"):
            AddressSpace("I/O", root, width_bits=16)
        space = AddressSpace("I/O", MemoryRegion.container("io", 0x10000), width_bits=16)
        msg = r"address 0x10000 is outside address space 'I/O' \[0, 0x10000\)"
        with pytest.raises(AddressOutOfRangeError, match=msg):
            space.translate(0x10000)
        with pytest.raises(ConfigError):
            AddressSpace("bad", MemoryRegion.container("r", 1), width_bits=65)


# ---------------------------------------------------------------------------------------------
class TestFlatView:
    def test_higher_priority_wins(self) -> None:
        root = MemoryRegion.container("root", 0x100)
        root.add_subregion(0x20, io("b", 0x20), priority=1)
        root.add_subregion(0x10, io("a", 0x20))
        space = AddressSpace("s", root)
        assert flat(space) == [(0x10, 0x20, "a", 0), (0x20, 0x40, "b", 0)]

    def test_later_added_wins_among_equal_priorities(self) -> None:
        root = MemoryRegion.container("root", 0x100)
        root.add_subregion(0x10, io("a", 0x20))
        root.add_subregion(0x20, io("b", 0x20))
        assert flat(AddressSpace("s", root)) == [(0x10, 0x20, "a", 0), (0x20, 0x40, "b", 0)]
        root2 = MemoryRegion.container("root", 0x100)
        root2.add_subregion(0x20, io("b", 0x20))
        root2.add_subregion(0x10, io("a", 0x20))
        assert flat(AddressSpace("s", root2)) == [(0x10, 0x30, "a", 0), (0x30, 0x40, "b", 0x10)]

    def test_alias_resolves_to_target_with_offset(self) -> None:
        ram = MemoryRegion.ram("pc.ram", 0x1000)
        root = MemoryRegion.container("system", 0x10000)
        root.add_subregion(0x40, MemoryRegion.alias("win", ram, 0x100, 0x80))
        space = AddressSpace("memory", root)
        assert space.flatview() == [FlatRange(0x40, 0xC0, ram, 0x100)]
        assert space.flatview() == [(0x40, 0xC0, ram, 0x100)]  # plain tuples compare equal

    def test_io_region_fills_the_gaps_its_subregions_leave(self) -> None:
        root = MemoryRegion.container("io", 0x100)
        rtc = io("rtc", 2)
        rtc.add_subregion(0, io("rtc-index", 1))
        root.add_subregion(0x70, rtc)
        assert flat(AddressSpace("I/O", root)) == [(0x70, 0x71, "rtc-index", 0), (0x71, 0x72, "rtc", 1)]

    def test_container_holes_and_disabled_regions(self) -> None:
        root = MemoryRegion.container("root", 0x100)
        low = io("low", 0x40)
        top = io("top", 0x10)
        root.add_subregion(0x00, low)
        root.add_subregion(0x20, top, priority=5)
        space = AddressSpace("s", root)
        assert flat(space) == [(0x00, 0x20, "low", 0), (0x20, 0x30, "top", 0), (0x30, 0x40, "low", 0x30)]
        top.enabled = False
        assert flat(space) == [(0x00, 0x40, "low", 0)]  # neighbours merge (flatview_simplify)
        low.enabled = False
        assert flat(space) == []
        assert space.translate(0x10) is None
        top.enabled = True
        assert flat(space) == [(0x20, 0x30, "top", 0)]

    def test_priority_and_address_changes_re_render(self) -> None:
        root = MemoryRegion.container("root", 0x100)
        a, b = io("a", 0x20), io("b", 0x20)
        root.add_subregion(0x00, a)
        root.add_subregion(0x10, b)
        space = AddressSpace("s", root)
        assert flat(space) == [(0x00, 0x10, "a", 0), (0x10, 0x30, "b", 0)]
        a.priority = 1
        assert flat(space) == [(0x00, 0x20, "a", 0), (0x20, 0x30, "b", 0x10)]
        b.addr = 0x80
        assert flat(space) == [(0x00, 0x20, "a", 0), (0x80, 0xA0, "b", 0)]
        with pytest.raises(RegionOutOfBoundsError):
            b.addr = 0xF0
        assert b.addr == 0x80

    def test_q35_style_ram_alias_over_low_priority_pci(self) -> None:
        ram = MemoryRegion.ram("pc.ram", 0x20000000)
        system = MemoryRegion.container("system", 1 << 64)
        pci = MemoryRegion.container("pci", 1 << 64)
        pci.add_subregion(0xA0000, io("vga-lowmem", 0x20000), priority=1)
        pci.add_subregion(0xC0000, MemoryRegion.rom("pc.rom", 0x20000), priority=1)
        system.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 0x20000000))
        system.add_subregion(0, pci, priority=-1)
        smram = MemoryRegion.alias("smram-region", pci, 0xA0000, 0x20000)
        system.add_subregion(0xA0000, smram, priority=1)
        space = AddressSpace("memory", system)
        assert flat(space) == [  # pc.rom stays under RAM: pci has priority -1
            (0x00000, 0x0A0000, "pc.ram", 0),
            (0xA0000, 0x0C0000, "vga-lowmem", 0),
            (0xC0000, 0x20000000, "pc.ram", 0xC0000),
        ]
        smram.enabled = False
        assert flat(space) == [(0, 0x20000000, "pc.ram", 0)]

    def test_render_count_changes_only_with_topology(self) -> None:
        ram = MemoryRegion.ram("ram", 0x100)
        other_root = MemoryRegion.container("unrelated", 0x100)
        root = MemoryRegion.container("root", 0x1000)
        dev = io("dev", 0x10)
        root.add_subregion(0x100, dev)
        root.add_subregion(0x200, MemoryRegion.alias("ram-alias", ram, 0, 0x100))
        space = AddressSpace("s", root)
        assert space.render_count == 1
        for _ in range(5):
            space.read_nowait(0x200, 4)
            space.flatview()
        dev.enable_lockless_io()  # a dispatch flag, not topology
        dev.enabled = True  # unchanged
        other_root.add_subregion(0, io("elsewhere", 4))
        space.read_nowait(0x100, 4)
        assert space.render_count == 1
        root.add_subregion(0x300, io("new", 4))
        dev.enabled = False
        assert space.render_count == 1  # lazy: nothing rendered until the next access
        space.read_nowait(0x100, 4)
        assert space.render_count == 2  # two changes, one render
        ram.add_subregion(0x10, io("inside-alias-target", 4))  # seen through the alias
        assert space.translate(0x210) is not None
        assert space.render_count == 3
        assert space.statistics().render_count == 3


# ---------------------------------------------------------------------------------------------
def make_space(*regions: tuple[int, MemoryRegion], size: int = 0x10000, **kw: Any) -> AddressSpace:
    root = MemoryRegion.container("root", size)
    for addr, mr in regions:
        root.add_subregion(addr, mr)
    return AddressSpace("s", root, **kw)


class TestDispatch:
    async def test_plain_and_coroutine_handlers(self) -> None:
        plain = Recorder(base=0x1000)
        log: list[tuple[Any, ...]] = []

        async def aread(offset: int, size: int) -> int:
            await sleep_ns(10)
            log.append(("r", offset, size))
            return 0xABCD

        async def awrite(offset: int, value: int, size: int) -> None:
            await sleep_ns(10)
            log.append(("w", offset, value, size))

        a = MemoryRegion.io("plain", 0x10, plain.ops())
        b = MemoryRegion.io("async", 0x10, MemoryRegionOps(read=aread, write=awrite))
        space = make_space((0x100, a), (0x200, b))
        assert await space.read(0x104, 4) == (0x1004, OK)
        assert await space.write(0x108, 0x1_2345_6789, 4) == OK  # masked to the access size
        assert plain.log == [("r", 4, 4), ("w", 8, 0x23456789, 4)]
        assert space.read_nowait(0x200, 2) is None  # a coroutine handler needs await
        assert space.write_nowait(0x200, 1, 2) is None
        assert log == []  # ... and None means nothing was done
        assert await space.read(0x202, 2) == (0xABCD, OK)
        assert await space.write(0x204, 0xFFFF_FFFF, 2) == OK
        assert log == [("r", 2, 2), ("w", 4, 0xFFFF, 2)]
        assert (a.reads, a.writes, b.reads, b.writes) == (1, 1, 1, 1)

    async def test_impl_splitting_is_little_endian(self) -> None:
        dev = Recorder(base=0x10)
        mr = MemoryRegion.io("bytes", 0x10, dev.ops(impl_min=1, impl_max=1))
        space = make_space((0, mr))
        assert await space.read(0, 4) == (0x13121110, OK)
        assert await space.write(4, 0xAABBCCDD, 4) == OK
        assert dev.log == [
            ("r", 0, 1), ("r", 1, 1), ("r", 2, 1), ("r", 3, 1),
            ("w", 4, 0xDD, 1), ("w", 5, 0xCC, 1), ("w", 6, 0xBB, 1), ("w", 7, 0xAA, 1),
        ]
        assert mr.reads == 1 and mr.writes == 1  # one access, however many callbacks

    async def test_eight_byte_access_to_default_ops_is_an_access_error(self) -> None:
        dev = Recorder()
        space = make_space((0, MemoryRegion.io("dw", 0x10, dev.ops())))
        assert await space.read(8, 8) == (0xFFFFFFFF_FFFFFFFF, ACCESS_ERROR)
        assert dev.log == [] and space.access_errors == 1

    async def test_eight_byte_access_with_valid_8_is_two_dword_calls(self) -> None:
        dev = Recorder(value=lambda offset: 0x11111111 * (offset + 1))
        space = make_space((0, MemoryRegion.io("dw", 0x10, dev.ops(valid_max=8))))
        assert await space.read(8, 8) == (0xDDDDDDDD_99999999, OK)
        assert await space.write(0, 0x01234567_89ABCDEF, 8) == OK
        assert dev.log == [("r", 8, 4), ("r", 12, 4), ("w", 0, 0x89ABCDEF, 4), ("w", 4, 0x01234567, 4)]

    async def test_impl_widening_as_access_with_adjusted_size(self) -> None:
        dev = Recorder(value=lambda offset: 0x44332211)
        mr = MemoryRegion.io("dwords", 0x10, dev.ops(impl_min=4, impl_max=4))
        space = make_space((0, mr))
        # QEMU issues the wide access at the same offset and keeps the low bytes
        assert await space.read(2, 1) == (0x11, OK)
        assert await space.read(6, 2) == (0x2211, OK)
        assert await space.write(1, 0xAB, 1) == OK  # zero-extended to the implemented size
        assert dev.log == [("r", 2, 4), ("r", 6, 4), ("w", 1, 0xAB, 4)]

    async def test_valid_size_violations_are_access_errors(self) -> None:
        dev = Recorder()
        mr = MemoryRegion.io("hpet", 0x400, dev.ops(valid_min=4, valid_max=8, impl_min=4, impl_max=8))
        space = make_space((0xF000, mr))
        assert await space.read(0xF000, 1) == (0xFF, ACCESS_ERROR)
        assert await space.read(0xF000, 2) == (0xFFFF, ACCESS_ERROR)
        assert await space.write(0xF000, 1, 2) == ACCESS_ERROR
        assert await space.read(0xF004, 8) == (ones(8), ACCESS_ERROR)  # unaligned
        assert space.read_nowait(0xF002, 4) == (ones(4), ACCESS_ERROR)
        assert dev.log == []
        assert mr.access_errors == 5 and space.access_errors == 5
        assert mr.statistics().access_errors == 5
        assert await space.read(0xF008, 8) == (8, OK)
        unaligned = MemoryRegion.io("u", 0x10, Recorder().ops(valid_unaligned=True))
        space2 = make_space((0, unaligned))
        assert await space2.read(3, 2) == (3, OK)

    async def test_decode_errors_read_all_ones(self) -> None:
        space = make_space((0x100, io("dev", 0x10)), size=0x10000, width_bits=16)
        assert await space.read(0x200, 4) == (0xFFFFFFFF, DECODE_ERROR)
        assert await space.write(0x200, 0, 1) == DECODE_ERROR
        assert space.read_nowait(0x0, 8) == (ones(8), DECODE_ERROR)
        assert await space.read(0xFFFF, 2) == (0xFFFF, DECODE_ERROR)  # crosses the end of the space
        assert await space.read(-1, 1) == (0xFF, DECODE_ERROR)
        assert await space.write(0x10000, 0, 4) == DECODE_ERROR
        assert space.decode_errors == 6
        assert space.statistics().decode_errors == 6

    async def test_caller_sizes_outside_1_2_4_8_are_access_errors(self) -> None:
        space = make_space((0x100, io("dev", 0x10)))
        assert await space.read(0x100, 3) == (0xFFFFFF, ACCESS_ERROR)
        assert await space.read(0x100, 16) == (ones(8), ACCESS_ERROR)
        assert await space.read(0x100, 0) == (0, ACCESS_ERROR)
        assert await space.write(0x100, 0, 16) == ACCESS_ERROR
        assert space.access_errors == 4

    async def test_access_spanning_two_regions_is_split_at_the_boundary(self) -> None:
        evt = MemoryRegion.io("acpi-evt", 4, Recorder(base=0xE0).ops())
        cnt = MemoryRegion.io("acpi-cnt", 2, Recorder(base=0xC0).ops())
        space = make_space((0x600, evt), (0x604, cnt))
        assert await space.read(0x602, 4) == ((0xC0 << 16) | 0xE2, OK)
        assert await space.read(0x605, 2) == (0xFF00 | 0xC1, DECODE_ERROR)  # second byte is a hole
        assert space.decode_errors == 1

    async def test_ram_and_rom_are_direct(self) -> None:
        ram = MemoryRegion.ram("pc.ram", 0x1000)
        rom = MemoryRegion.rom("pc.bios", 0x100, data=bytes(range(16)))
        space = make_space((0, ram), (0x2000, rom))
        assert await space.write(0x10, 0x8877665544332211, 8) == OK
        assert await space.read(0x12, 4) == (0x66554433, OK)
        assert await space.read(0x13, 2) == (0x5544, OK)  # RAM takes unaligned accesses
        assert bytes(ram.ram_block[0x10:0x18]) == bytes.fromhex("1122334455667788")  # type: ignore[index]
        assert await space.read(0x2000, 4) == (0x03020100, OK)
        assert await space.write(0x2000, 0xFFFFFFFF, 4) == DECODE_ERROR  # ROM drops writes
        assert await space.read(0x2000, 4) == (0x03020100, OK)
        assert not space.bql.locked() and space.bql.statistics().acquisitions == 0

    def test_large_ram_is_lazy(self) -> None:
        ram = MemoryRegion.ram("pc.ram", 1 << 31)  # mapped, not allocated: pages appear when touched
        space = make_space((0, ram), size=1 << 40)
        assert space.read_nowait(0x7FFF_FFF8, 8) == (0, OK)
        assert space.write_nowait(0x7FFF_FFF8, 0x55, 1) == OK
        assert space.read_nowait(0x7FFF_FFF8, 2) == (0x55, OK)


# ---------------------------------------------------------------------------------------------
class TestReentrancyGuard:
    def build(self, lockless_target: bool) -> tuple[AddressSpace, list[Any]]:
        owner = Device()
        results: list[Any] = []
        space: AddressSpace

        def mmio_read(offset: int, size: int) -> int:
            results.append(space.read_nowait(0x21C, 4))  # the device DMAs into its own registers
            return 0

        regs = MemoryRegion.io("dev-regs", 0x100, Recorder(base=0x77).ops(), owner=owner)
        if lockless_target:
            regs.enable_lockless_io()
        mmio = MemoryRegion.io("dev-mmio", 0x100, MemoryRegionOps(read=mmio_read), owner=owner)
        space = make_space((0x100, mmio), (0x200, regs))
        return space, results

    async def test_re_entrant_io_is_blocked_with_qemus_message(self) -> None:
        space, results = self.build(lockless_target=False)
        assert await space.read(0x100, 4) == (0, OK)
        assert results == [(0xFFFFFFFF, ACCESS_ERROR)]
        # QEMU: "... at addr: 0x%" HWADDR_PRIX -- the offset in the region, upper-case hex
        assert space.blocked_messages == ["Blocked re-entrant IO on MemoryRegion: dev-regs at addr: 0x1C"]
        assert space.blocked_reentrant_io == 1 and space.access_errors == 1
        assert await space.read(0x21C, 4) == (0x77 + 0x1C, OK)  # the guard was disengaged

    async def test_lockless_region_disables_the_guard(self) -> None:
        space, results = self.build(lockless_target=True)
        assert await space.read(0x100, 4) == (0, OK)
        assert results == [(0x77 + 0x1C, OK)]
        assert space.blocked_messages == []

    async def test_other_devices_are_not_blocked(self) -> None:
        results: list[Any] = []
        space: AddressSpace

        def read(offset: int, size: int) -> int:
            results.append(space.read_nowait(0x200, 1))
            return 0

        a = MemoryRegion.io("a", 0x10, MemoryRegionOps(read=read), owner=Device())
        b = MemoryRegion.io("b", 0x10, Recorder(base=5).ops(), owner=Device())
        space = make_space((0x100, a), (0x200, b))
        assert await space.read(0x100, 1) == (0, OK)
        assert results == [(5, OK)]

    async def test_guard_and_bql_are_released_when_a_handler_raises(self) -> None:
        owner = Device()

        def read(offset: int, size: int) -> int:
            raise RuntimeError("device bug")

        bad = MemoryRegion.io("bad", 0x10, MemoryRegionOps(read=read), owner=owner)
        good = MemoryRegion.io("good", 0x10, Recorder(base=1).ops(), owner=owner)
        space = make_space((0, bad), (0x10, good))
        with pytest.raises(RuntimeError, match="device bug"):
            await space.read(0, 4)
        assert not space.bql.locked()
        assert await space.read(0x10, 1) == (1, OK)


# ---------------------------------------------------------------------------------------------
class TestPrepareMmioAccess:
    def setup_method(self) -> None:
        self.dev = Recorder()
        self.normal = MemoryRegion.io("serial", 8, self.dev.ops())
        self.fast = MemoryRegion.io("acpi-tmr", 4, self.dev.ops())
        self.fast.enable_lockless_io()
        self.space = make_space((0x3F8, self.normal), (0x608, self.fast))

    async def test_bql_taken_for_a_normal_region(self) -> None:
        assert await self.space.read(0x3F8, 1) == (0, OK)
        assert await self.space.write(0x3F8, 0x41, 1) == OK
        assert self.dev.bql_seen == [True, True]
        assert not bql_locked()
        stats = self.space.bql.statistics()
        assert {s.site: s.acquisitions for s in stats.sites} == {"serial read": 1, "serial write": 1}
        assert not stats.locked

    async def test_bql_not_taken_for_a_lockless_region(self) -> None:
        assert self.fast.lockless_io and self.fast.disable_reentrancy_guard
        assert await self.space.read(0x608, 4) == (0, OK)
        assert self.dev.bql_seen == [False]
        assert self.space.bql.statistics().acquisitions == 0

    async def test_bql_not_retaken_when_the_caller_holds_it(self) -> None:
        async with self.space.bql.held("kvm_arch_pre_run"):
            assert await self.space.read(0x3F8, 1) == (0, OK)
            assert self.space.read_nowait(0x3F8, 1) == (0, OK)
            assert await self.space.read(0x608, 4) == (0, OK)
        assert self.dev.bql_seen == [True, True, True]
        stats = self.space.bql.statistics()
        assert {s.site: s.acquisitions for s in stats.sites} == {"kvm_arch_pre_run": 1}

    async def test_prepare_mmio_access_itself(self) -> None:
        assert await prepare_mmio_access(self.space, self.normal, "t") is True
        assert bql_locked()
        assert await prepare_mmio_access(self.space, self.normal, "t") is False  # already held
        self.space.bql.release()
        assert await prepare_mmio_access(self.space, self.fast, "t") is False
        self.normal.flush_coalesced_mmio = True
        await self.space.read(0x3F8, 1)
        assert self.space.coalesced_mmio_flushes == 1

    async def test_one_bql_shared_by_two_spaces(self) -> None:
        bql = Lock("BQL", bql=True)
        dev = Recorder()
        mem = make_space((0, MemoryRegion.io("m", 4, dev.ops())), bql=bql)
        pio = make_space((0, MemoryRegion.io("p", 4, dev.ops())), bql=bql)
        assert mem.bql is pio.bql is bql
        await mem.read(0, 1)
        await pio.read(0, 1)
        assert dev.bql_seen == [True, True]
        assert bql.statistics().acquisitions == 2

    def test_default_bql_is_a_bql(self) -> None:
        assert self.space.bql.bql and self.space.bql.name == "BQL"


# ---------------------------------------------------------------------------------------------
class TestLocklessNeverYields:
    async def test_no_loop_turns_for_lockless_but_turns_for_contended_bql(self) -> None:
        dev = Recorder()
        fast = MemoryRegion.io("acpi-tmr", 4, dev.ops())
        fast.enable_lockless_io()
        slow = MemoryRegion.io("serial", 8, dev.ops())
        space = make_space((0x608, fast), (0x3F8, slow))
        turns = 0
        stop = False

        async def ticker() -> None:
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = turns
        for _ in range(100):
            assert await space.read(0x608, 4) == (0, OK)
            assert await space.write(0x608, 1, 4) == OK
        assert turns == before  # lockless: not one task switch
        for _ in range(10):
            assert await space.read(0x3F8, 1) == (0, OK)  # BQL free: taken without yielding
        assert turns == before

        async def holder() -> None:
            async with space.bql.held("iothread"):
                for _ in range(5):  # (virtual time stands still while the ticker keeps the loop busy)
                    await asyncio.sleep(0)

        hold = asyncio.create_task(holder())
        await asyncio.sleep(0)  # the holder takes the BQL
        assert space.bql.locked()
        before = turns
        assert space.read_nowait(0x3F8, 1) is None  # would have to wait
        assert await space.read(0x3F8, 1) == (0, OK)
        assert turns > before  # contended: the loop ran other tasks meanwhile
        assert space.bql.statistics().contentions == 1
        stop = True
        await tick
        await hold

    async def test_cancelled_bql_wait_leaves_the_lock_free(self) -> None:
        dev = Recorder()
        space = make_space((0x3F8, MemoryRegion.io("serial", 8, dev.ops())))
        release = asyncio.Event()

        async def holder() -> None:
            async with space.bql.held("iothread"):
                await release.wait()

        hold = asyncio.create_task(holder())
        await asyncio.sleep(0)
        reader = asyncio.create_task(space.read(0x3F8, 1))
        await asyncio.sleep(0)
        assert space.bql.statistics().tasks_waiting == 1
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        release.set()
        await hold
        assert not space.bql.locked()
        assert dev.log == []  # the cancelled access never reached the device
        assert space.bql.statistics().cancelled_waits == 1
        assert await space.read(0x3F8, 1) == (0, OK)

    async def test_cancelled_inside_a_coroutine_handler_releases_bql_and_guard(self) -> None:
        owner = Device()

        async def slow_read(offset: int, size: int) -> int:
            await sleep_ns(1_000_000)
            return 1

        mr = MemoryRegion.io("slow", 4, MemoryRegionOps(read=slow_read), owner=owner)
        other = MemoryRegion.io("other", 4, Recorder(base=9).ops(), owner=owner)
        space = make_space((0, mr), (0x10, other))
        task = asyncio.create_task(space.read(0, 4))
        await sleep_ns(10)
        assert space.bql.locked()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not space.bql.locked()
        assert await space.read(0x10, 1) == (9, OK)  # guard disengaged


# ---------------------------------------------------------------------------------------------
@st.composite
def layouts(draw: Any) -> tuple[MemoryRegion, dict[int, list[tuple[MemoryRegion, int, int]]], list[MemoryRegion]]:
    """A random layout under a 0x100-byte root, and an independent record of who was added where."""
    root = MemoryRegion.container("root", 0x100)
    children: dict[int, list[tuple[MemoryRegion, int, int]]] = {id(root): []}  # (child, priority, seq)
    parents = [root]
    everything: list[MemoryRegion] = [root]
    for k in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["io", "io", "ram", "container", "alias"]))
        parent = draw(st.sampled_from(parents))
        prio = draw(st.integers(-2, 2))
        if kind == "alias":
            target = draw(st.sampled_from(everything))
            size = draw(st.integers(1, min(parent.size, target.size)))
            mr = MemoryRegion.alias(f"r{k}", target, draw(st.integers(0, target.size - size)), size)
        else:
            size = draw(st.integers(1, parent.size))
            if kind == "io":
                mr = MemoryRegion.io(f"r{k}", size, Recorder().ops())
                mr.enable_lockless_io()
            elif kind == "ram":
                mr = MemoryRegion.ram(f"r{k}", size)
            else:
                mr = MemoryRegion.container(f"r{k}", size)
        try:
            parent.add_subregion(draw(st.integers(0, parent.size - size)), mr, priority=prio)
        except RegionInUseError:  # an alias onto its own ancestor
            continue
        children[id(parent)].append((mr, prio, k))
        children[id(mr)] = []
        everything.append(mr)
        if kind in ("io", "container"):
            parents.append(mr)
        if not draw(st.integers(0, 4)):
            mr.enabled = False
    return root, children, everything


Children = dict[int, list[tuple[MemoryRegion, int, int]]]  # id(parent) -> [(child, priority, seq)]


def reference_lookup(children: Children, mr: MemoryRegion, a: int) -> tuple[MemoryRegion, int] | None:
    """Brute force: walk the tree for one address; ``a`` is relative to ``mr``'s start."""
    if not mr.enabled or not 0 <= a < mr.size:
        return None
    if mr.alias_target is not None:
        return reference_lookup(children, mr.alias_target, a + mr.alias_offset)
    for child, _prio, _seq in sorted(children[id(mr)], key=lambda c: (-c[1], -c[2])):
        hit = reference_lookup(children, child, a - child.addr)
        if hit is not None:
            return hit
    return (mr, a) if mr.kind in ("io", "ram") else None


def check_against_reference(space: AddressSpace, children: dict[int, list[tuple[MemoryRegion, int, int]]]) -> None:
    ranges = space.flatview()
    for prev, cur in zip(ranges, ranges[1:]):
        assert prev.end <= cur.start
    for addr in range(0x100):
        expected = reference_lookup(children, space.root, addr)
        got = space.translate(addr)
        assert (None if got is None else (got[0].name, got[1])) == (
            None if expected is None else (expected[0].name, expected[1])
        ), f"address {addr:#x}"
        value, result = space.read_nowait(addr, 1)  # type: ignore[misc]
        if expected is None:
            assert result == DECODE_ERROR
        else:
            assert result == OK
            mr, off = expected
            if mr.kind == "io":
                assert mr.ops.read.__self__.log[-1] == ("r", off, 1)  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(layouts(), st.data())
def test_flatview_dispatch_matches_brute_force(layout: Any, data: Any) -> None:
    root, children, everything = layout
    space = AddressSpace("s", root, width_bits=8)
    check_against_reference(space, children)
    # then change the topology and check again (re-render)
    seq = 100
    for _ in range(data.draw(st.integers(0, 4))):
        mr = data.draw(st.sampled_from(everything[1:])) if len(everything) > 1 else root
        action = data.draw(st.sampled_from(["toggle", "priority"]))
        if action == "toggle" or mr.container_region is None:
            mr.enabled = not mr.enabled
        else:
            prio = data.draw(st.integers(-2, 2))
            if prio != mr.priority:
                siblings = children[id(mr.container_region)]
                seq += 1
                siblings[:] = [(c, prio, seq) if c is mr else (c, p, s) for c, p, s in siblings]
                mr.priority = prio  # QEMU re-adds: it becomes the latest among its new equals
    check_against_reference(space, children)


# ---------------------------------------------------------------------------------------------
def unassigned_io_ops() -> MemoryRegionOps:
    """QEMU's unassigned_io_ops: reads all-ones, writes ignored."""
    return MemoryRegionOps(read=lambda o, s: (1 << (8 * s)) - 1, write=lambda o, v, s: None)


def q35_io() -> MemoryRegion:
    io_root = MemoryRegion.io("io", 0x10000, unassigned_io_ops())
    rtc = io("rtc", 2)
    rtc.add_subregion(0, io("rtc-index", 1))
    io_root.add_subregion(0x70, rtc)
    pm = MemoryRegion.container("ich9-pm", 0x80)
    for off, name, size in [(0x00, "acpi-evt", 4), (0x04, "acpi-cnt", 2), (0x08, "acpi-tmr", 4),
                            (0x20, "acpi-gpe0", 0x10), (0x30, "acpi-smi", 8), (0x60, "sm-tco", 0x20)]:
        pm.add_subregion(off, io(name, size))
    io_root.add_subregion(0x600, pm)
    io_root.add_subregion(0x700, io("pm-smbus", 0x40), priority=1)
    io_root.add_subregion(0xCF8, io("pci-conf-idx", 4))
    io_root.add_subregion(0xCFC, io("pci-conf-data", 4))
    io_root.add_subregion(0xCF9, io("lpc-reset-control", 1), priority=1)
    return io_root


# Lines copied from QEMU 7.2's `info mtree` / `info mtree -f` on q35 (docs reference capture).
Q35_IO_MTREE = """\
address-space: I/O
  0000000000000000-000000000000ffff (prio 0, i/o): io
    0000000000000070-0000000000000071 (prio 0, i/o): rtc
      0000000000000070-0000000000000070 (prio 0, i/o): rtc-index
    0000000000000600-000000000000067f (prio 0, i/o): ich9-pm
      0000000000000600-0000000000000603 (prio 0, i/o): acpi-evt
      0000000000000604-0000000000000605 (prio 0, i/o): acpi-cnt
      0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr
      0000000000000620-000000000000062f (prio 0, i/o): acpi-gpe0
      0000000000000630-0000000000000637 (prio 0, i/o): acpi-smi
      0000000000000660-000000000000067f (prio 0, i/o): sm-tco
    0000000000000700-000000000000073f (prio 1, i/o): pm-smbus
    0000000000000cf8-0000000000000cfb (prio 0, i/o): pci-conf-idx
    0000000000000cf9-0000000000000cf9 (prio 1, i/o): lpc-reset-control
    0000000000000cfc-0000000000000cff (prio 0, i/o): pci-conf-data

"""

Q35_IO_FLAT_TAIL = """\
  0000000000000600-0000000000000603 (prio 0, i/o): acpi-evt
  0000000000000604-0000000000000605 (prio 0, i/o): acpi-cnt
  0000000000000606-0000000000000607 (prio 0, i/o): io @0000000000000606
  0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr
  000000000000060c-000000000000061f (prio 0, i/o): io @000000000000060c
  0000000000000620-000000000000062f (prio 0, i/o): acpi-gpe0
  0000000000000630-0000000000000637 (prio 0, i/o): acpi-smi
  0000000000000638-000000000000065f (prio 0, i/o): io @0000000000000638
  0000000000000660-000000000000067f (prio 0, i/o): sm-tco
  0000000000000680-00000000000006ff (prio 0, i/o): io @0000000000000680
  0000000000000700-000000000000073f (prio 1, i/o): pm-smbus
  0000000000000740-0000000000000cf7 (prio 0, i/o): io @0000000000000740
  0000000000000cf8-0000000000000cf8 (prio 0, i/o): pci-conf-idx
  0000000000000cf9-0000000000000cf9 (prio 1, i/o): lpc-reset-control
  0000000000000cfa-0000000000000cfb (prio 0, i/o): pci-conf-idx @0000000000000002
  0000000000000cfc-0000000000000cff (prio 0, i/o): pci-conf-data
  0000000000000d00-000000000000ffff (prio 0, i/o): io @0000000000000d00

"""

Q35_MEMORY_MTREE = """\
address-space: cpu-memory-0
address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000000-000000001fffffff (prio 0, ram): alias ram-below-4g @pc.ram 0000000000000000-000000001fffffff
    0000000000000000-ffffffffffffffff (prio -1, i/o): pci
      00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
      00000000000e0000-00000000000fffff (prio 1, rom): alias isa-bios @pc.bios 0000000000020000-000000000003ffff
      00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
    00000000000a0000-00000000000bffff (prio 1, i/o): alias smram-region @pci 00000000000a0000-00000000000bffff
    00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
    00000000fed00000-00000000fed003ff (prio 0, i/o): hpet [lockless]
    00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi

memory-region: pc.ram
  0000000000000000-000000001fffffff (prio 0, ram): pc.ram

memory-region: pc.bios
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

memory-region: pci
  0000000000000000-ffffffffffffffff (prio -1, i/o): pci
    00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
    00000000000e0000-00000000000fffff (prio 1, rom): alias isa-bios @pc.bios 0000000000020000-000000000003ffff
    00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

"""

Q35_MEMORY_FLAT = """\
FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000001fffffff (prio 0, ram): pc.ram
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet [lockless]
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

"""


def q35_memory() -> MemoryRegion:
    ram = MemoryRegion.ram("pc.ram", 0x20000000)
    bios = MemoryRegion.rom("pc.bios", 0x40000)
    system = MemoryRegion.container("system", 1 << 64)
    pci = MemoryRegion.container("pci", 1 << 64)
    system.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 0x20000000))
    system.add_subregion(0, pci, priority=-1)
    pci.add_subregion(0xC0000, MemoryRegion.rom("pc.rom", 0x20000), priority=1)
    pci.add_subregion(0xE0000, MemoryRegion.alias("isa-bios", bios, 0x20000, 0x20000), priority=1)
    pci.add_subregion(0xFFFC0000, bios)
    system.add_subregion(0xA0000, MemoryRegion.alias("smram-region", pci, 0xA0000, 0x20000), priority=1)
    system.add_subregion(0xFEC00000, io("ioapic", 0x1000))
    hpet = io("hpet", 0x400)
    hpet.enable_lockless_io()
    system.add_subregion(0xFED00000, hpet)
    system.add_subregion(0xFEE00000, io("apic-msi", 0x100000), priority=4096)
    return system


class TestMtree:
    def test_io_tree_matches_qemu(self) -> None:
        space = AddressSpace("I/O", q35_io(), width_bits=16)
        assert mtree_text(space) == Q35_IO_MTREE
        assert space.mtree() == Q35_IO_MTREE

    def test_io_flatview_matches_qemu(self) -> None:
        space = AddressSpace("I/O", q35_io(), width_bits=16)
        text = mtree_text(space, flat=True)
        assert text.startswith('FlatView #0\n AS "I/O", root: io\n Root memory region: io\n')
        assert "  0000000000000070-0000000000000070 (prio 0, i/o): rtc-index\n" \
               "  0000000000000071-0000000000000071 (prio 0, i/o): rtc @0000000000000001\n" \
               "  0000000000000072-00000000000005ff (prio 0, i/o): io @0000000000000072\n" in text
        assert text.endswith(Q35_IO_FLAT_TAIL)

    async def test_io_root_reads_all_ones_with_ok_like_qemu(self) -> None:
        space = AddressSpace("I/O", q35_io(), width_bits=16)
        assert await space.read(0x606, 2) == (0xFFFF, OK)  # hole in ich9-pm falls through to "io"

    def test_memory_tree_with_aliases_and_shared_root(self) -> None:
        system = q35_memory()
        memory = AddressSpace("memory", system)
        cpu0 = AddressSpace("cpu-memory-0", system)
        assert mtree_text(memory, cpu0) == Q35_MEMORY_MTREE
        assert mtree_text(memory, cpu0, flat=True) == Q35_MEMORY_FLAT

    def test_disabled_regions_are_hidden_unless_asked(self) -> None:
        root = MemoryRegion.container("system", 0x10000)
        ram = MemoryRegion.ram("pc.ram", 0x1000)
        pam = MemoryRegion.alias("pam-pci", ram, 0x800, 0x100)
        root.add_subregion(0x800, pam, priority=1)
        pam.enabled = False
        space = AddressSpace("memory", root)
        assert mtree_text(space) == (
            "address-space: memory\n"
            "  0000000000000000-000000000000ffff (prio 0, i/o): system\n"
            "\n"
            "memory-region: pc.ram\n"
            "  0000000000000000-0000000000000fff (prio 0, ram): pc.ram\n"
            "\n"
        )
        assert mtree_text(space, disabled=True).splitlines()[2] == (
            "    0000000000000800-00000000000008ff (prio 1, ram): alias pam-pci @pc.ram "
            "0000000000000800-00000000000008ff [disabled]"
        )

    def test_empty_flatview(self) -> None:
        space = AddressSpace("VGA", MemoryRegion.container("bus master container", 1 << 64))
        assert mtree_text(space, flat=True) == (
            'FlatView #0\n AS "VGA", root: bus master container\n Root memory region: (none)\n'
            "  No rendered FlatView\n\n"
        )

    def test_reprs_say_what_a_person_needs(self) -> None:
        system = MemoryRegion.container("system", 1 << 64)
        hpet = io("hpet", 0x400)
        hpet.enable_lockless_io()
        system.add_subregion(0xFED00000, hpet)
        assert repr(hpet) == "<MemoryRegion io 'hpet' size=0x400 at 0xfed00000 in 'system' prio 0 lockless>"
        space = AddressSpace("memory", system)
        assert repr(space) == "<AddressSpace 'memory' root='system' 64-bit, 1 flat ranges>"


class TestAccess:
    """AddressSpace.access: one (addr, size) resolved once, dropped on a render."""

    @staticmethod
    def _dev(name: str, value: int) -> MemoryRegion:
        async def read(off: int, size: int) -> int:
            return value

        def read_nowait(off: int, size: int) -> int:
            return value + off

        return MemoryRegion.io(name, 0x100, MemoryRegionOps(read=read, write=None, read_nowait=read_nowait,
                                                            valid_min=4, valid_max=8, impl_min=4, impl_max=8))

    async def test_resolves_once_and_follows_topology_changes(self) -> None:
        root = MemoryRegion.container("system", 1 << 32)
        dev = self._dev("dev", 0x1000)
        dev.enable_lockless_io()
        root.add_subregion(0xFED00000, dev)
        space = AddressSpace("memory", root)
        acc = space.access(0xFED000F0, 8)
        assert isinstance(acc, IOAccess) and (acc.region, acc.offset, acc.name) == (dev, 0xF0, "dev")
        assert space.access(0xFED000F0, 8) is acc  # cached
        assert acc.read_nowait() == (0x10F0, OK)  # the device's no-await read
        assert await acc.read() == (0x1000, OK)  # the full path runs the coroutine handler
        assert isinstance(space.access(0xFED000F0, 2), InvalidAccess)  # size the device does not accept
        assert isinstance(space.access(0xFED000F2, 4), InvalidAccess)  # misaligned
        assert isinstance(space.access(0xFED00100, 4), UnassignedAccess)  # a hole
        assert space.access(0xFED00100, 4).name == "unassigned"
        over = self._dev("over", 0x2000)
        over.enable_lockless_io()
        root.add_subregion_overlap(0xFED00000, over, 1)  # the FlatView changes: the cache goes
        assert space._dirty
        acc2 = space.access(0xFED000F0, 8)
        assert acc2 is not acc and acc2.name == "over" and acc2.read_nowait() == (0x20F0, OK)

    async def test_kinds(self) -> None:
        root = MemoryRegion.container("system", 1 << 20)
        ram = MemoryRegion.ram("ram", 0x1000)
        root.add_subregion(0, ram)
        plain = MemoryRegion.io("plain", 0x10, MemoryRegionOps(read=lambda o, s: 7, write=None))
        root.add_subregion(0x1000, plain)
        space = AddressSpace("memory", root)
        assert isinstance(space.access(0x10, 4), DirectAccess)
        split = space.access(0xFFE, 4)  # two bytes of RAM, two of the device
        assert isinstance(split, SplitAccess) and [p.name for _s, p in split.pieces] == ["ram", "plain"]
        assert split.read_nowait() is None  # the device piece needs the BQL: nothing is done
        assert ram.reads == 0
        assert await split.read() == (0x0007_0000, OK)
        assert (ram.reads, plain.reads) == (1, 1)
        bad = space.access(0x10, 3)
        assert isinstance(bad, InvalidAccess) and bad.read_nowait() == (ones(3), ACCESS_ERROR)

    async def test_only_accesses_that_need_the_bql_go_through_prepare_mmio_access(self) -> None:
        import aemu.memory.dispatch as dispatch

        calls: list[str] = []
        real = dispatch.prepare_mmio_access

        async def counting(space: AddressSpace, mr: MemoryRegion, site: str) -> bool:
            calls.append(mr.name)
            return await real(space, mr, site)

        dispatch.prepare_mmio_access = counting  # type: ignore[assignment]
        try:
            locked = MemoryRegion.io("locked", 4, MemoryRegionOps(read=lambda o, s: 1, write=None))
            free = MemoryRegion.io("free", 4, MemoryRegionOps(read=lambda o, s: 2, write=None))
            free.enable_lockless_io()
            space = make_space((0, locked), (4, free))
            assert await space.read(0, 4) == (1, OK)
            assert await space.read(4, 4) == (2, OK)
            assert calls == ["locked"]
        finally:
            dispatch.prepare_mmio_access = real  # type: ignore[assignment]

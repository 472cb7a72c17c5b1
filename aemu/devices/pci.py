"""PCI configuration mechanism #1: ``pci-conf-idx`` (0xcf8) and ``pci-conf-data`` (0xcfc).

After QEMU's hw/pci/pci_host.c and hw/pci/pci.c. The guest writes CONFIG_ADDRESS (enable bit 31,
bus 23..16, device 15..11, function 10..8, register 7..2) as one 32-bit write to 0xcf8 (other
writes there are ignored, as in QEMU, and a read returns the latched value) and then reads or
writes 1, 2 or 4 bytes at 0xcfc..0xcff. With the enable bit clear, data reads are all-ones and
writes are dropped; a function that does not exist reads all-ones.

Each function has 256 bytes of configuration space with QEMU's write masks (``pci_init_wmask``):
the command register (I/O, memory, bus master, SERR, INTx disable), cache line size, interrupt
line and the device-specific registers from 0x40 on are writable, status error bits are
write-1-to-clear, and BARs keep their type bits and take only the address bits their size allows
-- so writing all-ones and reading back gives the size mask (BAR sizing). The rest of the header
is read-only. The BARs here are configuration
space only: the regions behind them (``vga``, ``ahci``, ``e1000e-mmio``, ...) are placed by the
machine where the firmware put them.

Device tables: :data:`Q35_PCI_DEVICES` and :data:`PC_PCI_DEVICES` list what ``-M q35`` / ``-M pc``
with ``-vga std`` and the default NIC put on bus 0. With ``firmware=True`` (the default) the BARs
hold the addresses SeaBIOS assigned in the reference ``info mtree`` (aemu has no firmware and
guests start at the kernel) and decoding is enabled; with ``firmware=False`` they read as at
power-on (zero, decoding off).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Device, DeviceHost

__all__ = ["PCIBar", "PCIDeviceInfo", "PCIFunction", "PCIHost", "PC_PCI_DEVICES", "Q35_PCI_DEVICES"]

_MASK = (0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF)

# configuration-space offsets and bits (include/hw/pci/pci_regs.h)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS, REVISION_ID, CLASS_PROG = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
CACHE_LINE_SIZE, HEADER_TYPE, BASE_ADDRESS_0 = 0x0C, 0x0E, 0x10
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, INTERRUPT_LINE, INTERRUPT_PIN = 0x2C, 0x2E, 0x3C, 0x3D
COMMAND_IO, COMMAND_MEMORY = 0x0001, 0x0002
#: command bits a guest may set (QEMU's pci_init_wmask: IO, MEMORY, MASTER, SERR, INTX_DISABLE)
COMMAND_WMASK = 0x0001 | 0x0002 | 0x0004 | 0x0100 | 0x0400
#: where the device-specific registers start (PCI_CONFIG_HEADER_SIZE)
CONFIG_HEADER_SIZE = 0x40
#: status bits that are write-1-to-clear (parity, target/master aborts, SERR)
STATUS_W1CMASK = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000
BAR_SPACE_IO, BAR_MEM_PREFETCH = 0x01, 0x08
#: QEMU's default subsystem IDs (Red Hat / QEMU)
SUBVENDOR_REDHAT, SUBDEVICE_QEMU = 0x1AF4, 0x1100


@dataclass(frozen=True, slots=True)
class PCIBar:
    """A base address register: ``size`` bytes (a power of two), I/O or memory, and the address
    the firmware assigned (used with ``firmware=True``)."""

    size: int
    io: bool = False
    prefetch: bool = False
    addr: int = 0

    def type_bits(self) -> int:
        return BAR_SPACE_IO if self.io else (BAR_MEM_PREFETCH if self.prefetch else 0)


@dataclass(frozen=True, slots=True)
class PCIDeviceInfo:
    """What a function's configuration space says about it (read-only fields and BARs)."""

    name: str
    slot: int
    function: int
    vendor_id: int
    device_id: int
    class_code: int  #: class << 16 | subclass << 8 | programming interface
    revision: int = 0
    multifunction: bool = False
    interrupt_pin: int = 0
    bars: tuple[tuple[int, PCIBar], ...] = ()
    #: other bytes as the firmware left them: (offset, size, value)
    firmware_config: tuple[tuple[int, int, int], ...] = ()

    @property
    def devfn(self) -> int:
        return (self.slot << 3) | self.function


#: ``-M q35 -vga std`` with the default NIC (e1000e), bus 0; BAR addresses from the reference
#: ``info mtree`` (QEMU 7.2 info mtree output, tests/test_devices.py).
Q35_PCI_DEVICES: tuple[PCIDeviceInfo, ...] = (
    PCIDeviceInfo("mch", 0x00, 0, 0x8086, 0x29C0, 0x060000,
                  firmware_config=((0x60, 4, 0xB000_0001),)),  # PCIEXBAR: MMCONFIG at 0xb0000000
    PCIDeviceInfo("VGA", 0x01, 0, 0x1234, 0x1111, 0x030000, revision=0x02,
                  bars=((0, PCIBar(16 << 20, prefetch=True, addr=0xFD00_0000)),
                        (2, PCIBar(0x1000, addr=0xFEBD_4000)))),
    PCIDeviceInfo("e1000e", 0x02, 0, 0x8086, 0x10D3, 0x020000, interrupt_pin=1,
                  bars=((0, PCIBar(0x20000, addr=0xFEB8_0000)),
                        (1, PCIBar(0x20000, addr=0xFEBA_0000)),
                        (2, PCIBar(0x20, io=True, addr=0xC040)),
                        (3, PCIBar(0x4000, addr=0xFEBD_0000)))),
    PCIDeviceInfo("ICH9-LPC", 0x1F, 0, 0x8086, 0x2918, 0x060100, revision=0x02, multifunction=True,
                  firmware_config=((0x40, 4, 0x0000_0601), (0x44, 1, 0x80))),  # PMBASE 0x600, ACPI on
    PCIDeviceInfo("ich9-ahci", 0x1F, 2, 0x8086, 0x2922, 0x010601, revision=0x02, interrupt_pin=1,
                  bars=((4, PCIBar(0x20, io=True, addr=0xC060)),
                        (5, PCIBar(0x1000, addr=0xFEBD_5000)))),
    PCIDeviceInfo("ICH9-SMB", 0x1F, 3, 0x8086, 0x2930, 0x0C0500, revision=0x02, interrupt_pin=1,
                  bars=((4, PCIBar(0x40, io=True, addr=0x0700)),)),
)

#: ``-M pc -vga std`` with the default NIC (e1000), bus 0. BAR addresses: assumption (SeaBIOS's usual
#: assignment for this set; no reference dump of a pc machine is at hand).
PC_PCI_DEVICES: tuple[PCIDeviceInfo, ...] = (
    PCIDeviceInfo("i440FX", 0x00, 0, 0x8086, 0x1237, 0x060000, revision=0x02),
    PCIDeviceInfo("PIIX3", 0x01, 0, 0x8086, 0x7000, 0x060100, multifunction=True),
    PCIDeviceInfo("piix3-ide", 0x01, 1, 0x8086, 0x7010, 0x010180,
                  bars=((4, PCIBar(0x10, io=True, addr=0xC040)),)),
    PCIDeviceInfo("PIIX4_PM", 0x01, 3, 0x8086, 0x7113, 0x068000, revision=0x03, interrupt_pin=1,
                  firmware_config=((0x40, 4, 0x0000_0601), (0x80, 1, 0x01))),  # PMBA 0x600 (SeaBIOS), PMREGMISC
    PCIDeviceInfo("VGA", 0x02, 0, 0x1234, 0x1111, 0x030000, revision=0x02,
                  bars=((0, PCIBar(16 << 20, prefetch=True, addr=0xFD00_0000)),
                        (2, PCIBar(0x1000, addr=0xFEBF_0000)))),
    PCIDeviceInfo("e1000", 0x03, 0, 0x8086, 0x100E, 0x020000, revision=0x03, interrupt_pin=1,
                  bars=((0, PCIBar(0x20000, addr=0xFEBC_0000)),
                        (1, PCIBar(0x40, io=True, addr=0xC000)))),
)


class PCIFunction:
    """One function's configuration space (QEMU's ``PCIDevice`` config, wmask and w1cmask)."""

    __slots__ = ("info", "config", "wmask", "w1cmask", "reads", "writes")

    def __init__(self, info: PCIDeviceInfo, *, firmware: bool = True) -> None:
        self.info = info
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.w1cmask = bytearray(256)
        self.reads = 0
        self.writes = 0
        self._put(VENDOR_ID, 2, info.vendor_id)
        self._put(DEVICE_ID, 2, info.device_id)
        self._put(REVISION_ID, 1, info.revision)
        self._put(CLASS_PROG, 3, info.class_code)
        self._put(HEADER_TYPE, 1, 0x80 if info.multifunction else 0x00)
        self._put(SUBSYSTEM_VENDOR_ID, 2, SUBVENDOR_REDHAT)
        self._put(SUBSYSTEM_ID, 2, SUBDEVICE_QEMU)
        self._put(INTERRUPT_PIN, 1, info.interrupt_pin)
        self._put(COMMAND, 2, COMMAND_WMASK, self.wmask)
        self._put(STATUS, 2, STATUS_W1CMASK, self.w1cmask)
        self.wmask[CACHE_LINE_SIZE] = self.wmask[INTERRUPT_LINE] = 0xFF
        self.wmask[CONFIG_HEADER_SIZE:] = b"\xff" * (256 - CONFIG_HEADER_SIZE)
        command = 0
        for index, bar in info.bars:
            off = BASE_ADDRESS_0 + 4 * index
            self._put(off, 4, ~(bar.size - 1) & 0xFFFF_FFFF & ~0xF if not bar.io
                      else ~(bar.size - 1) & 0xFFFF_FFFC, self.wmask)
            self._put(off, 4, (bar.addr if firmware else 0) | bar.type_bits())
            command |= COMMAND_IO if bar.io else COMMAND_MEMORY
        if firmware:
            if info.class_code >> 8 == 0x0300:  # VGA decodes the legacy ranges
                command |= COMMAND_IO | COMMAND_MEMORY
            self._put(COMMAND, 2, command)
            for off, size, value in info.firmware_config:
                self._put(off, size, value)

    def _put(self, off: int, size: int, value: int, space: bytearray | None = None) -> None:
        (self.config if space is None else space)[off:off + size] = value.to_bytes(size, "little")

    def read(self, off: int, size: int) -> int:
        """``pci_default_read_config``: little-endian bytes at ``off``."""
        self.reads += 1
        return int.from_bytes(self.config[off:off + size], "little")

    def write(self, off: int, value: int, size: int) -> None:
        """``pci_default_write_config``: only writable bits change; W1C bits clear where 1 is written."""
        self.writes += 1
        config, wmask, w1c = self.config, self.wmask, self.w1cmask
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            a = off + i
            config[a] = ((config[a] & ~wmask[a]) | (byte & wmask[a])) & ~(byte & w1c[a])

    def __repr__(self) -> str:
        i = self.info
        return f"<PCIFunction {i.slot:02x}.{i.function} {i.name} {i.vendor_id:04x}:{i.device_id:04x}>"


class PCIHost(Device):
    """The host bridge's configuration ports (``q35-pcihost`` / ``i440FX-pcihost``), bus 0 only."""

    type_name = "q35-pcihost"

    def __init__(self, host: DeviceHost, devices: tuple[PCIDeviceInfo, ...] = Q35_PCI_DEVICES, *,
                 firmware: bool = True, iobase: int = 0xCF8, name: str | None = None) -> None:
        super().__init__(host, name)
        #: CONFIG_ADDRESS as last written
        self.config_reg = 0
        #: accesses to ``pci-conf-data`` (all of them, absent functions and disabled ones included)
        self.config_reads = 0
        self.config_writes = 0
        self.reads = 0
        self.writes = 0
        self.functions: dict[int, PCIFunction] = {}
        for info in devices:
            if info.devfn in self.functions:
                raise ValueError(f"PCI {info.slot:02x}.{info.function} is listed twice "
                                 f"({self.functions[info.devfn].info.name!r} and {info.name!r})")
            self.functions[info.devfn] = PCIFunction(info, firmware=firmware)
        self._idx_cost = host.costs.handler("pci-conf-idx")
        self._data_cost = host.costs.handler("pci-conf-data")
        self.idx_region = self.region_io("pci-conf-idx", 4, self._idx_read, self._idx_write)
        self.data_region = self.region_io("pci-conf-data", 4, self._data_read, self._data_write)
        self.map_io(iobase, self.idx_region)
        self.map_io(iobase + 4, self.data_region)

    def function(self, slot: int, fn: int = 0) -> PCIFunction | None:
        """The function at bus 0 ``slot.fn``, or None."""
        return self.functions.get((slot << 3) | fn)

    # -- pci-conf-idx (pci_host_config_read / _write) ---------------------------------------------
    async def _idx_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._idx_cost)
        self.reads += 1
        return self.config_reg  # as QEMU: the whole register whatever the offset

    async def _idx_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._idx_cost)
        self.writes += 1
        if offset == 0 and size == 4:  # only a 32-bit write latches an address
            self.config_reg = value & 0xFFFF_FFFF

    # -- pci-conf-data (pci_host_data_read / _write) ------------------------------------------------
    def _target(self, offset: int) -> tuple[PCIFunction | None, int]:
        reg = self.config_reg
        fn = self.functions.get((reg >> 8) & 0xFF) if (reg >> 16) & 0xFF == 0 else None
        return fn, (reg & 0xFC) | (offset & 3)

    async def _data_read(self, offset: int, size: int) -> int:
        await self.host.delay(self._data_cost)
        self.reads += 1
        self.config_reads += 1
        if not self.config_reg & 0x8000_0000:
            return _MASK[size]
        fn, off = self._target(offset)
        if fn is None:
            return _MASK[size]
        return fn.read(off, min(size, 256 - off))

    async def _data_write(self, offset: int, value: int, size: int) -> None:
        await self.host.delay(self._data_cost)
        self.writes += 1
        self.config_writes += 1
        if not self.config_reg & 0x8000_0000:
            return
        fn, off = self._target(offset)
        if fn is not None:
            fn.write(off, value, min(size, 256 - off))

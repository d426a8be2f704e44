"""Test helpers: raw register access by reference offsets (not through the project's driver)."""

from __future__ import annotations

from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.spec.constants import QEMU_COMMON_OFFSET, QEMU_MODERN_BAR

BAR = QEMU_MODERN_BAR
#: reference offsets: PCI COMMAND and its bits (PCI 3.0 §6.2.2), common config device_status / generation
COMMAND, CMD_MEMORY, CMD_MASTER, CMD_INTX_DISABLE = 0x04, 0x2, 0x4, 0x400
DEVICE_STATUS, CONFIG_GENERATION = 20, 21


def enable(fn: VirtioPciFunction) -> None:
    """Memory decoding + bus master on (what pci_enable_device + pci_set_master do)."""
    fn.config_write(0x04, 2, fn.config_read(0x04, 2) | 0x6)


def bus_master(fn: VirtioPciFunction, on: bool) -> None:
    """Set or clear COMMAND.BME (bus mastering), keeping the other bits."""
    cmd = fn.config_read(COMMAND, 2)
    fn.config_write(COMMAND, 2, (cmd | CMD_MASTER) if on else (cmd & ~CMD_MASTER))


def cread(fn: VirtioPciFunction, off: int, size: int) -> int:
    return fn.bar_read(BAR, QEMU_COMMON_OFFSET + off, size)


def cwrite(fn: VirtioPciFunction, off: int, size: int, value: int) -> None:
    fn.bar_write(BAR, QEMU_COMMON_OFFSET + off, size, value)


def status(fn: VirtioPciFunction) -> int:
    """device_status, read raw."""
    return cread(fn, DEVICE_STATUS, 1)


def find_caps(fn: VirtioPciFunction) -> dict[int, list[int]]:
    """Walk the capability list with dword reads; map cap id -> offsets."""
    out: dict[int, list[int]] = {}
    pos = fn.config_read(0x34, 4) & 0xFC
    seen = set()
    while pos and pos not in seen:
        seen.add(pos)
        hdr = fn.config_read(pos, 4)
        out.setdefault(hdr & 0xFF, []).append(pos)
        pos = (hdr >> 8) & 0xFC
    return out


def virtio_caps(fn: VirtioPciFunction) -> dict[int, list[int]]:
    """The vendor (0x09) capabilities by cfg_type (byte 3): type -> offsets, in list order."""
    out: dict[int, list[int]] = {}
    for pos in find_caps(fn).get(0x09, []):
        out.setdefault(fn.config_read(pos + 3, 1), []).append(pos)
    return out

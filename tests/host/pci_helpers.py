"""Test helpers: raw register access by reference offsets (not through the project's driver)."""

from __future__ import annotations

from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.spec.constants import QEMU_COMMON_OFFSET, QEMU_MODERN_BAR

BAR = QEMU_MODERN_BAR


def enable(fn: VirtioPciFunction) -> None:
    """Memory decoding + bus master on (what pci_enable_device + pci_set_master do)."""
    fn.config_write(0x04, 2, fn.config_read(0x04, 2) | 0x6)


def cread(fn: VirtioPciFunction, off: int, size: int) -> int:
    return fn.bar_read(BAR, QEMU_COMMON_OFFSET + off, size)


def cwrite(fn: VirtioPciFunction, off: int, size: int, value: int) -> None:
    fn.bar_write(BAR, QEMU_COMMON_OFFSET + off, size, value)


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

"""Guest-side virtio PCI transport: everything found by walking the capability list (virtio 1.4 §4.1.4).

It uses only a function's four accessors (``config_read``, ``config_write``, ``bar_read``, ``bar_write``) and
reads the capability list a dword at a time, as real PCI code does. It is the pyvirtio counterpart of Linux
``virtio_pci_modern_dev`` plus the bits of the PCI core a virtio driver relies on (enable/disable, bus master,
MSI-X, PMCSR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_DEVICE_ID,
    PCI_MSIX_ENTRY_ADDR_HI,
    PCI_MSIX_ENTRY_ADDR_LO,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_QSIZE,
    PCI_MSIX_PBA,
    PCI_MSIX_TABLE,
    PCI_PM_CTRL,
    PCI_STATUS,
    PCI_VENDOR_ID,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_BAR,
    VIRTIO_PCI_CAP_LENGTH,
    VIRTIO_PCI_CAP_OFFSET,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_NOTIFY_CAP_MULT,
    VIRTIO_PCI_VENDOR_ID,
    CommonCfg,
    PciCapId,
    PciCommand,
    PciStatusReg,
    Pmcsr,
    PowerState,
    VirtioPciCap,
)


class PciFunctionAccess(Protocol):
    """The four accessors a guest has to a PCI function."""

    def config_read(self, offset: int, size: int) -> int: ...

    def config_write(self, offset: int, size: int, value: int) -> None: ...

    def bar_read(self, bar: int, offset: int, size: int) -> int: ...

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None: ...


class Platform(Protocol):
    """What the transport needs from the machine: time to wait and interrupt routing."""

    def run_until(self, predicate: Callable[[], bool], timeout: int = ...) -> bool: ...

    def alloc_msi(self, handler: Callable[[], None]) -> tuple[int, int]: ...

    def free_msi(self, data: int) -> None: ...

    def set_intx_handler(self, src: str, handler: Callable[[], None] | None) -> None: ...


@dataclass(frozen=True)
class Window:
    """A virtio structure located by a capability: ``bar`` + ``offset``, ``length`` bytes."""

    bar: int
    offset: int
    length: int


class PciTransport:
    """A virtio-pci modern transport driver over one function."""

    RESET_TIMEOUT = 100 * MS

    def __init__(self, fn: PciFunctionAccess, platform: Platform, name: str = "virtio") -> None:
        self.fn = fn
        self.platform = platform
        self.name = name
        vendor = fn.config_read(PCI_VENDOR_ID, 2)
        device = fn.config_read(PCI_DEVICE_ID, 2)
        if vendor != VIRTIO_PCI_VENDOR_ID or not VIRTIO_PCI_MODERN_DEVICE_ID_BASE <= device <= 0x107F:
            raise DriverError(f"not a modern virtio PCI function ({vendor:04x}:{device:04x})")
        self.device_id = device - VIRTIO_PCI_MODERN_DEVICE_ID_BASE
        self.common: Window | None = None
        self.notify_cfg: Window | None = None
        self.notify_mult = 0
        self.isr: Window | None = None
        self.device_cfg: Window | None = None
        self.pci_cfg_cap = 0
        self.msix_cap = 0
        self.pm_cap = 0
        self._msi_data: list[int] = []
        self.msix_enabled = False
        self._walk_capabilities()
        if self.common is None or self.notify_cfg is None or self.isr is None:
            raise DriverError("virtio PCI function lacks a COMMON, NOTIFY or ISR capability")

    # -- discovery --------------------------------------------------------------------------------------------

    def _cfg8(self, off: int) -> int:
        """Byte read done as an aligned dword read (what the capability walk must tolerate)."""
        return (self.fn.config_read(off & ~3, 4) >> (8 * (off & 3))) & 0xFF

    def _walk_capabilities(self) -> None:
        if not self.fn.config_read(PCI_STATUS, 2) & PciStatusReg.CAP_LIST:
            return
        pos = self._cfg8(PCI_CAPABILITY_LIST) & ~3
        seen: set[int] = set()
        while pos and pos not in seen and 0x40 <= pos < 0x100:
            seen.add(pos)
            header = self.fn.config_read(pos, 4)
            cap_id, nxt = header & 0xFF, (header >> 8) & 0xFF
            if cap_id == PciCapId.VENDOR:
                self._virtio_cap(pos, (header >> 24) & 0xFF)
            elif cap_id == PciCapId.MSIX and not self.msix_cap:
                self.msix_cap = pos
            elif cap_id == PciCapId.PM and not self.pm_cap:
                self.pm_cap = pos
            pos = nxt & ~3

    def _virtio_cap(self, pos: int, cfg_type: int) -> None:
        bar = self._cfg8(pos + VIRTIO_PCI_CAP_BAR)
        if bar > 5 and cfg_type != VirtioPciCap.PCI_CFG:
            return  # §4.1.4: reserved BAR values are ignored
        win = Window(bar, self.fn.config_read(pos + VIRTIO_PCI_CAP_OFFSET, 4),
                     self.fn.config_read(pos + VIRTIO_PCI_CAP_LENGTH, 4))
        # The first capability of each type that the driver supports wins (§4.1.4).
        if cfg_type == VirtioPciCap.COMMON_CFG and self.common is None:
            self.common = win
        elif cfg_type == VirtioPciCap.NOTIFY_CFG and self.notify_cfg is None:
            self.notify_cfg = win
            self.notify_mult = self.fn.config_read(pos + VIRTIO_PCI_NOTIFY_CAP_MULT, 4)
        elif cfg_type == VirtioPciCap.ISR_CFG and self.isr is None:
            self.isr = win
        elif cfg_type == VirtioPciCap.DEVICE_CFG and self.device_cfg is None:
            self.device_cfg = win
        elif cfg_type == VirtioPciCap.PCI_CFG and not self.pci_cfg_cap:
            self.pci_cfg_cap = pos

    # -- PCI core helpers -------------------------------------------------------------------------------------

    def enable_device(self) -> None:
        """``pci_enable_device`` + ``pci_set_master``: memory decoding and bus mastering on."""
        cmd = self.fn.config_read(PCI_COMMAND, 2)
        self.fn.config_write(PCI_COMMAND, 2, cmd | PciCommand.MEMORY | PciCommand.MASTER)

    def disable_device(self) -> None:
        """``pci_disable_device``: bus mastering off (QEMU then drops DRIVER_OK)."""
        cmd = self.fn.config_read(PCI_COMMAND, 2)
        self.fn.config_write(PCI_COMMAND, 2, cmd & ~PciCommand.MASTER)

    def save_config(self) -> bytes:
        """``pci_save_state``: the first 64 bytes of the header plus MSI-X control."""
        data = b"".join(self.fn.config_read(o, 4).to_bytes(4, "little") for o in range(0, 0x40, 4))
        msix = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2) if self.msix_cap else 0
        return data + msix.to_bytes(2, "little")

    def restore_config(self, saved: bytes) -> None:
        """``pci_restore_state``: BARs first, then command, then MSI-X control."""
        for o in range(0x10, 0x28, 4):
            self.fn.config_write(o, 4, int.from_bytes(saved[o : o + 4], "little"))
        self.fn.config_write(0x3C, 1, saved[0x3C])
        self.fn.config_write(PCI_COMMAND, 2, int.from_bytes(saved[4:6], "little"))
        if self.msix_cap:
            self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, int.from_bytes(saved[0x40:0x42], "little"))

    def pmcsr(self) -> int:
        return self.fn.config_read(self.pm_cap + PCI_PM_CTRL, 2) if self.pm_cap else 0

    def supports_pm_no_reset(self) -> bool:
        """Linux ``vp_supports_pm_no_reset``: a PM cap whose PMCSR reads No_Soft_Reset (and is not all-ones)."""
        if not self.pm_cap:
            return False
        v = self.pmcsr()
        return v != 0xFFFF and bool(v & Pmcsr.NO_SOFT_RESET)

    def set_power_state(self, state: PowerState) -> None:
        if not self.pm_cap:
            return
        v = self.pmcsr()
        self.fn.config_write(self.pm_cap + PCI_PM_CTRL, 2, (v & ~(Pmcsr.STATE_MASK | Pmcsr.PME_STATUS)) | state)

    def power_state(self) -> PowerState:
        return PowerState(self.pmcsr() & Pmcsr.STATE_MASK) if self.pm_cap else PowerState.D0

    # -- common config --------------------------------------------------------------------------------------------

    def _common(self) -> Window:
        assert self.common is not None
        return self.common

    def read(self, field: CommonCfg) -> int:
        c = self._common()
        return self.fn.bar_read(c.bar, c.offset + field, COMMON_CFG_WIDTH[field])

    def write(self, field: CommonCfg, value: int) -> None:
        c = self._common()
        self.fn.bar_write(c.bar, c.offset + field, COMMON_CFG_WIDTH[field], value)

    def get_status(self) -> int:
        return self.read(CommonCfg.DEVICE_STATUS)

    def set_status(self, value: int) -> None:
        self.write(CommonCfg.DEVICE_STATUS, value)

    def add_status(self, bits: int) -> None:
        """Linux ``virtio_add_status``: read-modify-write of the whole byte."""
        self.set_status(self.get_status() | bits)

    def reset(self) -> None:
        """Write 0 and wait until 0 reads back (§4.1.4.3.2 MUST)."""
        self.set_status(0)
        if not self.platform.run_until(lambda: self.get_status() == 0, self.RESET_TIMEOUT):
            raise DriverTimeout(f"{self.name}: device did not complete reset")

    def device_features(self) -> int:
        feats = 0
        for sel in range(2):
            self.write(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            feats |= self.read(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return feats

    def set_driver_features(self, feats: int) -> None:
        for sel in range(2):
            self.write(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.write(CommonCfg.DRIVER_FEATURE, (feats >> (32 * sel)) & 0xFFFFFFFF)

    def num_queues(self) -> int:
        return self.read(CommonCfg.NUM_QUEUES)

    def queue_max_size(self, index: int) -> int:
        self.write(CommonCfg.QUEUE_SELECT, index)
        return self.read(CommonCfg.QUEUE_SIZE)

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int, vector: int) -> int:
        """Program and enable queue ``index``; returns the vector the device accepted (NO_VECTOR = failed)."""
        self.write(CommonCfg.QUEUE_SELECT, index)
        self.write(CommonCfg.QUEUE_SIZE, size)
        for lo, addr in ((CommonCfg.QUEUE_DESC_LO, desc), (CommonCfg.QUEUE_DRIVER_LO, driver),
                         (CommonCfg.QUEUE_DEVICE_LO, device)):
            self.write(lo, addr & 0xFFFFFFFF)
            self.write(CommonCfg(lo + 4), addr >> 32)
        accepted = VIRTIO_MSI_NO_VECTOR
        if vector != VIRTIO_MSI_NO_VECTOR:
            self.write(CommonCfg.QUEUE_MSIX_VECTOR, vector)
            accepted = self.read(CommonCfg.QUEUE_MSIX_VECTOR)  # §4.1.5.1.2: read back to confirm
        self.write(CommonCfg.QUEUE_ENABLE, 1)
        return accepted

    def queue_enabled(self, index: int) -> bool:
        self.write(CommonCfg.QUEUE_SELECT, index)
        return bool(self.read(CommonCfg.QUEUE_ENABLE))

    def queue_desc_addr(self, index: int) -> int:
        self.write(CommonCfg.QUEUE_SELECT, index)
        return self.read(CommonCfg.QUEUE_DESC_LO) | (self.read(CommonCfg.QUEUE_DESC_HI) << 32)

    def set_config_vector(self, vector: int) -> int:
        self.write(CommonCfg.CONFIG_MSIX_VECTOR, vector)
        return self.read(CommonCfg.CONFIG_MSIX_VECTOR)

    def notify(self, index: int) -> None:
        """Available-buffer notification: 16-bit write of the queue index at its notify address (§4.1.4.4)."""
        assert self.notify_cfg is not None
        self.write(CommonCfg.QUEUE_SELECT, index)
        off = self.read(CommonCfg.QUEUE_NOTIFY_OFF)
        self.fn.bar_write(self.notify_cfg.bar, self.notify_cfg.offset + off * self.notify_mult, 2, index)

    def read_isr(self) -> int:
        assert self.isr is not None
        return self.fn.bar_read(self.isr.bar, self.isr.offset, 1)

    # -- device config ----------------------------------------------------------------------------------------

    def generation(self) -> int:
        return self.read(CommonCfg.CONFIG_GENERATION)

    def config_read(self, offset: int, size: int) -> int:
        if self.device_cfg is None or offset + size > self.device_cfg.length:
            raise DriverError(f"{self.name}: device config read beyond the structure")
        return self.fn.bar_read(self.device_cfg.bar, self.device_cfg.offset + offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if self.device_cfg is None or offset + size > self.device_cfg.length:
            raise DriverError(f"{self.name}: device config write beyond the structure")
        self.fn.bar_write(self.device_cfg.bar, self.device_cfg.offset + offset, size, value)

    def config_read_consistent(self, fields: list[tuple[int, int]], tries: int = 16) -> list[int]:
        """Read several fields under one ``config_generation`` (§2.5.1 driver read loop)."""
        for _ in range(tries):
            before = self.generation()
            values = [self.config_read(o, s) for o, s in fields]
            if self.generation() == before:
                return values
        raise DriverError(f"{self.name}: config generation kept changing")

    # -- interrupts -----------------------------------------------------------------------------------------

    def msix_table_size(self) -> int:
        if not self.msix_cap:
            return 0
        return (self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE) + 1

    def setup_msix(self, handlers: list[Callable[[], None]]) -> bool:
        """Program one table entry per handler and enable MSI-X. False if the table is too small."""
        n = self.msix_table_size()
        if n < len(handlers):
            return False
        table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        self.fn.config_read(self.msix_cap + PCI_MSIX_PBA, 4)
        bar, base = table & 0x7, table & ~0x7
        self.free_msix()
        for i, h in enumerate(handlers):
            addr, data = self.platform.alloc_msi(h)
            self._msi_data.append(data)
            e = base + i * PCI_MSIX_ENTRY_SIZE
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_ADDR_LO, 4, addr & 0xFFFFFFFF)
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_ADDR_HI, 4, addr >> 32)
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_DATA, 4, data)
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0)
        flags = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2)
        self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, flags | PCI_MSIX_FLAGS_ENABLE)
        self.msix_enabled = True
        return True

    def mask_vector(self, index: int, masked: bool) -> None:
        table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        e = (table & ~0x7) + index * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        self.fn.bar_write(table & 0x7, e, 4, PCI_MSIX_ENTRY_CTRL_MASKBIT if masked else 0)

    def free_msix(self) -> None:
        for d in self._msi_data:
            self.platform.free_msi(d)
        self._msi_data.clear()
        if self.msix_cap and self.msix_enabled:
            flags = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2)
            self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, flags & ~PCI_MSIX_FLAGS_ENABLE)
        self.msix_enabled = False

    def setup_intx(self, handler: Callable[[], None] | None) -> None:
        self.platform.set_intx_handler(self.name, handler)

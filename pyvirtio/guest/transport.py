"""Guest-side virtio PCI transport: everything found by walking the capability list (virtio 1.4 §4.1.4).

It uses only a function's four accessors (``config_read``, ``config_write``, ``bar_read``, ``bar_write``) and
reads the capability list a dword at a time, as real PCI code does. It is the pyvirtio counterpart of Linux
``virtio_pci_modern_dev`` plus the bits of the PCI core a virtio driver relies on (enable/disable, bus master,
MSI-X, PMCSR).

* :class:`Transport` is what the guest half uses of a transport (rcore virtio-drivers' ``Transport`` trait): a
  driver takes one as a parameter, so tests can hand it a :class:`PciTransport` over
  :class:`~pyvirtio.guest.fake.FakeFunction`, or a transport of their own.
* :func:`walk_capabilities` reads the capability list into typed :class:`PciCapability` records;
  :attr:`PciTransport.capabilities` keeps them (``pyvirtio info`` renders them).
* :func:`poll` is how the guest waits for a register to change (Linux polls with ``msleep(1)``): a device reset
  (§4.1.4.3.2: ``device_status`` reads 0) and a queue reset (``queue_reset`` reads 0).

Contract: a register that does not answer in time raises :class:`~pyvirtio.errors.DriverTimeout`; a hostile
capability list or structure is skipped or refused with :class:`~pyvirtio.errors.DriverError`, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_BAR0,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_LINE,
    PCI_MSIX_BIR_MASK,
    PCI_MSIX_ENTRY_ADDR_HI,
    PCI_MSIX_ENTRY_ADDR_LO,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_FLAGS_QSIZE,
    PCI_MSIX_PBA,
    PCI_MSIX_TABLE,
    PCI_NUM_BARS,
    PCI_PM_CTRL,
    PCI_PM_PMC,
    PCI_STATUS,
    PCI_VENDOR_ID,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_BAR,
    VIRTIO_PCI_CAP_CFG_TYPE,
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
    Status,
    VirtioPciCap,
)

#: Highest modern virtio PCI device id (0x1040 + 63, virtio 1.4 §4.1.2.1).
_MODERN_DEVICE_ID_LAST = 0x107F
#: The Transitional PCI Device IDs and the virtio device each one is (virtio 1.4 §4.1.2.1 table): a driver for one
#: of these types matches its transitional id too (§4.1.2.2).
TRANSITIONAL_DEVICE_IDS: dict[int, int] = {
    0x1000: 1,  # network
    0x1001: 2,  # block
    0x1002: 5,  # memory balloon (traditional)
    0x1003: 3,  # console
    0x1004: 8,  # SCSI host
    0x1005: 4,  # entropy source
    0x1009: 9,  # 9P transport
}
#: How often the guest re-reads a register it waits on (Linux ``msleep(1)``).
POLL_INTERVAL = 1 * MS
#: The common-config fields of virtio 1.0 end here; a COMMON_CFG structure shorter than this cannot be used.
_COMMON_MIN_LEN = CommonCfg.QUEUE_DEVICE_HI + 4
#: Fields the driver never writes (virtio 1.4 §4.1.4.3.2).
_DRIVER_READ_ONLY = frozenset({CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
                               CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_NOTIF_CONFIG_DATA})
#: Capabilities live in the device-specific part of the 256-byte header (PCI 3.0 §6.7).
_CAP_MIN, _CAP_END = 0x40, 0x100
#: The standard type-0 header that ``pci_save_state`` keeps (PCI 3.0 §6.1).
_HEADER_SIZE = 0x40
#: Highest BAR index; a virtio capability naming another BAR is ignored (virtio 1.4 §4.1.4).
_BAR_LAST = 5


class PciFunctionAccess(Protocol):
    """The four accessors a guest has to a PCI function (config space and memory BARs)."""

    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` (1, 2 or 4) bytes of configuration space at ``offset``, little-endian."""
        ...

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of configuration space at ``offset``."""
        ...

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` in memory BAR ``bar`` (all-ones when decoding is off)."""
        ...

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset`` in memory BAR ``bar`` (dropped when decoding is off)."""
        ...


class Platform(Protocol):
    """What the transport needs from the machine: time to wait and interrupt routing."""

    def run_until(self, predicate: Callable[[], bool], timeout: int = ...) -> bool:
        """Let time pass until ``predicate()`` holds (True) or ``timeout`` ns passed (False)."""
        ...

    def alloc_msi(self, handler: Callable[[], None]) -> tuple[int, int]:
        """An MSI (address, data) pair whose delivery calls ``handler``."""
        ...

    def free_msi(self, data: int) -> None:
        """Forget the MSI allocated with ``data``."""
        ...

    def set_intx_handler(self, src: str, handler: Callable[[], None] | None) -> None:
        """Route INTx of function ``src`` to ``handler`` (None: unroute)."""
        ...


@dataclass(frozen=True)
class Window:
    """A virtio structure located by a capability: ``bar`` + ``offset``, ``length`` bytes."""

    bar: int
    offset: int
    length: int


def virtio_device_id(vendor: int, pci_device: int) -> int | None:
    """The virtio device id a PCI function with these ids is, or None if it is no virtio device (virtio 1.4
    §4.1.2.2): vendor 0x1AF4 and either a modern id 0x1040..0x107F (0x1040 + virtio id) or a Transitional PCI
    Device ID of :data:`TRANSITIONAL_DEVICE_IDS`. The revision id is not looked at: any matches."""
    # spec: drv:pci/discovery#1, drv:pci/discovery#2, drv:pci/discovery#3
    if vendor != VIRTIO_PCI_VENDOR_ID:
        return None
    if VIRTIO_PCI_MODERN_DEVICE_ID_BASE <= pci_device <= _MODERN_DEVICE_ID_LAST:
        return pci_device - VIRTIO_PCI_MODERN_DEVICE_ID_BASE
    return TRANSITIONAL_DEVICE_IDS.get(pci_device)


def poll(platform: Platform, check: Callable[[], bool], timeout: int, interval: int = POLL_INTERVAL) -> bool:
    """Re-read until ``check()`` holds (True) or ``timeout`` ns pass (False), the way a driver polls a register:
    at least once per ``interval`` of virtual time, and after every event in between."""
    waited = 0
    while True:
        chunk = max(0, min(interval, timeout - waited))
        if platform.run_until(check, chunk):
            return True
        waited += chunk
        if waited >= timeout:
            return False


# -- the capability list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PciCapability:
    """One entry of a function's capability list (PCI 3.0 §6.7): where it is and its id."""

    pos: int
    cap_id: int


@dataclass(frozen=True)
class VirtioPciCapability(PciCapability):
    """A ``struct virtio_pci_cap`` (virtio 1.4 §4.1.4): a structure of type ``cfg_type`` in ``bar``.

    ``notify_off_multiplier`` is set for NOTIFY_CFG only (§4.1.4.4).
    """

    cfg_type: int
    bar: int
    offset: int
    length: int
    notify_off_multiplier: int | None = None

    @property
    def window(self) -> Window:
        """The structure's location as a :class:`Window`."""
        return Window(self.bar, self.offset, self.length)


@dataclass(frozen=True)
class MsixCapability(PciCapability):
    """The MSI-X capability (PCI 3.0 §6.8.2): message control, table and PBA (offset | BIR) as read."""

    control: int
    table: int
    pba: int

    @property
    def table_size(self) -> int:
        """Number of table entries (Table Size field + 1)."""
        return (self.control & PCI_MSIX_FLAGS_QSIZE) + 1

    @property
    def table_bar(self) -> int:
        """BAR holding the vector table."""
        return self.table & PCI_MSIX_BIR_MASK

    @property
    def table_offset(self) -> int:
        """Offset of the vector table in :attr:`table_bar`."""
        return self.table & ~PCI_MSIX_BIR_MASK

    @property
    def pba_bar(self) -> int:
        """BAR holding the pending bit array."""
        return self.pba & PCI_MSIX_BIR_MASK

    @property
    def pba_offset(self) -> int:
        """Offset of the pending bit array in :attr:`pba_bar`."""
        return self.pba & ~PCI_MSIX_BIR_MASK


@dataclass(frozen=True)
class PmCapability(PciCapability):
    """The PCI Power Management capability (PCI PM 1.2 §3.2): PMC, and PMCSR as read during the walk."""

    pmc: int
    pmcsr: int


def walk_capabilities(fn: PciFunctionAccess) -> list[PciCapability]:
    """Read ``fn``'s capability list in order, with aligned dword reads (virtio 1.4 §4.1.4, PCI 3.0 §6.7).

    Stops at a null pointer, a pointer outside 0x40..0xFF, or a loop (a hostile list cannot hang the walk).
    Returns an empty list when Status.Capabilities List is clear. Only reads: the driver writes no capability
    field (§4.1.4.1). ``cap_len`` is not used to bound anything, so a capability longer than the structure the
    driver knows is read like any other (§4.1.4.1).
    """
    # spec: drv:pci/caps#3, drv:pci/caps#7, drv:pci/layout-detection/legacy#3

    def cfg8(off: int) -> int:  # byte read done as an aligned dword read (what the walk must tolerate)
        return (fn.config_read(off & ~3, 4) >> (8 * (off & 3))) & 0xFF

    caps: list[PciCapability] = []
    if not fn.config_read(PCI_STATUS, 2) & PciStatusReg.CAP_LIST:
        return caps
    pos = cfg8(PCI_CAPABILITY_LIST) & ~3
    seen: set[int] = set()
    while pos and pos not in seen and _CAP_MIN <= pos < _CAP_END:
        seen.add(pos)
        header = fn.config_read(pos, 4)
        cap_id, nxt = header & 0xFF, (header >> 8) & 0xFF
        cap: PciCapability
        if cap_id == PciCapId.VENDOR:
            cfg_type = (header >> (8 * VIRTIO_PCI_CAP_CFG_TYPE)) & 0xFF
            mult = fn.config_read(pos + VIRTIO_PCI_NOTIFY_CAP_MULT, 4) if cfg_type == VirtioPciCap.NOTIFY_CFG else None
            cap = VirtioPciCapability(pos, cap_id, cfg_type, cfg8(pos + VIRTIO_PCI_CAP_BAR),
                                      fn.config_read(pos + VIRTIO_PCI_CAP_OFFSET, 4),
                                      fn.config_read(pos + VIRTIO_PCI_CAP_LENGTH, 4), mult)
        elif cap_id == PciCapId.MSIX:
            cap = MsixCapability(pos, cap_id, fn.config_read(pos + PCI_MSIX_FLAGS, 2),
                                 fn.config_read(pos + PCI_MSIX_TABLE, 4), fn.config_read(pos + PCI_MSIX_PBA, 4))
        elif cap_id == PciCapId.PM:
            cap = PmCapability(pos, cap_id, fn.config_read(pos + PCI_PM_PMC, 2), fn.config_read(pos + PCI_PM_CTRL, 2))
        else:
            cap = PciCapability(pos, cap_id)
        caps.append(cap)
        pos = nxt & ~3
    return caps


# -- what the guest half uses of a transport ------------------------------------------------------------------------


class Transport(Protocol):
    """The transport as the guest half uses it (rcore virtio-drivers ``Transport``): :class:`PciTransport`
    implements it; a driver takes one as a parameter (``VirtioDriver(..., transport=...)``).

    The virtio part (status, features, queues, notifications, device configuration, interrupts) is what the
    driver core and device drivers use; the PCI-function part (enable, config save/restore, power state,
    No_Soft_Reset, common-config fields) is what the guest kernel's PM core and the freeze_mode extension use.
    """

    name: str

    @property
    def device_id(self) -> int:
        """The virtio device id (virtio 1.4 §5)."""
        ...

    # virtio 1.4 §2.1 device status
    def get_status(self) -> int:
        """Read ``device_status``."""
        ...

    def set_status(self, value: int) -> None:
        """Write ``device_status``."""
        ...

    def add_status(self, bits: int) -> None:
        """Read-modify-write ``device_status`` to set ``bits``."""
        ...

    def reset(self) -> None:
        """Reset the device and wait until status reads 0 (§4.1.4.3.2)."""
        ...

    def reset_queue(self, index: int, timeout: int) -> None:
        """Reset queue ``index`` (VIRTIO_F_RING_RESET) and wait until the reset is complete (§4.1.4.3.2)."""
        ...

    # §2.2 features
    def device_features(self) -> int:
        """The 64 feature bits the device offers."""
        ...

    def set_driver_features(self, feats: int) -> None:
        """Write the 64 feature bits the driver accepts."""
        ...

    # §2.7 / §4.1.4.3 virtqueues
    def num_queues(self) -> int:
        """``num_queues``."""
        ...

    def queue_max_size(self, index: int) -> int:
        """Maximum size of queue ``index`` (0: the queue does not exist)."""
        ...

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int, vector: int, *,
                    enable: bool = True) -> int:
        """Program (and with ``enable``, enable) queue ``index``; returns the MSI-X vector the device accepted."""
        ...

    def enable_queue(self, index: int) -> None:
        """``queue_enable`` = 1 for queue ``index`` (programmed before)."""
        ...

    def set_config_vector(self, vector: int) -> int:
        """Route configuration changes to MSI-X ``vector``; returns the vector accepted."""
        ...

    def notify(self, index: int) -> None:
        """Available-buffer notification for queue ``index`` (§4.1.4.4)."""
        ...

    def read_isr(self) -> int:
        """Read (and so clear) the ISR status (§4.1.4.5)."""
        ...

    # §2.5 device configuration space
    def generation(self) -> int:
        """``config_generation``."""
        ...

    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes of device configuration at ``offset``."""
        ...

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of device configuration at ``offset``."""
        ...

    def config_read_consistent(self, fields: list[tuple[int, int]], tries: int = 16) -> list[int]:
        """Read several fields under one ``config_generation`` (§2.5.1)."""
        ...

    # interrupts
    def setup_msix(self, handlers: list[Callable[[], None]]) -> bool:
        """One MSI-X vector per handler, MSI-X enabled with every entry masked; False if the table is too small."""
        ...

    def mask_vector(self, index: int, masked: bool) -> None:
        """Mask or unmask MSI-X table entry ``index`` (a vector is unmasked when its interrupt is requested)."""
        ...

    def release_vector(self, index: int) -> None:
        """Free MSI-X table entry ``index``'s interrupt: masked, then its address and data cleared."""
        ...

    def free_msix(self) -> None:
        """Release every vector and disable MSI-X."""
        ...

    def setup_intx(self, handler: Callable[[], None] | None) -> None:
        """Route INTx to ``handler`` (None: unroute)."""
        ...

    # the PCI function (Linux PCI core)
    def enable_device(self) -> None:
        """Memory decoding and bus mastering on."""
        ...

    def disable_device(self) -> None:
        """Bus mastering off."""
        ...

    def save_config(self) -> bytes:
        """Save the configuration header for :meth:`restore_config`."""
        ...

    def restore_config(self, saved: bytes) -> None:
        """Restore what :meth:`save_config` returned."""
        ...

    def supports_pm_no_reset(self) -> bool:
        """Whether PMCSR advertises No_Soft_Reset."""
        ...

    def set_power_state(self, state: PowerState) -> None:
        """Move the function to D-state ``state`` (no-op without a PM capability)."""
        ...

    def power_state(self) -> PowerState:
        """The function's D-state (D0 without a PM capability)."""
        ...

    def read(self, field: CommonCfg) -> int:
        """Read one common-configuration field (§4.1.4.3)."""
        ...

    def write(self, field: CommonCfg, value: int) -> None:
        """Write one common-configuration field (§4.1.4.3)."""
        ...


class PciTransport:
    """A virtio-pci modern transport driver over one function (implements :class:`Transport`).

    Construction checks the PCI identity (virtio 1.4 §4.1.2.2: vendor 0x1AF4, a modern device id 0x1040..0x107F
    or a transitional one of :data:`TRANSITIONAL_DEVICE_IDS`, any revision), walks the capability list and picks,
    for each structure type, the first capability it can use (§4.1.4.1); it raises :class:`DriverError` when
    COMMON, NOTIFY or ISR is missing (e.g. a legacy-only device: pyvirtio is a modern-only driver, §4.1.5.1.1.1).
    """

    RESET_TIMEOUT = 100 * MS

    def __init__(self, fn: PciFunctionAccess, platform: Platform, name: str = "virtio") -> None:
        self.fn = fn
        self.platform = platform
        self.name = name
        vendor = fn.config_read(PCI_VENDOR_ID, 2)
        device = fn.config_read(PCI_DEVICE_ID, 2)
        virtio_id = virtio_device_id(vendor, device)
        if virtio_id is None:
            raise DriverError(f"not a virtio PCI function ({vendor:04x}:{device:04x})")
        #: the virtio device id: PCI device id - 0x1040, or the transitional id's type (virtio 1.4 §4.1.2.1)
        self.device_id = virtio_id
        #: the PCI device id the function presents
        self.pci_device_id = device
        #: the capability list as walked at construction, in list order
        self.capabilities: list[PciCapability] = walk_capabilities(fn)
        self.common: Window | None = None
        self.notify_cfg: Window | None = None
        self._notify_off: dict[int, int] = {}  # per queue, read once at set-up (Linux vp_modern_map_vq_notify)
        self.notify_mult = 0
        self.isr: Window | None = None
        self.device_cfg: Window | None = None
        self.pci_cfg_cap = 0
        self.msix_cap = 0
        self.pm_cap = 0
        self._msi_data: list[int] = []
        self.msix_enabled = False
        for cap in self.capabilities:
            self._select(cap)
        if self.common is None or self.notify_cfg is None or self.isr is None:
            # spec: drv:pci/layout-detection/legacy#4
            raise DriverError("virtio PCI function lacks a COMMON, NOTIFY or ISR capability")

    # -- discovery --------------------------------------------------------------------------------------------

    def _select(self, cap: PciCapability) -> None:
        """Take ``cap`` unless an earlier capability of its kind was taken (§4.1.4.1: the first one the driver can
        use wins). A reserved ``cfg_type`` or ``bar`` is skipped, so is a COMMON_CFG too short for the fields the
        driver uses; a longer structure than the driver knows is fine (it only maps the fields it needs)."""
        # spec: drv:pci/caps#1, drv:pci/caps#2, drv:pci/caps#4, drv:pci/caps#5, drv:pci/caps#6
        if isinstance(cap, MsixCapability):
            self.msix_cap = self.msix_cap or cap.pos
        elif isinstance(cap, PmCapability):
            self.pm_cap = self.pm_cap or cap.pos
        elif isinstance(cap, VirtioPciCapability):
            if cap.cfg_type == VirtioPciCap.PCI_CFG:
                self.pci_cfg_cap = self.pci_cfg_cap or cap.pos
            elif cap.bar > _BAR_LAST:
                return  # §4.1.4: reserved BAR values are ignored
            elif cap.cfg_type == VirtioPciCap.COMMON_CFG and self.common is None:
                if cap.length >= _COMMON_MIN_LEN:
                    self.common = cap.window
            elif cap.cfg_type == VirtioPciCap.NOTIFY_CFG and self.notify_cfg is None:
                self.notify_cfg = cap.window
                self.notify_mult = cap.notify_off_multiplier or 0
            elif cap.cfg_type == VirtioPciCap.ISR_CFG and self.isr is None:
                self.isr = cap.window
            elif cap.cfg_type == VirtioPciCap.DEVICE_CFG and self.device_cfg is None:
                self.device_cfg = cap.window

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
        data = b"".join(self.fn.config_read(o, 4).to_bytes(4, "little") for o in range(0, _HEADER_SIZE, 4))
        msix = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2) if self.msix_cap else 0
        return data + msix.to_bytes(2, "little")

    def restore_config(self, saved: bytes) -> None:
        """``pci_restore_state``: BARs first, then command, then MSI-X control (the standard header and the MSI-X
        control word only: no virtio capability field is written, §4.1.4.1)."""
        # spec: drv:pci/caps#7
        for o in range(PCI_BAR0, PCI_BAR0 + 4 * PCI_NUM_BARS, 4):
            self.fn.config_write(o, 4, int.from_bytes(saved[o : o + 4], "little"))
        self.fn.config_write(PCI_INTERRUPT_LINE, 1, saved[PCI_INTERRUPT_LINE])
        self.fn.config_write(PCI_COMMAND, 2, int.from_bytes(saved[4:6], "little"))
        if self.msix_cap:
            self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, int.from_bytes(saved[_HEADER_SIZE:], "little"))

    def pmcsr(self) -> int:
        """PMCSR of the PM capability (PCI PM 1.2 §3.2.4); 0 without one."""
        return self.fn.config_read(self.pm_cap + PCI_PM_CTRL, 2) if self.pm_cap else 0

    def supports_pm_no_reset(self) -> bool:
        """Linux ``vp_supports_pm_no_reset``: a PM cap whose PMCSR reads No_Soft_Reset (and is not all-ones)."""
        if not self.pm_cap:
            return False
        v = self.pmcsr()
        return v != 0xFFFF and bool(v & Pmcsr.NO_SOFT_RESET)

    def set_power_state(self, state: PowerState) -> None:
        """``pci_set_power_state``: write PowerState, preserving No_Soft_Reset and not clearing PME_Status
        (RW1C); a no-op without a PM capability (PCI PM 1.2 §3.2.4)."""
        if not self.pm_cap:
            return
        v = self.pmcsr()
        self.fn.config_write(self.pm_cap + PCI_PM_CTRL, 2, (v & ~(Pmcsr.STATE_MASK | Pmcsr.PME_STATUS)) | state)

    def power_state(self) -> PowerState:
        """The function's D-state from PMCSR (D0 without a PM capability)."""
        return PowerState(self.pmcsr() & Pmcsr.STATE_MASK) if self.pm_cap else PowerState.D0

    # -- common config --------------------------------------------------------------------------------------------

    def _common(self) -> Window:
        assert self.common is not None
        return self.common

    def read(self, field: CommonCfg) -> int:
        """Read common-configuration ``field`` with its natural width, aligned (virtio 1.4 §4.1.3.1)."""
        c = self._common()
        # spec: drv:pci/layout#1
        return self.fn.bar_read(c.bar, c.offset + field, COMMON_CFG_WIDTH[field])

    def write(self, field: CommonCfg, value: int) -> None:
        """Write common-configuration ``field`` with its natural width, aligned (virtio 1.4 §4.1.3.1).

        ValueError (a driver bug, not a device fault) for a field the driver MUST NOT write (§4.1.4.3.2:
        device_feature, num_queues, config_generation, queue_notify_off, queue_notif_config_data) and for a 0
        written to ``queue_enable``."""
        # spec: drv:pci/common-cfg#1, drv:pci/common-cfg#6
        if field in _DRIVER_READ_ONLY:
            raise ValueError(f"{self.name}: the driver never writes {field.name} (§4.1.4.3.2)")
        if field == CommonCfg.QUEUE_ENABLE and value != 1:
            raise ValueError(f"{self.name}: the driver never writes {value} to queue_enable (§4.1.4.3.2)")
        c = self._common()
        # spec: drv:pci/layout#1
        self.fn.bar_write(c.bar, c.offset + field, COMMON_CFG_WIDTH[field], value)

    def get_status(self) -> int:
        """Read ``device_status`` (virtio 1.4 §2.1)."""
        return self.read(CommonCfg.DEVICE_STATUS)

    def set_status(self, value: int) -> None:
        """Write ``device_status`` (virtio 1.4 §2.1); 0 resets the device (§4.1.4.3.2)."""
        self.write(CommonCfg.DEVICE_STATUS, value)

    def add_status(self, bits: int) -> None:
        """Linux ``virtio_add_status``: read-modify-write of the whole byte, so no bit is ever cleared (§2.1.1)."""
        # spec: drv:status#2
        self.set_status(self.get_status() | bits)

    def reset(self) -> None:
        """Write 0 and poll until 0 reads back (§4.1.4.3.2 MUST, §2.4.2): only then is the reset complete and
        may the device be initialised again. :class:`DriverTimeout` if it never reads 0."""
        self.set_status(0)
        # spec: drv:reset#1, drv:pci/common-cfg#5
        if not poll(self.platform, lambda: self.get_status() == 0, self.RESET_TIMEOUT):
            raise DriverTimeout(f"{self.name}: device did not complete reset")

    def device_features(self) -> int:
        """The 64 offered feature bits, selecting each 32-bit half in turn (virtio 1.4 §4.1.4.3)."""
        feats = 0
        for sel in range(2):
            self.write(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            feats |= self.read(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return feats

    def set_driver_features(self, feats: int) -> None:
        """Write the 64 accepted feature bits, one 32-bit half per select (virtio 1.4 §4.1.4.3)."""
        for sel in range(2):
            self.write(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.write(CommonCfg.DRIVER_FEATURE, (feats >> (32 * sel)) & 0xFFFFFFFF)

    def num_queues(self) -> int:
        """``num_queues``: the number of queues the device supports (virtio 1.4 §4.1.4.3)."""
        return self.read(CommonCfg.NUM_QUEUES)

    def queue_max_size(self, index: int) -> int:
        """Select queue ``index`` and read its maximum size (0: unavailable, virtio 1.4 §4.1.4.3)."""
        self.write(CommonCfg.QUEUE_SELECT, index)
        return self.read(CommonCfg.QUEUE_SIZE)

    def setup_queue(self, index: int, size: int, desc: int, driver: int, device: int, vector: int, *,
                    enable: bool = True) -> int:
        """Program and enable queue ``index`` (§4.1.5.1.3; the same at first set-up and when re-enabling after a
        queue reset, §2.6.1.2): size (a power of 2), the three areas as lo/hi halves, the MSI-X vector read back
        (§4.1.5.1.2.2), and only then ``queue_enable`` = 1 — unless ``enable`` is False: Linux's
        ``vp_modern_find_vqs`` programs every queue first and enables them all at the end (:meth:`enable_queue`).
        Returns the vector the device accepted (NO_VECTOR = failed). ValueError when ``size`` is not a power of 2
        (a driver bug)."""
        # spec: drv:pci/common-cfg#3
        if size <= 0 or size & (size - 1):
            raise ValueError(f"{self.name}: queue size {size} is not a power of 2 (§4.1.4.3.2)")
        # spec: drv:pci/common-cfg#4, drv:vq-reenable#1
        self.write(CommonCfg.QUEUE_SELECT, index)
        self.write(CommonCfg.QUEUE_SIZE, size)
        self._notify_off[index] = self.read(CommonCfg.QUEUE_NOTIFY_OFF)
        for lo, addr in ((CommonCfg.QUEUE_DESC_LO, desc), (CommonCfg.QUEUE_DRIVER_LO, driver),
                         (CommonCfg.QUEUE_DEVICE_LO, device)):
            self.write(lo, addr & 0xFFFFFFFF)
            self.write(CommonCfg(lo + 4), addr >> 32)
        accepted = VIRTIO_MSI_NO_VECTOR
        if vector != VIRTIO_MSI_NO_VECTOR:
            self.write(CommonCfg.QUEUE_MSIX_VECTOR, vector)
            # spec: drv:pci/msix#3
            accepted = self.read(CommonCfg.QUEUE_MSIX_VECTOR)
        if enable:
            self.write(CommonCfg.QUEUE_ENABLE, 1)
        return accepted

    def enable_queue(self, index: int) -> None:
        """Select queue ``index`` and write ``queue_enable`` = 1 (its size, areas and vector are programmed)."""
        # spec: drv:pci/common-cfg#4
        self.write(CommonCfg.QUEUE_SELECT, index)
        self.write(CommonCfg.QUEUE_ENABLE, 1)

    def reset_queue(self, index: int, timeout: int) -> None:
        """Reset queue ``index`` (VIRTIO_F_RING_RESET, §4.1.4.3.2): write 1 to ``queue_reset``, then poll until
        ``queue_reset`` and ``queue_enable`` both read 0 — only then is the reset complete (§2.6.1.1.2). The queue
        is selected again before every read (an interrupt handler may notify another queue meanwhile).

        :class:`DriverTimeout` when the reset does not complete within ``timeout`` ns, :class:`DriverError` when
        the common configuration has no ``queue_reset`` field or the device enters DEVICE_NEEDS_RESET meanwhile.
        """
        if self._common().length < CommonCfg.QUEUE_RESET + COMMON_CFG_WIDTH[CommonCfg.QUEUE_RESET]:
            raise DriverError(f"{self.name}: common configuration has no queue_reset field")
        self.write(CommonCfg.QUEUE_SELECT, index)
        self.write(CommonCfg.QUEUE_RESET, 1)
        broken = False

        def done() -> bool:
            nonlocal broken
            self.write(CommonCfg.QUEUE_SELECT, index)
            if self.read(CommonCfg.QUEUE_RESET) == 0 and self.read(CommonCfg.QUEUE_ENABLE) == 0:
                return True
            broken = bool(self.get_status() & Status.DEVICE_NEEDS_RESET)
            return broken

        # spec: drv:vq-reset#1, drv:pci/common-cfg#7
        if not poll(self.platform, done, timeout) or broken:
            if broken:
                raise DriverError(f"{self.name}: device set DEVICE_NEEDS_RESET during the reset of queue {index}")
            raise DriverTimeout(f"{self.name}: queue {index} reset did not complete")

    def queue_enabled(self, index: int) -> bool:
        """Whether queue ``index`` reads ``queue_enable`` = 1."""
        self.write(CommonCfg.QUEUE_SELECT, index)
        return bool(self.read(CommonCfg.QUEUE_ENABLE))

    def queue_desc_addr(self, index: int) -> int:
        """The descriptor-area address of queue ``index`` as the device holds it."""
        self.write(CommonCfg.QUEUE_SELECT, index)
        return self.read(CommonCfg.QUEUE_DESC_LO) | (self.read(CommonCfg.QUEUE_DESC_HI) << 32)

    def set_config_vector(self, vector: int) -> int:
        """Write ``config_msix_vector`` and read it back: NO_VECTOR means refused (virtio 1.4 §4.1.5.1.2.2)."""
        self.write(CommonCfg.CONFIG_MSIX_VECTOR, vector)
        # spec: drv:pci/msix#3
        return self.read(CommonCfg.CONFIG_MSIX_VECTOR)

    def notify(self, index: int) -> None:
        """Available-buffer notification (§4.1.5.2): without VIRTIO_F_NOTIFICATION_DATA and
        VIRTIO_F_NOTIF_CONFIG_DATA (pyvirtio accepts neither) a 16-bit write of the queue index at the queue's
        notify address (§4.1.4.4), computed from ``queue_notify_off`` read when the queue was set up, as Linux
        does: a notification touches nothing but the notify BAR (so one sent in D3hot is simply not decoded)."""
        assert self.notify_cfg is not None
        off = self._notify_off.get(index)
        if off is None:  # a queue this transport did not set up (tests drive queues by hand)
            self.write(CommonCfg.QUEUE_SELECT, index)
            off = self.read(CommonCfg.QUEUE_NOTIFY_OFF)
        # spec: drv:pci/avail-notify#1, drv:pci/avail-notify#3
        self.fn.bar_write(self.notify_cfg.bar, self.notify_cfg.offset + off * self.notify_mult, 2, index)

    def read_isr(self) -> int:
        """Read the ISR status byte; the read clears it (virtio 1.4 §4.1.4.5)."""
        assert self.isr is not None
        return self.fn.bar_read(self.isr.bar, self.isr.offset, 1)

    # -- device config ----------------------------------------------------------------------------------------

    def generation(self) -> int:
        """``config_generation`` (virtio 1.4 §2.5.1)."""
        return self.read(CommonCfg.CONFIG_GENERATION)

    def config_read(self, offset: int, size: int) -> int:
        """Read device configuration; :class:`DriverError` past the DEVICE_CFG structure (virtio 1.4 §4.1.4.6).

        The structure may be any size: the driver only checks that the field it reads lies inside (§2.5.1), and
        reads exactly that field, aligned, with its width (§4.1.3.1); ValueError for a misaligned or odd width."""
        # spec: drv:config-space#3, drv:config-space#4, drv:pci/layout#1
        if size not in (1, 2, 4) or offset % size:
            raise ValueError(f"{self.name}: device config access of {size} bytes at {offset:#x} (§4.1.3.1)")
        if self.device_cfg is None or offset + size > self.device_cfg.length:
            raise DriverError(f"{self.name}: device config read beyond the structure")
        return self.fn.bar_read(self.device_cfg.bar, self.device_cfg.offset + offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write device configuration; :class:`DriverError` past the DEVICE_CFG structure (virtio 1.4 §4.1.4.6),
        ValueError for a misaligned or odd width (§4.1.3.1)."""
        # spec: drv:pci/layout#1
        if size not in (1, 2, 4) or offset % size:
            raise ValueError(f"{self.name}: device config access of {size} bytes at {offset:#x} (§4.1.3.1)")
        if self.device_cfg is None or offset + size > self.device_cfg.length:
            raise DriverError(f"{self.name}: device config write beyond the structure")
        self.fn.bar_write(self.device_cfg.bar, self.device_cfg.offset + offset, size, value)

    def config_read_consistent(self, fields: list[tuple[int, int]], tries: int = 16) -> list[int]:
        """Read several fields under one ``config_generation`` (§2.5.1 driver read loop): read the generation,
        the fields, the generation again, and retry while it changed. :class:`DriverError` after ``tries``."""
        # spec: drv:config-space#1
        for _ in range(tries):
            before = self.generation()
            values = [self.config_read(o, s) for o, s in fields]
            if self.generation() == before:
                return values
        raise DriverError(f"{self.name}: config generation kept changing")

    # -- interrupts -----------------------------------------------------------------------------------------

    def msix_table_size(self) -> int:
        """MSI-X table size from Message Control (PCI 3.0 §6.8.2.3); 0 without MSI-X."""
        if not self.msix_cap:
            return 0
        return (self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE) + 1

    def setup_msix(self, handlers: list[Callable[[], None]]) -> bool:
        """Program one table entry per handler and enable MSI-X, in Linux's order (``msix_capability_init``, as
        the real kernel was seen to do it through UML): Enable with Mask All, the entries' address and data
        programmed, INTx disabled in COMMAND, every table entry masked, Mask All cleared. The entries stay
        masked: each is unmasked when its interrupt is requested (:meth:`mask_vector`). False if there is no
        MSI-X capability or the table is too small (any Table Size 0..0x7FF is handled: the caller falls back to
        INTx, §4.1.5.1.2.2), so no event is ever routed to a vector beyond the table."""
        n = self.msix_table_size()
        # spec: drv:pci/msix#1, drv:pci/msix#2
        if n < len(handlers):
            return False
        table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        self.fn.config_read(self.msix_cap + PCI_MSIX_PBA, 4)
        bar, base = table & PCI_MSIX_BIR_MASK, table & ~PCI_MSIX_BIR_MASK
        self.free_msix()
        flags = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2)
        self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2,
                             flags | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        for i, h in enumerate(handlers):
            addr, data = self.platform.alloc_msi(h)
            self._msi_data.append(data)
            e = base + i * PCI_MSIX_ENTRY_SIZE
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_ADDR_LO, 4, addr & 0xFFFFFFFF)
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_ADDR_HI, 4, addr >> 32)
            self.fn.bar_write(bar, e + PCI_MSIX_ENTRY_DATA, 4, data)
        cmd = self.fn.config_read(PCI_COMMAND, 2)
        self.fn.config_write(PCI_COMMAND, 2, cmd | PciCommand.INTX_DISABLE)
        for i in range(n):
            self.fn.bar_write(bar, base + i * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL, 4,
                              PCI_MSIX_ENTRY_CTRL_MASKBIT)
        self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, (flags | PCI_MSIX_FLAGS_ENABLE)
                             & ~PCI_MSIX_FLAGS_MASKALL)
        self.msix_enabled = True
        return True

    def mask_vector(self, index: int, masked: bool) -> None:
        """Set or clear the Mask bit of MSI-X table entry ``index`` (PCI 3.0 §6.8.2.9)."""
        table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        e = (table & ~PCI_MSIX_BIR_MASK) + index * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        self.fn.bar_write(table & PCI_MSIX_BIR_MASK, e, 4, PCI_MSIX_ENTRY_CTRL_MASKBIT if masked else 0)

    def release_vector(self, index: int) -> None:
        """``free_irq`` of MSI-X table entry ``index`` (Linux, as seen through UML): the entry is masked, then
        its message is cleared (address and data written 0)."""
        self.mask_vector(index, True)
        table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
        bar, e = table & PCI_MSIX_BIR_MASK, (table & ~PCI_MSIX_BIR_MASK) + index * PCI_MSIX_ENTRY_SIZE
        for field in (PCI_MSIX_ENTRY_ADDR_LO, PCI_MSIX_ENTRY_ADDR_HI, PCI_MSIX_ENTRY_DATA):
            self.fn.bar_write(bar, e + field, 4, 0)

    def free_msix(self) -> None:
        """Release every MSI allocated by :meth:`setup_msix` and disable MSI-X as Linux's
        ``pci_free_irq_vectors`` does: every table entry masked, MSI-X Enable cleared, INTx enabled again in
        COMMAND."""
        for d in self._msi_data:
            self.platform.free_msi(d)
        self._msi_data.clear()
        if self.msix_cap and self.msix_enabled:
            table = self.fn.config_read(self.msix_cap + PCI_MSIX_TABLE, 4)
            bar, base = table & PCI_MSIX_BIR_MASK, table & ~PCI_MSIX_BIR_MASK
            for i in range(self.msix_table_size()):
                self.fn.bar_write(bar, base + i * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL, 4,
                                  PCI_MSIX_ENTRY_CTRL_MASKBIT)
            flags = self.fn.config_read(self.msix_cap + PCI_MSIX_FLAGS, 2)
            self.fn.config_write(self.msix_cap + PCI_MSIX_FLAGS, 2, flags & ~PCI_MSIX_FLAGS_ENABLE)
            cmd = self.fn.config_read(PCI_COMMAND, 2)
            if cmd & PciCommand.INTX_DISABLE:
                self.fn.config_write(PCI_COMMAND, 2, cmd & ~PciCommand.INTX_DISABLE)
        self.msix_enabled = False

    def setup_intx(self, handler: Callable[[], None] | None) -> None:
        """Route this function's INTx to ``handler`` (None: unroute)."""
        self.platform.set_intx_handler(self.name, handler)

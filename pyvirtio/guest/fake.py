"""Test seam: a virtio-pci function with no device behind it, and a platform with a virtual clock.

rcore virtio-drivers tests its drivers against a ``FakeTransport``; pyvirtio's counterpart sits one level
lower, so the real :class:`~pyvirtio.guest.transport.PciTransport` is exercised too:

* :class:`FakeFunction` implements :class:`~pyvirtio.guest.transport.PciFunctionAccess` over plain bytes. It
  presents a modern virtio-pci function's configuration header, capability list (virtio 1.4 §4.1.4: COMMON,
  NOTIFY, ISR, DEVICE; MSI-X; optionally PCI PM) and the common configuration registers (§4.1.4.3) with the
  register semantics a driver relies on — feature select windows, FEATURES_OK accepted or refused, reset,
  per-queue registers, ``queue_reset`` (§4.1.4.3.2), MSI-X vectors accepted or refused, ISR read-to-clear — and
  records every access. There is no device: nothing happens on its own. A test that wants a reaction (SUSPEND
  acknowledged, a config change) sets :attr:`FakeFunction.on_status` or schedules it on the platform's clock; a
  slow reset or queue reset is scripted by how many reads still present it as ongoing
  (:attr:`FakeFunction.reset_reads`, :attr:`FakeFunction.queue_reset_reads`).
* :class:`FakePlatform` implements :class:`~pyvirtio.guest.transport.Platform` with a
  :class:`~pyvirtio.clock.Scheduler`: waiting moves virtual time only, MSIs are routed to handlers.

Not used by the model itself; it imports nothing from :mod:`pyvirtio.host`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pyvirtio.clock import Scheduler
from pyvirtio.spec.constants import (
    COMMON_CFG_SIZE,
    COMMON_CFG_WIDTH,
    MSI_ADDRESS_BASE,
    PCI_BAR0,
    PCI_BAR_MEM64,
    PCI_BAR_PREFETCH,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_MSIX_CAP_SIZE,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_PM_CAP_SIZE,
    PCI_PM_CTRL,
    PCI_PM_PMC_VERSION_1_2,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_VENDOR_ID,
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_MSIX_BAR,
    QEMU_NOTIFY_OFF_MULTIPLIER,
    QEMU_NOTIFY_OFFSET,
    QEMU_REGION_SIZE,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_LEN,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_NOTIFY_CAP_LEN,
    VIRTIO_PCI_REVISION_MODERN,
    VIRTIO_PCI_VENDOR_ID,
    CommonCfg,
    DeviceId,
    Feature,
    PciCapId,
    PciCommand,
    PciStatusReg,
    Pmcsr,
    Status,
    VirtioPciCap,
    bit,
)

__all__ = ["Access", "FakeFunction", "FakePlatform", "FakeQueue", "acknowledge_suspend"]

_CONFIG_SIZE = 0x100
_FIRST_CAP = 0x40
_MSIX_BAR_SIZE = 0x1000
_MSIX_PBA_OFFSET = 0x800
_MSIX_MAX_VECTORS = 0x800  # Table Size is 11 bits: 1..2048 entries (PCI 3.0 §6.8.2.3)
_MODERN_BAR_SIZE = 0x4000
_CLASS_OTHER = 0xFF0000


@dataclass(frozen=True)
class Access:
    """One access a driver made: ``space`` is ``"config"`` or ``"bar<N>"``; ``write`` says its direction."""

    space: str
    offset: int
    size: int
    value: int
    write: bool


@dataclass
class FakeQueue:
    """The per-queue common-configuration registers of one queue (virtio 1.4 §4.1.4.3)."""

    max_size: int
    size: int = 0
    msix_vector: int = VIRTIO_MSI_NO_VECTOR
    enable: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    #: a queue reset is ongoing (``queue_reset`` reads 1)
    resetting: bool = False
    #: reads of ``queue_reset`` that still present 1 before the ongoing queue reset completes
    reset_reads_left: int = 0

    def reset(self) -> None:
        """Back to the reset values (§4.1.4.3.2: queue_enable 0, queue_reset 0, vectors unmapped; size back to
        the maximum)."""
        self.size, self.msix_vector, self.enable = self.max_size, VIRTIO_MSI_NO_VECTOR, 0
        self.desc = self.driver = self.device = 0
        self.resetting, self.reset_reads_left = False, 0


def acknowledge_suspend(old: int, new: int) -> int:
    """An :attr:`FakeFunction.on_status` that plays a device completing Device Suspend at once (virtio 1.4):
    SUSPEND written while running presents SUSPEND=1, DRIVER_OK=0; DRIVER_OK written while suspended presents
    SUSPEND=0, DRIVER_OK=1. Any other write is presented as written."""
    if new & Status.SUSPEND and new & Status.DRIVER_OK:
        return new & ~Status.DRIVER_OK if old & Status.DRIVER_OK else new & ~Status.SUSPEND
    return new


class FakeFunction:
    """A modern virtio-pci function made of bytes (implements ``PciFunctionAccess``); see the module docstring.

    ``features`` are the offered feature bits; ``queue_sizes`` the maximum size of each queue;
    ``device_config`` the device-specific configuration (no DEVICE_CFG capability when empty); ``pm`` adds a
    PCI PM capability (with No_Soft_Reset when ``no_soft_reset``); ``msix_vectors`` is the MSI-X table size
    (1..2048; 0: no MSI-X capability); ``pci_device_id`` overrides the PCI device id (default 0x1040 + id, e.g.
    0x1005 for a transitional entropy device) and ``revision`` the revision id. FEATURES_OK is refused when the
    driver accepted a bit that was not offered, or when :attr:`refuse_features_ok` is set (virtio 1.4 §3.1.1
    step 6).
    """

    def __init__(
        self,
        device_id: int = DeviceId.ENTROPY,
        *,
        features: int = bit(Feature.VERSION_1),
        queue_sizes: tuple[int, ...] = (64,),
        device_config: bytes = b"",
        msix_vectors: int | None = None,
        pm: bool = False,
        no_soft_reset: bool = False,
        pci_device_id: int | None = None,
        revision: int = VIRTIO_PCI_REVISION_MODERN,
    ) -> None:
        self.features = features
        self.queues = [FakeQueue(n, n) for n in queue_sizes]
        self.nvectors = msix_vectors if msix_vectors is not None else len(queue_sizes) + 1
        if not 0 <= self.nvectors <= _MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X table size {self.nvectors} is not in 0..{_MSIX_MAX_VECTORS}")
        table_bytes = self.nvectors * PCI_MSIX_ENTRY_SIZE
        #: where the pending bit array starts in the MSI-X BAR (after the table), and the BAR's size
        self.msix_pba_offset = max(_MSIX_PBA_OFFSET, table_bytes)
        self.msix_bar_size = max(_MSIX_BAR_SIZE, 1 << (self.msix_pba_offset * 2 - 1).bit_length())
        self.device_config = bytearray(device_config)
        self.cfg = bytearray(_CONFIG_SIZE)
        self.wmask = bytearray(_CONFIG_SIZE)
        self.msix_table = bytearray(self.nvectors * PCI_MSIX_ENTRY_SIZE)
        for v in range(self.nvectors):  # after reset every entry is masked (PCI 3.0 §6.8.2.9)
            self._set(self.msix_table, v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL, 4,
                      PCI_MSIX_ENTRY_CTRL_MASKBIT)
        #: every access, in order
        self.log: list[Access] = []
        #: every value written to ``device_status``, in order
        self.status_writes: list[int] = []
        #: ``(presented, written)`` for every ``device_status`` write: what the device showed just before
        self.status_log: list[tuple[int, int]] = []
        #: reads of ``device_status`` after a reset that still present the old value (a reset that takes a while)
        self.reset_reads = 0
        #: reads of ``queue_reset`` after writing 1 that still present 1 (a queue reset that takes a while;
        #: -1: it never completes)
        self.queue_reset_reads = 0
        #: queue indexes the driver wrote 1 to ``queue_reset`` for, in order
        self.queue_resets: list[int] = []
        #: queue indexes written to the notify region, in order
        self.notifications: list[int] = []
        #: ``(presented, written) -> presented``: how the fake answers a status write (default: as written)
        self.on_status: Callable[[int, int], int] | None = None
        #: refuse FEATURES_OK whatever the driver accepted
        self.refuse_features_ok = False
        #: refuse every MSI-X vector (reads back NO_VECTOR)
        self.refuse_vectors = False
        self.status = 0
        self.generation = 0
        self.isr = 0
        self.driver_features = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.msix_cap = 0
        self._stale_status = 0
        self._stale_reads = 0
        self._last_cap = 0
        self._next_free = _FIRST_CAP
        pci_id = pci_device_id if pci_device_id is not None else VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device_id
        self._build(pci_id, revision, pm, no_soft_reset)

    # -- construction -------------------------------------------------------------------------------------------

    @staticmethod
    def _set(buf: bytearray, off: int, size: int, value: int) -> None:
        buf[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    @staticmethod
    def _get(buf: bytes | bytearray, off: int, size: int) -> int:
        return int.from_bytes(buf[off : off + size], "little")

    def _build(self, pci_id: int, revision: int, pm: bool, no_soft_reset: bool) -> None:
        c = self.cfg
        self._set(c, PCI_VENDOR_ID, 2, VIRTIO_PCI_VENDOR_ID)
        self._set(c, PCI_DEVICE_ID, 2, pci_id)
        self._set(c, PCI_REVISION_ID, 4, (_CLASS_OTHER << 8) | (revision & 0xFF))
        self._set(c, PCI_INTERRUPT_PIN, 1, 1)
        self._set(self.wmask, PCI_COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER | PciCommand.INTX_DISABLE)
        self._set(self.wmask, PCI_INTERRUPT_LINE, 1, 0xFF)
        for index, size, flags in ((QEMU_MSIX_BAR, self.msix_bar_size, 0),
                                   (QEMU_MODERN_BAR, _MODERN_BAR_SIZE, PCI_BAR_MEM64 | PCI_BAR_PREFETCH)):
            off = PCI_BAR0 + 4 * index
            self._set(c, off, 4, flags)
            self._set(self.wmask, off, 4, ~(size - 1) & 0xFFFFFFF0)
            if flags & PCI_BAR_MEM64:
                self._set(self.wmask, off + 4, 4, 0xFFFFFFFF)
        if pm:
            pos = self.add_capability(PciCapId.PM, struct.pack("<HHBB", PCI_PM_PMC_VERSION_1_2, 0, 0, 0),
                                      PCI_PM_CAP_SIZE)
            self._set(self.wmask, pos + PCI_PM_CTRL, 2, Pmcsr.STATE_MASK)
            if no_soft_reset:
                self._set(c, pos + PCI_PM_CTRL, 2, Pmcsr.NO_SOFT_RESET)
        self.add_virtio_capability(VirtioPciCap.COMMON_CFG, QEMU_MODERN_BAR, QEMU_COMMON_OFFSET, COMMON_CFG_SIZE)
        self.add_virtio_capability(VirtioPciCap.NOTIFY_CFG, QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET,
                                   max(1, len(self.queues)) * QEMU_NOTIFY_OFF_MULTIPLIER,
                                   notify_off_multiplier=QEMU_NOTIFY_OFF_MULTIPLIER)
        self.add_virtio_capability(VirtioPciCap.ISR_CFG, QEMU_MODERN_BAR, QEMU_ISR_OFFSET, 1)
        if self.device_config:
            self.add_virtio_capability(VirtioPciCap.DEVICE_CFG, QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET,
                                       len(self.device_config))
        if self.nvectors:
            self.msix_cap = self.add_capability(
                PciCapId.MSIX,
                struct.pack("<HII", self.nvectors - 1, QEMU_MSIX_BAR, self.msix_pba_offset | QEMU_MSIX_BAR),
                PCI_MSIX_CAP_SIZE)
            self._set(self.wmask, self.msix_cap + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)

    def add_capability(self, cap_id: int, body: bytes, size: int | None = None) -> int:
        """Append a capability (``body`` follows the id/next bytes) to the list; returns its offset. Tests use it
        to add hostile or duplicate capabilities."""
        size = size if size is not None else 2 + len(body)
        pos = self._next_free
        if pos + size > _CONFIG_SIZE:
            raise ValueError("fake config space is full")
        self.cfg[pos] = cap_id
        self.cfg[pos + 2 : pos + 2 + len(body)] = body
        if self._last_cap:
            self.cfg[self._last_cap + 1] = pos
        else:
            self.cfg[PCI_CAPABILITY_LIST] = pos
            self._set(self.cfg, PCI_STATUS, 2, PciStatusReg.CAP_LIST)
        self._last_cap = pos
        self._next_free = (pos + size + 3) & ~3
        return pos

    def add_virtio_capability(self, cfg_type: int, bar: int, offset: int, length: int, *,
                              notify_off_multiplier: int | None = None) -> int:
        """Append a ``struct virtio_pci_cap`` (virtio 1.4 §4.1.4); returns its offset."""
        cap_len = VIRTIO_PCI_CAP_LEN if notify_off_multiplier is None else VIRTIO_PCI_NOTIFY_CAP_LEN
        body = struct.pack("<BBBBHII", cap_len, cfg_type, bar, 0, 0, offset, length)
        if notify_off_multiplier is not None:
            body += struct.pack("<I", notify_off_multiplier)
        return self.add_capability(PciCapId.VENDOR, body, cap_len)

    # -- what a test looks at -------------------------------------------------------------------------------------

    @property
    def memory_enabled(self) -> bool:
        """Whether Memory Space decoding is on (BAR accesses answer)."""
        return bool(self._get(self.cfg, PCI_COMMAND, 2) & PciCommand.MEMORY)

    def msix_entry(self, vector: int) -> tuple[int, int, bool]:
        """``(address, data, masked)`` of MSI-X table entry ``vector``."""
        off = vector * PCI_MSIX_ENTRY_SIZE
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self.msix_table, off)
        return lo | (hi << 32), data, bool(ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def writes(self, field: CommonCfg) -> list[int]:
        """Values written to common-configuration ``field``, in order."""
        off = QEMU_COMMON_OFFSET + field
        return [a.value for a in self.log if a.write and a.space == f"bar{QEMU_MODERN_BAR}" and a.offset == off]

    # -- PciFunctionAccess ----------------------------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """Read configuration space (an unaligned or out-of-range access reads all-ones)."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= _CONFIG_SIZE - size:
            value = (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        else:
            value = self._get(self.cfg, offset, size)
        self.log.append(Access("config", offset, size, value, False))
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write configuration space through the write mask (read-only bits keep their value)."""
        self.log.append(Access("config", offset, size, value, True))
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= _CONFIG_SIZE - size:
            return
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            m = self.wmask[offset + i]
            self.cfg[offset + i] = (self.cfg[offset + i] & ~m) | (b & m)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read a BAR: common config, ISR (read clears), device config, MSI-X table; all-ones when decoding is
        off or nothing is there."""
        ones = (1 << (8 * size)) - 1
        value = ones if not self.memory_enabled else self._bar_read(bar, offset, size, ones)
        self.log.append(Access(f"bar{bar}", offset, size, value, False))
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write a BAR (dropped when decoding is off)."""
        value &= (1 << (8 * size)) - 1
        self.log.append(Access(f"bar{bar}", offset, size, value, True))
        if self.memory_enabled:
            self._bar_write(bar, offset, size, value)

    # -- BAR contents ---------------------------------------------------------------------------------------------

    def _bar_read(self, bar: int, offset: int, size: int, ones: int) -> int:
        if bar == QEMU_MSIX_BAR:
            if offset + size <= len(self.msix_table):
                return self._get(self.msix_table, offset, size)
            return 0 if offset >= self.msix_pba_offset else ones
        if bar != QEMU_MODERN_BAR:
            return ones
        region, off = divmod(offset, QEMU_REGION_SIZE)
        if region == QEMU_COMMON_OFFSET // QEMU_REGION_SIZE:
            return self._common_read(off, size)
        if region == QEMU_ISR_OFFSET // QEMU_REGION_SIZE:
            isr, self.isr = self.isr, 0
            return isr
        if region == QEMU_DEVICE_OFFSET // QEMU_REGION_SIZE and off + size <= len(self.device_config):
            return self._get(self.device_config, off, size)
        return 0

    def _bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar == QEMU_MSIX_BAR:
            if offset + size <= len(self.msix_table):
                self._set(self.msix_table, offset, size, value)
            return
        if bar != QEMU_MODERN_BAR:
            return
        region, off = divmod(offset, QEMU_REGION_SIZE)
        if region == QEMU_COMMON_OFFSET // QEMU_REGION_SIZE:
            self._common_write(off, size, value)
        elif region == QEMU_NOTIFY_OFFSET // QEMU_REGION_SIZE:
            self.notifications.append(value)
        elif region == QEMU_DEVICE_OFFSET // QEMU_REGION_SIZE and off + size <= len(self.device_config):
            self._set(self.device_config, off, size, value)

    # -- common configuration (virtio 1.4 §4.1.4.3) ---------------------------------------------------------------

    def _queue(self) -> FakeQueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _vector(self, v: int) -> int:
        """§4.1.5.1.2: a vector the function cannot map reads back NO_VECTOR."""
        return v if v < self.nvectors and not self.refuse_vectors else VIRTIO_MSI_NO_VECTOR

    def _common_read(self, off: int, size: int) -> int:
        if off not in COMMON_CFG_WIDTH or COMMON_CFG_WIDTH[off] != size:
            return 0
        f = CommonCfg(off)
        q = self._queue()
        simple = {
            CommonCfg.DEVICE_FEATURE_SELECT: self.device_feature_select,
            CommonCfg.DEVICE_FEATURE: (self.features >> (32 * self.device_feature_select)) & 0xFFFFFFFF
            if self.device_feature_select < 2 else 0,
            CommonCfg.DRIVER_FEATURE_SELECT: self.driver_feature_select,
            CommonCfg.DRIVER_FEATURE: (self.driver_features >> (32 * self.driver_feature_select)) & 0xFFFFFFFF
            if self.driver_feature_select < 2 else 0,
            CommonCfg.CONFIG_MSIX_VECTOR: self.config_vector,
            CommonCfg.NUM_QUEUES: len(self.queues),
            CommonCfg.DEVICE_STATUS: self.status,
            CommonCfg.CONFIG_GENERATION: self.generation,
            CommonCfg.QUEUE_SELECT: self.queue_select,
        }
        if f == CommonCfg.DEVICE_STATUS and self._stale_reads:
            self._stale_reads -= 1  # the reset is still ongoing
            return self._stale_status
        if f in simple:
            return simple[f]
        if q is None:
            return VIRTIO_MSI_NO_VECTOR if f == CommonCfg.QUEUE_MSIX_VECTOR else 0
        per_queue = {
            CommonCfg.QUEUE_SIZE: q.size,
            CommonCfg.QUEUE_MSIX_VECTOR: q.msix_vector,
            CommonCfg.QUEUE_ENABLE: q.enable,
            CommonCfg.QUEUE_NOTIFY_OFF: self.queue_select,
            CommonCfg.QUEUE_DESC_LO: q.desc & 0xFFFFFFFF,
            CommonCfg.QUEUE_DESC_HI: q.desc >> 32,
            CommonCfg.QUEUE_DRIVER_LO: q.driver & 0xFFFFFFFF,
            CommonCfg.QUEUE_DRIVER_HI: q.driver >> 32,
            CommonCfg.QUEUE_DEVICE_LO: q.device & 0xFFFFFFFF,
            CommonCfg.QUEUE_DEVICE_HI: q.device >> 32,
        }
        if f == CommonCfg.QUEUE_RESET:
            return self._queue_reset_read(q)
        return per_queue.get(f, 0)

    def _ring_reset_negotiated(self) -> bool:
        return bool(self.features & self.driver_features & bit(Feature.RING_RESET))

    def _queue_reset_read(self, q: FakeQueue) -> int:
        """§4.1.4.3.2: 1 while the queue reset is ongoing; the read that completes it presents 0 (and the queue
        is back to its reset values, queue_enable 0)."""
        if not q.resetting:
            return 0
        if q.reset_reads_left < 0:
            return 1  # stuck: never completes
        if q.reset_reads_left:
            q.reset_reads_left -= 1
            return 1
        q.reset()
        return 0

    def _common_write(self, off: int, size: int, value: int) -> None:
        if off not in COMMON_CFG_WIDTH or COMMON_CFG_WIDTH[off] != size:
            return
        f = CommonCfg(off)
        if f == CommonCfg.DEVICE_FEATURE_SELECT:
            self.device_feature_select = value
        elif f == CommonCfg.DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value
        elif f == CommonCfg.DRIVER_FEATURE and self.driver_feature_select < 2:
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif f == CommonCfg.CONFIG_MSIX_VECTOR:
            self.config_vector = self._vector(value)
        elif f == CommonCfg.DEVICE_STATUS:
            self._write_status(value)
        elif f == CommonCfg.QUEUE_SELECT:
            self.queue_select = value
        elif (q := self._queue()) is not None:
            self._queue_write(q, f, value)

    def _queue_write(self, q: FakeQueue, f: CommonCfg, value: int) -> None:
        if f == CommonCfg.QUEUE_RESET:
            if value == 1 and self._ring_reset_negotiated():
                self.queue_resets.append(self.queue_select)
                q.resetting = True
                q.reset_reads_left = self.queue_reset_reads if self.queue_reset_reads >= 0 else -1
                if q.reset_reads_left == 0:
                    q.reset()  # completes at once
            return
        if f == CommonCfg.QUEUE_SIZE:
            q.size = value
        elif f == CommonCfg.QUEUE_MSIX_VECTOR:
            q.msix_vector = self._vector(value)
        elif f == CommonCfg.QUEUE_ENABLE:
            q.enable = value
        for lo, name in ((CommonCfg.QUEUE_DESC_LO, "desc"), (CommonCfg.QUEUE_DRIVER_LO, "driver"),
                         (CommonCfg.QUEUE_DEVICE_LO, "device")):
            old = getattr(q, name)
            if f == lo:
                setattr(q, name, (old & ~0xFFFFFFFF) | value)
            elif f == lo + 4:
                setattr(q, name, (old & 0xFFFFFFFF) | (value << 32))

    def _write_status(self, value: int) -> None:
        self.status_writes.append(value)
        self.status_log.append((self.status, value))
        if value == 0:
            old = self.status
            self.reset()
            if self.reset_reads and old:
                self._stale_status, self._stale_reads = old, self.reset_reads
            return
        if value & Status.FEATURES_OK and not self.status & Status.FEATURES_OK and (
                self.refuse_features_ok or self.driver_features & ~self.features):
            value &= ~Status.FEATURES_OK  # §3.1.1 step 6: the device does not accept the subset
        self.status = self.on_status(self.status, value) if self.on_status is not None else value

    def reset(self) -> None:
        """Device reset (virtio 1.4 §2.4, §4.1.4.3.2): status 0, queues disabled, vectors unmapped, selectors
        and driver features cleared."""
        self.status = 0
        self.isr = 0
        self.driver_features = 0
        self.device_feature_select = self.driver_feature_select = self.queue_select = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        for q in self.queues:
            q.reset()


@dataclass
class FakePlatform:
    """A :class:`~pyvirtio.guest.transport.Platform` with a virtual clock and MSI routing; no machine.

    Waiting runs :attr:`scheduler` events (tests schedule device reactions there) and otherwise lets virtual
    time jump to the deadline: a test never sleeps.
    """

    scheduler: Scheduler = field(default_factory=Scheduler)
    msi_handlers: dict[int, Callable[[], None]] = field(default_factory=dict)
    intx_handlers: dict[str, Callable[[], None]] = field(default_factory=dict)
    _next_data: int = 0x20

    @property
    def now(self) -> int:
        """Virtual time in ns."""
        return self.scheduler.now

    def run_until(self, predicate: Callable[[], bool], timeout: int = 100_000_000) -> bool:
        """Run scheduled events until ``predicate()`` holds (True) or ``timeout`` ns pass (False)."""
        return self.scheduler.run_until(predicate, timeout)

    def alloc_msi(self, handler: Callable[[], None]) -> tuple[int, int]:
        """A fresh (address, data) pair routed to ``handler``."""
        data = self._next_data
        self._next_data += 1
        self.msi_handlers[data] = handler
        return MSI_ADDRESS_BASE, data

    def free_msi(self, data: int) -> None:
        """Unroute MSI ``data``."""
        self.msi_handlers.pop(data, None)

    def set_intx_handler(self, src: str, handler: Callable[[], None] | None) -> None:
        """Route (or, with None, unroute) the INTx of ``src``."""
        if handler is None:
            self.intx_handlers.pop(src, None)
        else:
            self.intx_handlers[src] = handler

    def signal(self, fn: FakeFunction, vector: int) -> bool:
        """Deliver MSI-X ``vector`` of ``fn`` as the device would (nothing if masked or unrouted); True if a
        handler ran."""
        addr, data, masked = fn.msix_entry(vector)
        handler = self.msi_handlers.get(data) if addr == MSI_ADDRESS_BASE and not masked else None
        if handler is None:
            return False
        handler()
        return True

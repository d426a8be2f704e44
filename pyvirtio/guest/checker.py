"""A driver-side conformance checker: watch every access a driver makes to a virtio-pci function and record each
one that breaks a driver statement of virtio 1.4, by its inventory id (``pyvirtio/spec/normative.toml``).

:class:`DriverChecker` wraps any :class:`~pyvirtio.guest.transport.PciFunctionAccess` — a machine's function or
a :class:`~pyvirtio.guest.fake.FakeFunction` — and is one itself: hand it to a driver instead of the function
(``VirtioDriver(platform, DriverChecker(fn), alloc)``) and run any flow. Every access goes through unchanged; the
checker only observes (it learns the offer, the queue layout and the notify offsets from what the driver reads)
and keeps :attr:`DriverChecker.violations`. It never raises for a violation, so a flow runs to its end and every
breach is listed. Which statements it watches is :data:`CHECKED`.

What it cannot see from register accesses alone (ring contents, the order of memory writes) is checked by the
driver's own tests; with ``memory=`` it also watches the available rings while the device is suspended.

Not used by the model itself; it imports nothing from :mod:`pyvirtio.host`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyvirtio.guest.fake import Access
from pyvirtio.guest.transport import MsixCapability, PciFunctionAccess, VirtioPciCapability, walk_capabilities
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_CAP_LEN,
    VIRTQ_RING_IDX,
    CommonCfg,
    Feature,
    Status,
    VirtioPciCap,
    bit,
)

__all__ = ["CHECKED", "SPEC_TRANSPORT_FEATURES", "DriverChecker", "Violation"]

#: The transport feature bits virtio 1.4 describes for a modern PCI driver (§6): a driver accepting any other bit
#: outside the device-type range accepts a bit "not described in this specification" (§2.2.1).
SPEC_TRANSPORT_FEATURES = sum(bit(f) for f in Feature if f >= Feature.INDIRECT_DESC)
#: Fields the driver never writes (§4.1.4.3.2).
_READ_ONLY = frozenset({CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
                        CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_NOTIF_CONFIG_DATA})
#: The queue fields a driver configures before ``queue_enable`` (§4.1.4.3.2): the three areas, both halves.
_QUEUE_AREAS = frozenset({CommonCfg.QUEUE_DESC_LO, CommonCfg.QUEUE_DESC_HI, CommonCfg.QUEUE_DRIVER_LO,
                          CommonCfg.QUEUE_DRIVER_HI, CommonCfg.QUEUE_DEVICE_LO, CommonCfg.QUEUE_DEVICE_HI})
_QUEUE_FIELDS = _QUEUE_AREAS | {CommonCfg.QUEUE_SIZE, CommonCfg.QUEUE_MSIX_VECTOR, CommonCfg.QUEUE_ENABLE}
_VECTOR_FIELDS = frozenset({CommonCfg.CONFIG_MSIX_VECTOR, CommonCfg.QUEUE_MSIX_VECTOR})
#: The initialization bits in the order §3.1.1 sets them, each with the bits that must already be set.
_INIT_PREREQ: Mapping[int, int] = {
    Status.ACKNOWLEDGE: 0,
    Status.DRIVER: Status.ACKNOWLEDGE,
    Status.FEATURES_OK: Status.ACKNOWLEDGE | Status.DRIVER,
    Status.DRIVER_OK: Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK,
}

#: Every statement id the checker watches.
CHECKED: tuple[str, ...] = (
    "drv:status#1", "drv:status#2", "drv:status#3",
    "drv:features#1", "drv:features#2", "drv:features#3",
    "drv:reset#1", "drv:config-space#2",
    "drv:vq-reset#1", "drv:vq-reenable#1",
    "drv:init#1", "drv:init#2", "drv:init#3", "drv:init#5", "drv:init#6",
    "drv:suspend#1", "drv:suspend#2", "drv:suspend#3", "drv:suspend#4", "drv:suspend#5", "drv:suspend#6",
    "drv:reserved-features#1", "drv:reserved-features#7",
    "drv:pci/layout#1", "drv:pci/caps#7",
    "drv:pci/common-cfg#1", "drv:pci/common-cfg#3", "drv:pci/common-cfg#4", "drv:pci/common-cfg#5",
    "drv:pci/common-cfg#6", "drv:pci/common-cfg#7",
    "drv:pci/isr#1", "drv:pci/msix#2", "drv:pci/msix#3",
    "drv:pci/avail-notify#1", "drv:pci/avail-notify#3",
)


@dataclass(frozen=True)
class Violation:
    """One breach: the statement id, what happened, and the index of the access in :attr:`DriverChecker.log`."""

    statement: str
    message: str
    access: int

    def __str__(self) -> str:
        return f"[{self.statement}] access {self.access}: {self.message}"


@dataclass
class _Queue:
    """What the checker knows of one queue since the last (device or queue) reset."""

    written: set[CommonCfg] = field(default_factory=set)
    driver_addr: int = 0
    enabled: bool = False
    reset_pending: bool = False  # queue_reset = 1 written, not read back 0 yet
    was_reset: bool = False  # reset by a queue reset, not re-enabled yet
    notify_off: int | None = None


@dataclass
class _Init:
    """The driver's progress since the last device reset (everything a reset forgets)."""

    written: int = 0  # status the driver last wrote
    offered: dict[int, int] = field(default_factory=dict)  # feature-select -> offered half, as read
    accepted: dict[int, int] = field(default_factory=dict)  # driver-feature-select -> written half
    features_ok_written: bool = False
    features_ok_seen: bool = False  # a status read showed FEATURES_OK after it was written
    driver_ok_written: bool = False
    failed: bool = False
    suspended: bool = False  # SUSPEND written, resume not confirmed
    suspend_seen: bool = False  # a read showed SUSPEND=1, DRIVER_OK=0
    resuming: bool = False  # DRIVER_OK written to resume, not confirmed
    avail_at_suspend: dict[int, int] = field(default_factory=dict)
    queues: dict[int, _Queue] = field(default_factory=dict)

    def offer(self) -> int:
        return sum(v << (32 * s) for s, v in self.offered.items() if s < 2)

    def acceptance(self) -> int:
        return sum(v << (32 * s) for s, v in self.accepted.items() if s < 2)


class DriverChecker:
    """A :class:`PciFunctionAccess` that forwards to ``fn`` and records driver-side violations.

    ``device_bits`` are the device-type feature bits the driver may know (virtio 1.4 §5: e.g. the GPU's 0..5);
    ``extensions`` bits of a deliberate non-spec extension the experiment enables (not reported);
    ``feature_requires`` the device type's dependencies (bit -> required bits); ``optional_config`` maps a
    device-configuration offset to the feature bit that defines the field there (§2.5.1); ``memory`` lets the
    checker watch the available rings while the device is suspended.
    """

    def __init__(self, fn: PciFunctionAccess, *, device_bits: int = 0, extensions: int = 0,
                 feature_requires: Mapping[int, int] | None = None, optional_config: Mapping[int, int] | None = None,
                 memory: GuestMemory | None = None) -> None:
        self.fn = fn
        self.known = SPEC_TRANSPORT_FEATURES | device_bits | extensions
        self.requires = dict(feature_requires or {})
        self.optional_config = dict(optional_config or {})
        self.memory = memory
        #: every access, in order
        self.log: list[Access] = []
        #: every breach, in order
        self.violations: list[Violation] = []
        self._layout(fn)
        self.init = _Init()
        self.ever_reset = False
        self.reset_pending = False
        self.last_read: int | None = None
        self.queue_select = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.msix_enabled = False
        self._readback: tuple[CommonCfg, int] | None = None  # vector written, awaiting its read-back

    # -- what the function looks like -------------------------------------------------------------------------

    def _layout(self, fn: PciFunctionAccess) -> None:
        caps = walk_capabilities(fn)
        self.windows: dict[int, tuple[int, int, int]] = {}  # cfg_type -> (bar, offset, length), first usable
        self.notify_mult = 0
        self.cap_ranges: list[tuple[int, int, int]] = []  # (pos, end, cfg_type) of every virtio capability
        self.msix_cap = 0
        self.msix_size = 0
        self.msix_bar = -1
        self.msix_table = 0
        for cap in caps:
            if isinstance(cap, VirtioPciCapability):
                cap_len = (fn.config_read(cap.pos, 4) >> (8 * VIRTIO_PCI_CAP_CAP_LEN)) & 0xFF
                self.cap_ranges.append((cap.pos, cap.pos + max(cap_len, 16), cap.cfg_type))
                if cap.bar <= 5 and cap.cfg_type not in self.windows:
                    self.windows[cap.cfg_type] = (cap.bar, cap.offset, cap.length)
                    if cap.cfg_type == VirtioPciCap.NOTIFY_CFG:
                        self.notify_mult = cap.notify_off_multiplier or 0
            elif isinstance(cap, MsixCapability) and not self.msix_cap:
                self.msix_cap, self.msix_size = cap.pos, cap.table_size
                self.msix_bar, self.msix_table = cap.table_bar, cap.table_offset

    def _region(self, bar: int, offset: int) -> tuple[int, int] | None:
        """``(cfg_type, offset inside the structure)`` of a BAR access, or None."""
        for cfg_type, (b, off, length) in self.windows.items():
            if b == bar and off <= offset < off + length:
                return cfg_type, offset - off
        return None

    # -- recording --------------------------------------------------------------------------------------------

    def _flag(self, statement: str, message: str) -> None:
        self.violations.append(Violation(statement, message, len(self.log) - 1))

    def ids(self) -> set[str]:
        """The statement ids violated so far."""
        return {v.statement for v in self.violations}

    # -- PciFunctionAccess ------------------------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """Forward a configuration-space read."""
        value = self.fn.config_read(offset, size)
        self.log.append(Access("config", offset, size, value, False))
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Forward a configuration-space write; a write into a virtio capability (other than PCI_CFG) is a
        violation (§4.1.4.1)."""
        self.log.append(Access("config", offset, size, value, True))
        for pos, end, cfg_type in self.cap_ranges:
            if pos <= offset < end and cfg_type != VirtioPciCap.PCI_CFG:
                self._flag("drv:pci/caps#7", f"config write at {offset:#x} inside the virtio capability at {pos:#x}")
        if self.msix_cap and offset == self.msix_cap + PCI_MSIX_FLAGS and size == 2:
            self.msix_enabled = bool(value & PCI_MSIX_FLAGS_ENABLE)
        self.fn.config_write(offset, size, value)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Forward a BAR read and watch it."""
        value = self.fn.bar_read(bar, offset, size)
        self.log.append(Access(f"bar{bar}", offset, size, value, False))
        self._observe(bar, offset, size, value, write=False)
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Watch a BAR write, then forward it."""
        self.log.append(Access(f"bar{bar}", offset, size, value, True))
        self._observe(bar, offset, size, value, write=True)
        self.fn.bar_write(bar, offset, size, value)

    # -- the rules --------------------------------------------------------------------------------------------

    def _observe(self, bar: int, offset: int, size: int, value: int, *, write: bool) -> None:
        self._watch_avail()
        if bar == self.msix_bar and self.msix_table <= offset < self.msix_table + 0x8000:
            entry = (offset - self.msix_table) // PCI_MSIX_ENTRY_SIZE
            if write and entry >= self.msix_size and offset - self.msix_table < 0x800 * PCI_MSIX_ENTRY_SIZE:
                self._flag("drv:pci/msix#2", f"MSI-X table entry {entry} written, the table has {self.msix_size}")
            return
        where = self._region(bar, offset)
        if where is None:
            return
        cfg_type, off = where
        if cfg_type == VirtioPciCap.COMMON_CFG:
            self._common(off, size, value, write)
        elif cfg_type == VirtioPciCap.NOTIFY_CFG and write:
            self._notify(off, size, value)
        elif cfg_type == VirtioPciCap.ISR_CFG and not write and self.msix_enabled:
            self._flag("drv:pci/isr#1", "ISR read while MSI-X is enabled")
        elif cfg_type == VirtioPciCap.DEVICE_CFG:
            self._device_config(off, size, write)

    def _common(self, off: int, size: int, value: int, write: bool) -> None:
        if off not in COMMON_CFG_WIDTH or COMMON_CFG_WIDTH[off] != size:
            self._flag("drv:pci/layout#1", f"common config access of {size} bytes at {off:#x}")
            return
        f = CommonCfg(off)
        if self._readback is not None:
            want, q = self._readback
            self._readback = None
            if write or f != want or (f == CommonCfg.QUEUE_MSIX_VECTOR and q != self.queue_select):
                self._flag("drv:pci/msix#3", f"{want.name} written and not read back to confirm it")
        if write:
            self._common_write(f, value)
        else:
            self._common_read(f, value)

    def _queue(self, index: int | None = None) -> _Queue:
        return self.init.queues.setdefault(self.queue_select if index is None else index, _Queue())

    def _common_write(self, f: CommonCfg, value: int) -> None:
        init = self.init
        if f in _READ_ONLY:
            self._flag("drv:pci/common-cfg#1", f"driver wrote {f.name}")
            return
        if f == CommonCfg.DEVICE_STATUS:
            self._status_write(value)
            return
        if self.reset_pending:
            self._flag("drv:pci/common-cfg#5", f"{f.name} written before the reset read back 0")
        if init.failed and f != CommonCfg.QUEUE_SELECT:
            self._flag("drv:init#5", f"{f.name} written after FAILED, before a reset")
        if f == CommonCfg.DEVICE_FEATURE_SELECT:
            self.device_feature_select = value
        elif f == CommonCfg.DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value
        elif f == CommonCfg.DRIVER_FEATURE:
            self._features_write(value)
        elif f == CommonCfg.QUEUE_SELECT:
            self.queue_select = value
        elif f in _VECTOR_FIELDS:
            if value != VIRTIO_MSI_NO_VECTOR and value >= self.msix_size:
                self._flag("drv:pci/msix#2", f"vector {value} routed, the MSI-X table has {self.msix_size}")
            if value != VIRTIO_MSI_NO_VECTOR:
                self._readback = (f, self.queue_select)
            if f == CommonCfg.QUEUE_MSIX_VECTOR:
                self._queue_field(f, value)
        elif f == CommonCfg.QUEUE_RESET:
            self._queue_reset(value)
        elif f in _QUEUE_FIELDS:
            self._queue_field(f, value)

    def _features_write(self, value: int) -> None:
        init = self.init
        sel = self.driver_feature_select
        if init.features_ok_written:
            self._flag("drv:init#3", "driver features written after FEATURES_OK")
        if sel not in init.offered:
            self._flag("drv:features#2", f"driver features (select {sel}) written without reading the offer")
        if sel >= 2:
            return
        init.accepted[sel] = value
        half = value << (32 * sel)
        offer = init.offered.get(sel, 0) << (32 * sel)
        if half & ~offer:
            self._flag("drv:features#1", f"accepted bits {half & ~offer:#x} the device did not offer")
        if half & ~self.known:
            self._flag("drv:features#3", f"accepted bits {half & ~self.known:#x} unknown to the spec or device type")
        if half & bit(Feature.SR_IOV):
            self._flag("drv:reserved-features#7", "VIRTIO_F_SR_IOV accepted (no SR-IOV capability is driven)")

    def _queue_field(self, f: CommonCfg, value: int) -> None:
        q = self._queue()
        if q.reset_pending:
            self._flag("drv:pci/common-cfg#7", f"{f.name} of queue {self.queue_select} written before queue_reset "
                                              "read back 0")
            self._flag("drv:vq-reset#1", f"queue {self.queue_select} reconfigured before its reset was verified")
        if f == CommonCfg.QUEUE_SIZE and (value <= 0 or value & (value - 1)):
            self._flag("drv:pci/common-cfg#3", f"queue_size {value} is not a power of 2")
        if f == CommonCfg.QUEUE_ENABLE:
            if value != 1:
                self._flag("drv:pci/common-cfg#6", f"queue_enable written with {value}")
                return
            missing = _QUEUE_AREAS - q.written
            if missing:
                rule = "drv:vq-reenable#1" if q.was_reset else "drv:pci/common-cfg#4"
                self._flag(rule, f"queue {self.queue_select} enabled without {sorted(m.name for m in missing)}")
            if not self.init.features_ok_seen:
                self._flag("drv:init#1", f"queue {self.queue_select} enabled before FEATURES_OK was confirmed")
            q.enabled, q.was_reset = True, False
            return
        q.written.add(f)
        if f == CommonCfg.QUEUE_DRIVER_LO:
            q.driver_addr = (q.driver_addr & ~0xFFFFFFFF) | value
        elif f == CommonCfg.QUEUE_DRIVER_HI:
            q.driver_addr = (q.driver_addr & 0xFFFFFFFF) | (value << 32)

    def _queue_reset(self, value: int) -> None:
        if value != 1:
            return
        if not self.init.acceptance() & bit(Feature.RING_RESET):
            self._flag("drv:vq-reset#1", "queue_reset written without VIRTIO_F_RING_RESET")
        q = self._queue()
        notify_off = q.notify_off
        q = self.init.queues[self.queue_select] = _Queue(reset_pending=True, was_reset=True, notify_off=notify_off)

    def _status_write(self, value: int) -> None:
        init = self.init
        if value == 0:
            notify_offs = {i: q.notify_off for i, q in init.queues.items()}
            self.init = _Init(queues={i: _Queue(notify_off=o) for i, o in notify_offs.items()})
            self.reset_pending = True
            self.last_read = None
            return
        known = self.last_read if self.last_read is not None else init.written
        self.last_read = None
        if self.reset_pending:
            self._flag("drv:pci/common-cfg#5", f"status {value:#x} written before the reset read back 0")
            self._flag("drv:reset#1", "re-initialised before the reset was seen complete")
        if not self.ever_reset:
            self._flag("drv:init#1", "initialization without resetting the device first")
        if init.failed:
            self._flag("drv:status#3", f"status {value:#x} written after FAILED without a reset")
        if init.suspended and not init.suspend_seen:
            self._flag("drv:suspend#2", f"status {value:#x} written before SUSPEND=1, DRIVER_OK=0 was read back")
        cleared = known & ~value & ~Status.DEVICE_NEEDS_RESET
        if cleared:
            self._flag("drv:status#2", f"status write {value:#x} clears bits {cleared:#x} (was {known:#x})")
        new = value & ~known
        resuming = bool(known & Status.SUSPEND and new & Status.DRIVER_OK)
        for b, need in _INIT_PREREQ.items():
            if new & b and not resuming and value & need != need:
                self._flag("drv:status#1", f"{Status(b).name} set before {Status(need & ~value).name}")
                self._flag("drv:init#1", f"{Status(b).name} out of the initialization order")
        if new & Status.FEATURES_OK:
            self._features_ok(value)
        if new & Status.DRIVER_OK and not resuming and not init.features_ok_seen:
            self._flag("drv:init#1", "DRIVER_OK set without re-reading FEATURES_OK")
        if new & Status.DRIVER_OK and not resuming:
            init.driver_ok_written = True
        if new & Status.SUSPEND:
            if not known & Status.DRIVER_OK or not init.acceptance() & bit(Feature.SUSPEND):
                self._flag("drv:suspend#1", "SUSPEND set without DRIVER_OK or VIRTIO_F_SUSPEND")
            init.suspended, init.suspend_seen, init.resuming = True, False, False
            init.avail_at_suspend = self._avail_indexes()
        if resuming:
            init.resuming = True
        if value & Status.FAILED:
            init.failed = True
        init.written = value

    def _features_ok(self, value: int) -> None:
        init = self.init
        init.features_ok_written = True
        accepted, offer = init.acceptance(), init.offer()
        if not {0, 1} <= init.offered.keys():
            self._flag("drv:features#2", "FEATURES_OK set without reading both halves of the offer")
        if offer & bit(Feature.VERSION_1) and not accepted & bit(Feature.VERSION_1):
            self._flag("drv:reserved-features#1", "VERSION_1 offered and not accepted")
        for feat, need in self.requires.items():
            if accepted & bit(feat) and accepted & need != need:
                self._flag("drv:features#1", f"feature {feat} accepted without the features it requires")

    def _common_read(self, f: CommonCfg, value: int) -> None:
        init = self.init
        if f == CommonCfg.DEVICE_FEATURE:
            init.offered[self.device_feature_select] = value
        elif f == CommonCfg.DEVICE_STATUS:
            self.last_read = value
            if self.reset_pending and value == 0:
                self.reset_pending = False
                self.ever_reset = True
            if init.features_ok_written and value & Status.FEATURES_OK:
                init.features_ok_seen = True
            if init.suspended and value & Status.SUSPEND and not value & Status.DRIVER_OK:
                init.suspend_seen = True
            if init.resuming and value & Status.DRIVER_OK and not value & Status.SUSPEND:
                init.suspended = init.resuming = False
        elif f == CommonCfg.QUEUE_RESET and value == 0:
            q = self._queue()
            q.reset_pending = False
        elif f == CommonCfg.QUEUE_NOTIFY_OFF:
            self._queue().notify_off = value

    def _notify(self, off: int, size: int, value: int) -> None:
        init = self.init
        if size != 2:
            self._flag("drv:pci/avail-notify#1", f"notification of {size} bytes (not 16 bits)")
        offs = {i for i, q in init.queues.items() if q.notify_off is not None and q.notify_off * self.notify_mult
                == off}
        if offs and value not in offs:
            self._flag("drv:pci/avail-notify#3", f"notification value {value} at the address of queue {min(offs)}")
        if not init.driver_ok_written:
            self._flag("drv:init#6", f"queue {value} notified before DRIVER_OK")
        if init.suspended and not init.resuming:
            self._flag("drv:suspend#4", f"queue {value} notified while the device is suspended")
        if init.resuming:
            self._flag("drv:suspend#6", f"queue {value} notified before the resume was confirmed")
        if init.failed:
            self._flag("drv:init#5", f"queue {value} notified after FAILED")
        q = init.queues.get(value)
        if q is not None and (q.reset_pending or q.was_reset):
            self._flag("drv:vq-reset#1", f"queue {value} notified while it is reset")

    def _device_config(self, off: int, size: int, write: bool) -> None:
        init = self.init
        if size not in (1, 2, 4) or off % size:
            self._flag("drv:pci/layout#1", f"device config access of {size} bytes at {off:#x}")
        feat = self.optional_config.get(off)
        if feat is not None and not init.offer() & bit(feat):
            self._flag("drv:config-space#2", f"optional config field at {off:#x} accessed, feature {feat} not "
                                             "offered")
        if not write:
            return
        if not init.features_ok_written:
            self._flag("drv:init#2", f"device config written at {off:#x} during feature negotiation")
        if init.suspended:
            self._flag("drv:suspend#5", f"device config written at {off:#x} while the device is suspended")
        if init.failed:
            self._flag("drv:init#5", f"device config written at {off:#x} after FAILED")

    # -- the available rings while suspended ------------------------------------------------------------------

    def _avail_indexes(self) -> dict[int, int]:
        if self.memory is None:
            return {}
        out: dict[int, int] = {}
        for i, q in self.init.queues.items():
            addr = q.driver_addr + VIRTQ_RING_IDX
            if q.enabled and self.memory.contains(addr, 2):
                out[i] = self.memory.read_u16(addr)
        return out

    def _watch_avail(self) -> None:
        init = self.init
        if not init.suspended or self.memory is None:
            return
        for i, idx in self._avail_indexes().items():
            if i in init.avail_at_suspend and idx != init.avail_at_suspend[i]:
                self._flag("drv:suspend#3", f"queue {i} avail idx moved {init.avail_at_suspend[i]} -> {idx} while "
                                            "the device is suspended")
                init.avail_at_suspend[i] = idx

    def finish(self) -> list[Violation]:
        """Checks at the end of a flow (an available ring that moved while suspended since the last access);
        returns :attr:`violations`."""
        self._watch_avail()
        return self.violations

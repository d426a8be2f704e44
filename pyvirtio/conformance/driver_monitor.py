"""The driver-conformance monitor: a PCI function's four accessors, watched for driver-side violations.

:class:`DriverMonitor` stands where a driver expects a PCI function (``config_read``, ``config_write``,
``bar_read``, ``bar_write``: the guest's ``PciFunctionAccess``), forwards every access unchanged to the function
it wraps and decodes it against the virtio-pci layout (virtio 1.4 §4.1.4), which it reads from the function's
capability list once, at construction. It keeps the *driver's* view of the device — the status it last wrote or
read, the features it read and accepted, the queues it set up — and records a :class:`Violation` whenever an
access breaks a driver requirement that can be seen at register level. It never raises and never changes what
the driver or the device sees, so it can be put around any function: pyvirtio's model, a vhost-user frontend.

Contract:

* attach it before the driver's first access (the first thing a conforming driver does is reset the device);
* it reads the wrapped function itself only at construction (the capability list, the MSI-X Message Control
  register and the PCI_CFG window's fields: reads without side effects, though a traced function records them);
  afterwards it keeps a shadow of those registers from the driver's own reads and writes;
* the device may change ``device status`` on its own (reset, DRIVER_OK cleared by SUSPEND, DEVICE_NEEDS_RESET):
  the monitor learns it when the driver reads the status, as the driver does;
* every :class:`Rule` names the statements it checks (ids of ``pyvirtio/spec/normative.toml``) and the clause;
  a :class:`Violation` names the rule and the access (counted from 0) it happened at.

Statements checked (driver side): ``drv:status#1``, ``drv:status#2``, ``drv:status#3`` (§2.1.1);
``drv:features#1``, ``drv:features#2``, ``drv:features#3`` (§2.2.1); ``drv:reset#1`` (§2.4.2);
``drv:config-space#2`` (§2.5.1); ``drv:vq-reset#1`` (§2.6.1.1.2); ``drv:vq-reenable#1`` (§2.6.1.2.2);
``drv:init#1`` .. ``drv:init#6`` (§3.1.1); ``drv:suspend#1``, ``#2``, ``#4``, ``#5``, ``#6`` (§3.4.1);
``drv:reserved-features#1``, ``drv:reserved-features#7`` (§6.1); ``drv:pci/layout#1`` (§4.1.3.1);
``drv:pci/caps#7`` (§4.1.4.1); ``drv:pci/common-cfg#1``, ``#3``, ``#4``, ``#5``, ``#6``, ``#7`` (§4.1.4.3.2);
``drv:pci/isr#1`` (§4.1.4.5.2); ``drv:pci/msix#2``, ``drv:pci/msix#3`` (§4.1.5.1.2.2);
``drv:pci/avail-notify#1``, ``drv:pci/avail-notify#3`` (§4.1.5.2.1).

Not visible at register level (they live in guest memory: rings, descriptors, buffers) and so not checked here:
the split-ring statements, ``drv:suspend#3`` (no new available buffers), ``drv:cleanup#*``,
``drv:status#4``, ``drv:config-space#1/#3/#4``, the device-type statements.

``extension_features`` names feature bits of deliberately non-standard extensions the driver may accept (the
2023 freeze_mode and VIRTIO_GPU_F_FREEZING proposals, modelled by pyvirtio's PM profiles): they are exempt from
the reserved-bit and dependency rules, and only from those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_CAPABILITY_LIST,
    PCI_DEVICE_ID,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_QSIZE,
    PCI_STATUS,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_BAR,
    VIRTIO_PCI_CAP_CAP_LEN,
    VIRTIO_PCI_CAP_CFG_TYPE,
    VIRTIO_PCI_CAP_LENGTH,
    VIRTIO_PCI_CAP_OFFSET,
    VIRTIO_PCI_CFG_DATA,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_NOTIFY_CAP_MULT,
    CommonCfg,
    DeviceId,
    Feature,
    GpuCfg,
    GpuFeature,
    PciCapId,
    PciStatusReg,
    Status,
    VirtioPciCap,
)

__all__ = ["DriverMonitor", "Layout", "PciFunction", "Phase", "Region", "Rule", "RuleInfo", "Violation",
           "read_layout"]


class PciFunction(Protocol):
    """The four accessors of a PCI function (the guest's ``PciFunctionAccess``)."""

    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes of configuration space."""
        ...

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of configuration space."""
        ...

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` bytes of memory BAR ``bar``."""
        ...

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of memory BAR ``bar``."""
        ...


# ------------------------------------------------------------------------------------------------------------------
# The rules
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleInfo:
    """What a rule checks: the statements (inventory ids), the clause, and a one-line description."""

    ids: tuple[str, ...]
    clause: str
    text: str


class Rule(Enum):
    """Every driver-side violation the monitor recognises."""

    STATUS_CLEARED = RuleInfo(("drv:status#2",), "2.1.1", "a non-zero status write cleared a bit the driver had set")
    STATUS_ORDER = RuleInfo(("drv:status#1", "drv:init#1"), "3.1.1",
                            "status bit set out of the initialisation order (reset, ACKNOWLEDGE, DRIVER, "
                            "features, FEATURES_OK, re-read, set-up, DRIVER_OK)")
    REINIT_AFTER_FAILED = RuleInfo(("drv:status#3", "drv:init#5"), "2.1.1",
                                   "initialisation continued after FAILED without a reset")
    NO_FAILED_AFTER_REFUSAL = RuleInfo(("drv:init#4",), "3.1.1",
                                       "FEATURES_OK was refused and the driver did not set FAILED (should)")
    CONTINUED_AFTER_REFUSAL = RuleInfo(("drv:init#5",), "3.1.1",
                                       "initialisation continued after the device refused FEATURES_OK")
    RESET_NOT_AWAITED = RuleInfo(("drv:reset#1", "drv:pci/common-cfg#5"), "4.1.4.3.2",
                                 "re-initialised before device status read back 0 after a reset")
    FEATURES_UNREAD = RuleInfo(("drv:features#2",), "2.2.1",
                               "FEATURES_OK set without the driver ever reading the offered features")
    FEATURE_NOT_OFFERED = RuleInfo(("drv:features#1",), "2.2.1", "accepted a feature the device did not offer")
    FEATURE_DEPENDENCY = RuleInfo(("drv:features#1",), "2.2.1",
                                  "accepted a feature without the feature it depends on")
    FEATURE_RESERVED = RuleInfo(("drv:features#3",), "2.2.1",
                                "accepted a reserved feature bit, or one not defined for the transport or device type")
    VERSION_1_DECLINED = RuleInfo(("drv:reserved-features#1",), "6.1",
                                  "VIRTIO_F_VERSION_1 offered but not accepted")
    SR_IOV_ACCEPTED = RuleInfo(("drv:reserved-features#7",), "6.1",
                               "VIRTIO_F_SR_IOV accepted on a function without an SR-IOV capability")
    FEATURES_AFTER_FEATURES_OK = RuleInfo(("drv:init#3",), "3.1.1", "new feature bits accepted after FEATURES_OK")
    CONFIG_WRITE_DURING_NEGOTIATION = RuleInfo(("drv:init#2",), "3.1.1",
                                               "device configuration written before FEATURES_OK")
    NOTIFY_BEFORE_DRIVER_OK = RuleInfo(("drv:init#6",), "3.1.1", "available-buffer notification before DRIVER_OK")
    QUEUE_NOT_SET_UP = RuleInfo(("drv:init#1",), "3.1.1",
                                "a queue was notified that was not set up (enabled) since the last reset")
    QUEUE_AFTER_DRIVER_OK = RuleInfo(("drv:init#1",), "3.1.1",
                                     "a queue was set up after DRIVER_OK without a queue reset")
    SUSPEND_NOT_ALLOWED = RuleInfo(("drv:suspend#1",), "3.4.1",
                                   "SUSPEND set without DRIVER_OK or without VIRTIO_F_SUSPEND negotiated (should not)")
    SUSPEND_NOT_VERIFIED = RuleInfo(("drv:suspend#2",), "3.4.1",
                                    "went on after setting SUSPEND without reading SUSPEND=1, DRIVER_OK=0")
    NOTIFY_WHILE_SUSPENDED = RuleInfo(("drv:suspend#4",), "3.4.1", "queue notification after setting SUSPEND")
    CONFIG_WRITE_WHILE_SUSPENDED = RuleInfo(("drv:suspend#5",), "3.4.1",
                                            "device configuration written after setting SUSPEND")
    RESUME_NOT_AWAITED = RuleInfo(("drv:suspend#6",), "3.4.1",
                                  "normal operation after resume before reading SUSPEND=0, DRIVER_OK=1")
    READ_ONLY_FIELD_WRITTEN = RuleInfo(("drv:pci/common-cfg#1",), "4.1.4.3.2",
                                       "wrote device_feature, num_queues, config_generation, queue_notify_off or "
                                       "queue_notif_config_data")
    QUEUE_SIZE_NOT_POWER_OF_2 = RuleInfo(("drv:pci/common-cfg#3",), "4.1.4.3.2",
                                         "queue_size written with a value that is not a power of 2")
    QUEUE_ENABLED_UNCONFIGURED = RuleInfo(("drv:pci/common-cfg#4", "drv:vq-reenable#1"), "4.1.4.3.2",
                                          "queue_enable written before the queue's ring addresses")
    QUEUE_CHANGED_WHILE_ENABLED = RuleInfo(("drv:pci/common-cfg#4",), "4.1.4.3.2",
                                           "queue configuration written while the queue is enabled")
    QUEUE_ENABLE_ZERO = RuleInfo(("drv:pci/common-cfg#6",), "4.1.4.3.2", "0 written to queue_enable")
    QUEUE_RESET_NOT_AWAITED = RuleInfo(("drv:pci/common-cfg#7", "drv:vq-reset#1"), "4.1.4.3.2",
                                       "queue used again before queue_reset read back 0")
    ACCESS_WIDTH = RuleInfo(("drv:pci/layout#1",), "4.1.3.1",
                            "configuration access not of the field's width or not aligned")
    CAPABILITY_WRITTEN = RuleInfo(("drv:pci/caps#7",), "4.1.4.1",
                                  "wrote a virtio capability field (only the PCI_CFG window fields are writable)")
    VECTOR_OUT_OF_TABLE = RuleInfo(("drv:pci/msix#2",), "4.1.5.1.2.2",
                                   "an event mapped to a vector beyond the MSI-X Table Size")
    VECTOR_NOT_VERIFIED = RuleInfo(("drv:pci/msix#3",), "4.1.5.1.2.2",
                                   "an MSI-X vector mapping not read back before the queue or device went live")
    ISR_READ_WITH_MSIX = RuleInfo(("drv:pci/isr#1",), "4.1.4.5.2",
                                  "ISR status read while MSI-X is enabled (should not)")
    OPTIONAL_CONFIG_FIELD = RuleInfo(("drv:config-space#2",), "2.5.1",
                                     "an optional device configuration field accessed without its feature offered")
    NOTIFY_WIDTH = RuleInfo(("drv:pci/avail-notify#1",), "4.1.5.2.1", "notification not a 16-bit write")
    NOTIFY_VALUE = RuleInfo(("drv:pci/avail-notify#3",), "4.1.5.2.1",
                            "notification value is not the index of the queue whose address was written")

    @property
    def ids(self) -> tuple[str, ...]:
        """The inventory ids the rule checks."""
        return self.value.ids

    @property
    def clause(self) -> str:
        """The spec clause of the requirement."""
        return self.value.clause

    @property
    def text(self) -> str:
        """What the driver did wrong, in one line."""
        return self.value.text


@dataclass(frozen=True)
class Violation:
    """One broken rule: which, at which access (0-based count of accesses through the monitor), and details."""

    rule: Rule
    access: int
    detail: str

    def __str__(self) -> str:
        return f"#{self.access} §{self.rule.clause} {self.rule.name} ({', '.join(self.rule.ids)}): {self.detail}"


# ------------------------------------------------------------------------------------------------------------------
# The layout, read once from the capability list
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A virtio structure in memory BAR ``bar`` at ``offset``, ``length`` bytes long."""

    bar: int
    offset: int
    length: int

    def relative(self, bar: int, offset: int) -> int | None:
        """``offset`` relative to the region if (``bar``, ``offset``) lies inside it, else None."""
        if bar == self.bar and self.offset <= offset < self.offset + self.length:
            return offset - self.offset
        return None


@dataclass(frozen=True)
class VendorCap:
    """A virtio vendor capability: its position, length and ``cfg_type``."""

    pos: int
    length: int
    cfg_type: int


@dataclass(frozen=True)
class Layout:
    """What the monitor knows of the function: the virtio device id and where each virtio structure is."""

    device_id: int | None
    common: Region | None = None
    notify: Region | None = None
    notify_multiplier: int = 0
    isr: Region | None = None
    device: Region | None = None
    vendor_caps: tuple[VendorCap, ...] = ()
    pci_cfg_cap: int = 0
    msix_cap: int = 0
    msix_table_size: int = 0  # MSI-X Table Size + 1 (read-only); 0 without MSI-X
    sriov: bool = False


#: Transitional PCI device ids (virtio 1.4 §4.1.2.3) of the device types the monitor has tables for.
_TRANSITIONAL_IDS = {0x1005: DeviceId.ENTROPY}
_MODERN_LAST = 0x107F
_CAP_MIN, _CAP_END = 0x40, 0x100
_EXT_CAP_START, _EXT_CAP_END = 0x100, 0x1000
_EXT_CAP_SRIOV = 0x0010
_BAR_LAST = 5


def read_layout(fn: PciFunction) -> Layout:
    """Walk ``fn``'s capability list (and extended list) with side-effect-free reads; first structure of each
    type with a valid BAR wins (virtio 1.4 §4.1.4). A hostile list cannot loop."""
    dev = fn.config_read(PCI_DEVICE_ID, 2)
    device_id: int | None = None
    if VIRTIO_PCI_MODERN_DEVICE_ID_BASE <= dev <= _MODERN_LAST:
        device_id = dev - VIRTIO_PCI_MODERN_DEVICE_ID_BASE
    elif dev in _TRANSITIONAL_IDS:
        device_id = int(_TRANSITIONAL_IDS[dev])
    regions: dict[int, Region] = {}
    caps: list[VendorCap] = []
    mult = pci_cfg = msix = 0
    if fn.config_read(PCI_STATUS, 2) & PciStatusReg.CAP_LIST:
        pos = fn.config_read(PCI_CAPABILITY_LIST, 1) & ~3
        seen: set[int] = set()
        while pos and pos not in seen and _CAP_MIN <= pos < _CAP_END:
            seen.add(pos)
            header = fn.config_read(pos, 4)
            cap_id, nxt = header & 0xFF, (header >> 8) & 0xFF
            if cap_id == PciCapId.VENDOR:
                cfg_type = (header >> (8 * VIRTIO_PCI_CAP_CFG_TYPE)) & 0xFF
                caps.append(VendorCap(pos, fn.config_read(pos + VIRTIO_PCI_CAP_CAP_LEN, 1), cfg_type))
                bar = fn.config_read(pos + VIRTIO_PCI_CAP_BAR, 1)
                if cfg_type == VirtioPciCap.PCI_CFG:
                    pci_cfg = pci_cfg or pos
                elif bar <= _BAR_LAST and cfg_type not in regions:
                    regions[cfg_type] = Region(bar, fn.config_read(pos + VIRTIO_PCI_CAP_OFFSET, 4),
                                               fn.config_read(pos + VIRTIO_PCI_CAP_LENGTH, 4))
                    if cfg_type == VirtioPciCap.NOTIFY_CFG:
                        mult = fn.config_read(pos + VIRTIO_PCI_NOTIFY_CAP_MULT, 4)
            elif cap_id == PciCapId.MSIX:
                msix = msix or pos
            pos = nxt & ~3
    sriov = False
    pos, seen = _EXT_CAP_START, set()
    while _EXT_CAP_START <= pos < _EXT_CAP_END and pos not in seen:
        seen.add(pos)
        header = fn.config_read(pos, 4)
        if header in (0, 0xFFFFFFFF):
            break
        sriov = sriov or header & 0xFFFF == _EXT_CAP_SRIOV
        pos = (header >> 20) & ~3
    table = (fn.config_read(msix + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE) + 1 if msix else 0
    return Layout(device_id, regions.get(VirtioPciCap.COMMON_CFG), regions.get(VirtioPciCap.NOTIFY_CFG), mult,
                  regions.get(VirtioPciCap.ISR_CFG), regions.get(VirtioPciCap.DEVICE_CFG), tuple(caps), pci_cfg,
                  msix, table, sriov)


# ------------------------------------------------------------------------------------------------------------------
# What the spec says about features and device configuration, as tables
# ------------------------------------------------------------------------------------------------------------------

#: Feature bits the spec reserves (virtio 1.4 §2.2, §6): the undefined transport bits, the legacy-only ones
#: (NOTIFY_ON_EMPTY, ANY_LAYOUT: not valid for a modern device) and those reserved for future extensions.
RESERVED_FEATURES = (
    sum(1 << b for b in (24, 25, 26, 27, 30, 31)) | sum(1 << b for b in range(44, 50)) | ~((1 << 128) - 1)
)
#: Device-type feature bits each device type defines (bits 0..23 and 50..127); a type missing here is not checked.
DEVICE_TYPE_FEATURES: Mapping[int, int] = {
    DeviceId.ENTROPY: 0,
    DeviceId.GPU: sum(1 << int(f) for f in GpuFeature),
}
_DEVICE_TYPE_RANGE = ((1 << 24) - 1) | (((1 << 128) - 1) & ~((1 << 50) - 1))
#: (feature, feature it requires) per device type (virtio 1.4 §5.7.3 for the GPU).
FEATURE_DEPENDENCIES: Mapping[int, tuple[tuple[int, int], ...]] = {
    DeviceId.GPU: ((GpuFeature.CONTEXT_INIT, GpuFeature.VIRGL), (GpuFeature.BLOB_ALIGNMENT, GpuFeature.RESOURCE_BLOB)),
}
#: Device configuration fields (offset, width) per device type; a type missing here gets the generic
#: alignment check. 64-bit fields are listed as their two 32-bit halves (§4.1.3.1).
DEVICE_CONFIG_FIELDS: Mapping[int, tuple[tuple[int, int], ...]] = {
    DeviceId.GPU: tuple((int(f), 4) for f in GpuCfg),
    DeviceId.TEST: ((0, 4), (4, 4), (8, 4), (12, 4)),
}
#: Optional device configuration fields: (offset, width, the feature bit that makes the field exist).
OPTIONAL_CONFIG_FIELDS: Mapping[int, tuple[tuple[int, int, int], ...]] = {
    DeviceId.GPU: ((GpuCfg.BLOB_ALIGNMENT, 4, GpuFeature.BLOB_ALIGNMENT),),
}
#: Common configuration fields the driver never writes (§4.1.4.3.2).
READ_ONLY_COMMON = frozenset({CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
                              CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_NOTIF_CONFIG_DATA})
#: Per-queue fields that configure a queue (written before queue_enable, never while enabled).
QUEUE_CONFIG = frozenset({CommonCfg.QUEUE_SIZE, CommonCfg.QUEUE_MSIX_VECTOR, CommonCfg.QUEUE_DESC_LO,
                          CommonCfg.QUEUE_DESC_HI, CommonCfg.QUEUE_DRIVER_LO, CommonCfg.QUEUE_DRIVER_HI,
                          CommonCfg.QUEUE_DEVICE_LO, CommonCfg.QUEUE_DEVICE_HI})
#: The three ring addresses a queue needs before it is enabled, by the fields that write them.
_ADDRESS_OF = {CommonCfg.QUEUE_DESC_LO: "desc", CommonCfg.QUEUE_DESC_HI: "desc", CommonCfg.QUEUE_DRIVER_LO: "driver",
               CommonCfg.QUEUE_DRIVER_HI: "driver", CommonCfg.QUEUE_DEVICE_LO: "device",
               CommonCfg.QUEUE_DEVICE_HI: "device"}
_ADDRESSES = frozenset(_ADDRESS_OF.values())
#: The status bits a driver sets, in initialisation order (§3.1.1), and FAILED / SUSPEND.
_DRIVER_BITS = int(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK | Status.SUSPEND
                   | Status.FAILED)
#: PCI_CFG capability fields the driver may write (§4.1.4.9): bar, offset, length, pci_cfg_data.
_PCI_CFG_WRITABLE = ((VIRTIO_PCI_CAP_BAR, 1), (VIRTIO_PCI_CAP_OFFSET, 4), (VIRTIO_PCI_CAP_LENGTH, 4),
                     (VIRTIO_PCI_CFG_DATA, 4))


# ------------------------------------------------------------------------------------------------------------------
# The driver's view of the device
# ------------------------------------------------------------------------------------------------------------------


class Phase(Enum):
    """Where the driver is in the device's life, as its own accesses show (virtio 1.4 §3.1.1, §3.4).

    ``UNKNOWN``: nothing seen yet. ``RESETTING``: 0 written, not read back. ``RESET``: status read 0.
    ``ACKNOWLEDGE``/``DRIVER``: those bits set. ``FEATURES_SET``: FEATURES_OK written, not re-read.
    ``FEATURES_OK``: re-read and kept. ``REFUSED``: re-read and cleared by the device. ``LIVE``: DRIVER_OK set.
    ``SUSPENDING``: SUSPEND written. ``SUSPENDED``: read SUSPEND=1, DRIVER_OK=0. ``RESUMING``: DRIVER_OK written
    while suspended. ``FAILED``: the driver set FAILED.
    """

    UNKNOWN = "unknown"
    RESETTING = "resetting"
    RESET = "reset"
    ACKNOWLEDGE = "acknowledge"
    DRIVER = "driver"
    FEATURES_SET = "features-set"
    FEATURES_OK = "features-ok"
    REFUSED = "refused"
    LIVE = "live"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    RESUMING = "resuming"
    FAILED = "failed"


#: Phases in which the driver may accept features (after DRIVER, before FEATURES_OK).
_NEGOTIATING = frozenset({Phase.DRIVER})
#: Phases before FEATURES_OK was confirmed, where device configuration must not be written (§3.1.1 step 4).
_BEFORE_FEATURES_OK = frozenset({Phase.UNKNOWN, Phase.RESETTING, Phase.RESET, Phase.ACKNOWLEDGE, Phase.DRIVER})
#: Phases in which queues are set up (§3.1.1 step 7, and after DRIVER_OK only with a queue reset).
_SETUP = frozenset({Phase.FEATURES_OK, Phase.LIVE})
#: Phases after SUSPEND was written and before the resume was confirmed.
_SUSPEND_PHASES = frozenset({Phase.SUSPENDING, Phase.SUSPENDED, Phase.RESUMING})
#: Status bit -> the phase that must have been reached to set it (§3.1.1 order).
_INIT_ORDER: tuple[tuple[int, frozenset[Phase]], ...] = (
    (Status.ACKNOWLEDGE, frozenset({Phase.RESET})),
    (Status.DRIVER, frozenset({Phase.ACKNOWLEDGE})),
    (Status.FEATURES_OK, frozenset({Phase.DRIVER})),
    (Status.DRIVER_OK, frozenset({Phase.FEATURES_OK, Phase.SUSPENDED})),
)
#: The phase a status bit leads to when the driver sets it (FAILED and SUSPEND are handled first).
_PHASE_AFTER = {Status.ACKNOWLEDGE: Phase.ACKNOWLEDGE, Status.DRIVER: Phase.DRIVER,
                Status.FEATURES_OK: Phase.FEATURES_SET, Status.DRIVER_OK: Phase.LIVE}


@dataclass
class _Queue:
    """The driver's view of one queue."""

    configured: set[str] = field(default_factory=set)  # ring addresses written since the last (queue) reset
    enabled: bool = False
    resetting: bool = False  # queue_reset written 1, not yet read back 0
    was_reset: bool = False  # a queue reset completed: re-enable is allowed after DRIVER_OK
    vector_pending: bool = False  # queue_msix_vector written, not read back
    notify_off: int | None = None  # as the driver read it


class DriverMonitor:
    """Wrap ``fn`` (any object with the four accessors) and record driver violations in :attr:`violations`.

    ``name`` labels the function in messages. ``extension_features``: feature bits of deliberately non-standard
    extensions the driver may accept (see the module docstring). Any other attribute is the wrapped
    function's, so the monitor can stand in for it (``fn.name``, ``fn.freeze_mode``, ...).
    """

    def __init__(self, fn: PciFunction, *, name: str = "", extension_features: int = 0) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "name", "function"))
        self.extension_features = extension_features
        self.layout = read_layout(fn)
        #: configuration-space bytes the monitor follows (MSI-X Message Control, the PCI_CFG window fields),
        #: read once here, then kept up to date from the driver's own reads and writes
        self._shadow: dict[int, int] = {}
        lay = self.layout
        watched = [lay.msix_cap + PCI_MSIX_FLAGS, lay.msix_cap + PCI_MSIX_FLAGS + 1] if lay.msix_cap else []
        if lay.pci_cfg_cap:
            watched += range(lay.pci_cfg_cap + VIRTIO_PCI_CAP_BAR, lay.pci_cfg_cap + VIRTIO_PCI_CFG_DATA)
        for off in watched:
            self._shadow[off] = fn.config_read(off, 1)
        self.violations: list[Violation] = []
        self.accesses = 0
        #: every phase the driver has been in, in the order first entered (tests check a flow got where it meant to)
        self.phases_seen: list[Phase] = []
        self._phase = Phase.UNKNOWN
        self.known_status = 0  # the status as the driver last wrote or read it
        self.offered: dict[int, int] = {}  # device_feature select -> value read (kept across resets)
        self.accepted: dict[int, int] = {}  # driver_feature select -> value written since the last reset
        self.negotiated = 0  # the accepted set at FEATURES_OK
        self.live_since_reset = False
        self.num_queues: int | None = None
        self.queues: dict[int, _Queue] = {}
        self.config_vector_pending = False
        self._device_feature_select = 0
        self._driver_feature_select = 0
        self._queue_select = 0

    def __getattr__(self, name: str) -> Any:
        """Attributes the monitor does not have are the wrapped function's."""
        if name == "fn":  # not set yet (during construction): no recursion
            raise AttributeError(name)
        return getattr(self.fn, name)

    @property
    def phase(self) -> Phase:
        """Where the driver is, as its accesses show."""
        return self._phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        self._phase = value
        if value not in self.phases_seen:
            self.phases_seen.append(value)

    # -- results ----------------------------------------------------------------------------------------------

    @property
    def rules(self) -> set[Rule]:
        """The rules broken so far."""
        return {v.rule for v in self.violations}

    def report(self) -> str:
        """Every violation, one per line (empty when the driver conformed)."""
        return "\n".join(f"{self.name}: {v}" for v in self.violations)

    def _flag(self, rule: Rule, detail: str) -> None:
        self.violations.append(Violation(rule, self.accesses, detail))

    # -- the four accessors -------------------------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """Forward a configuration read; a read of the PCI_CFG window's data is judged as the BAR read it is."""
        value = self.fn.config_read(offset, size)
        self._update_shadow(offset, size, value)
        window = self._window(offset)
        if window is not None:
            bar, boff, length = window
            if self._isr_offset(bar, boff) is not None:
                self._isr_read_seen()
            self._bar_read_seen(bar, boff, length, value & ((1 << (8 * length)) - 1))
        self.accesses += 1
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Judge, then forward, a configuration write (capability fields, the PCI_CFG window)."""
        self._config_write_seen(offset, size, value)
        self.fn.config_write(offset, size, value)
        self.accesses += 1

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Forward a BAR read and learn from the value (status, offered features, queue fields)."""
        if self._isr_offset(bar, offset) is not None:
            self._isr_read_seen()
        value = self.fn.bar_read(bar, offset, size)
        self._bar_read_seen(bar, offset, size, value)
        self.accesses += 1
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Judge, then forward, a BAR write (common configuration, device configuration, notifications)."""
        self._bar_write_seen(bar, offset, size, value)
        self.fn.bar_write(bar, offset, size, value)
        self.accesses += 1

    # -- decoding -----------------------------------------------------------------------------------------------

    def _isr_offset(self, bar: int, offset: int) -> int | None:
        return self.layout.isr.relative(bar, offset) if self.layout.isr else None

    def _update_shadow(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i in self._shadow:
                self._shadow[offset + i] = (value >> (8 * i)) & 0xFF

    def _shadowed(self, offset: int, size: int) -> int:
        return sum(self._shadow.get(offset + i, 0) << (8 * i) for i in range(size))

    def _msix_enabled(self) -> bool:
        cap = self.layout.msix_cap
        return bool(cap) and bool(self._shadowed(cap + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE)

    def _window(self, offset: int) -> tuple[int, int, int] | None:
        """(bar, offset, length) of a PCI_CFG window access whose data field is at ``offset``, else None."""
        cap = self.layout.pci_cfg_cap
        if not cap or offset != cap + VIRTIO_PCI_CFG_DATA:
            return None
        length = self._shadowed(cap + VIRTIO_PCI_CAP_LENGTH, 4)
        if length not in (1, 2, 4):
            return None
        return (self._shadowed(cap + VIRTIO_PCI_CAP_BAR, 1), self._shadowed(cap + VIRTIO_PCI_CAP_OFFSET, 4), length)

    def _config_write_seen(self, offset: int, size: int, value: int) -> None:
        for cap in self.layout.vendor_caps:
            if offset + size <= cap.pos or offset >= cap.pos + max(cap.length, 4):
                continue
            rel = offset - cap.pos
            allowed = cap.cfg_type == VirtioPciCap.PCI_CFG and any(
                f <= rel and rel + size <= f + w for f, w in _PCI_CFG_WRITABLE)
            if not allowed:
                # checks: drv:pci/caps#7
                self._flag(Rule.CAPABILITY_WRITTEN, f"config write at {offset:#x} (+{rel}) of capability "
                                                     f"cfg_type {cap.cfg_type} at {cap.pos:#x}")
        self._update_shadow(offset, size, value)
        window = self._window(offset)
        if window is not None and size == 4:
            bar, boff, length = window
            self._bar_write_seen(bar, boff, length, value & ((1 << (8 * length)) - 1))

    def _bar_read_seen(self, bar: int, offset: int, size: int, value: int) -> None:
        lay = self.layout
        rel = lay.common.relative(bar, offset) if lay.common else None
        if rel is not None:
            self._common_read(rel, size, value)
            return
        rel = lay.device.relative(bar, offset) if lay.device else None
        if rel is not None:
            self._device_config_access(rel, size, write=False)

    def _bar_write_seen(self, bar: int, offset: int, size: int, value: int) -> None:
        lay = self.layout
        rel = lay.common.relative(bar, offset) if lay.common else None
        if rel is not None:
            self._common_write(rel, size, value)
            return
        rel = lay.device.relative(bar, offset) if lay.device else None
        if rel is not None:
            self._device_config_access(rel, size, write=True)
            return
        rel = lay.notify.relative(bar, offset) if lay.notify else None
        if rel is not None:
            self._notify(rel, size, value)

    # -- common configuration ---------------------------------------------------------------------------------

    def _field(self, rel: int, size: int, what: str) -> CommonCfg | None:
        """The common-configuration field at ``rel``, after the width check (§4.1.3.1)."""
        try:
            f = CommonCfg(rel)
        except ValueError:
            f = None
        if f is None or COMMON_CFG_WIDTH.get(f) != size:
            # checks: drv:pci/layout#1
            self._flag(Rule.ACCESS_WIDTH, f"common configuration {what} of {size} bytes at offset {rel}"
                                          + (f" ({f.name} is {COMMON_CFG_WIDTH[f]} bytes)" if f is not None else ""))
            return None
        return f

    def _queue(self, index: int | None = None) -> _Queue:
        q = self._queue_select if index is None else index
        return self.queues.setdefault(q, _Queue())

    def _common_read(self, rel: int, size: int, value: int) -> None:
        f = self._field(rel, size, "read")
        if f is None:
            return
        if f is CommonCfg.DEVICE_STATUS:
            self._status_read(value)
        elif f is CommonCfg.DEVICE_FEATURE:
            self.offered[self._device_feature_select] = value
        elif f is CommonCfg.NUM_QUEUES:
            self.num_queues = value
        elif f is CommonCfg.QUEUE_NOTIFY_OFF:
            self._queue().notify_off = value
        elif f is CommonCfg.QUEUE_MSIX_VECTOR:
            self._queue().vector_pending = False
        elif f is CommonCfg.CONFIG_MSIX_VECTOR:
            self.config_vector_pending = False
        elif f is CommonCfg.QUEUE_RESET and value == 0:
            q = self._queue()
            if q.resetting:  # the queue reset completed (§4.1.4.3.2): the queue is back at its default state
                self.queues[self._queue_select] = _Queue(was_reset=True, notify_off=q.notify_off)

    def _common_write(self, rel: int, size: int, value: int) -> None:
        f = self._field(rel, size, "write")
        if f is None:
            return
        if f in READ_ONLY_COMMON:
            # checks: drv:pci/common-cfg#1
            self._flag(Rule.READ_ONLY_FIELD_WRITTEN, f"{f.name} written with {value:#x}")
            return
        if f is CommonCfg.DEVICE_STATUS:
            self._status_write(value)
        elif f is CommonCfg.DEVICE_FEATURE_SELECT:
            self._device_feature_select = value
        elif f is CommonCfg.DRIVER_FEATURE_SELECT:
            self._driver_feature_select = value
        elif f is CommonCfg.DRIVER_FEATURE:
            self._driver_feature_write(value)
        elif f is CommonCfg.QUEUE_SELECT:
            self._queue_select = value
        elif f is CommonCfg.CONFIG_MSIX_VECTOR:
            self.config_vector_pending = self._vector_write("config_msix_vector", value)
        elif f in QUEUE_CONFIG:
            self._queue_config_write(f, value)
        elif f is CommonCfg.QUEUE_ENABLE:
            self._queue_enable_write(value)
        elif f is CommonCfg.QUEUE_RESET and value == 1:
            self._queue().resetting = True

    # -- device status (§2.1, §3.1.1, §3.4) -------------------------------------------------------------------

    def _reset_view(self, phase: Phase) -> None:
        """The device was reset: status 0, no features accepted, no queue (the offer is kept: it is the device's)."""
        self.phase = phase
        self.known_status = 0
        self.accepted.clear()
        self.negotiated = 0
        self.live_since_reset = False
        self.queues = {q: _Queue(notify_off=v.notify_off) for q, v in self.queues.items()}
        self.config_vector_pending = False

    def _status_write(self, value: int) -> None:
        if value == 0:
            self._reset_view(Phase.RESETTING)
            return
        if self.phase is Phase.RESETTING:
            # checks: drv:reset#1, drv:pci/common-cfg#5
            self._flag(Rule.RESET_NOT_AWAITED, f"status {value:#04x} written before status read back 0")
            self.phase = Phase.RESET
        known = self.known_status
        cleared = known & ~value & _DRIVER_BITS
        if cleared:
            # checks: drv:status#2
            self._flag(Rule.STATUS_CLEARED, f"status {value:#04x} written, the driver knew {known:#04x}")
        added = value & ~known & _DRIVER_BITS
        phase = self.phase
        if phase is Phase.FAILED and added & ~Status.FAILED:
            # checks: drv:status#3, drv:init#5
            self._flag(Rule.REINIT_AFTER_FAILED, f"status {value:#04x} written after FAILED, without a reset")
        if phase is Phase.REFUSED:
            if not value & Status.FAILED:
                # checks: drv:init#4
                self._flag(Rule.NO_FAILED_AFTER_REFUSAL, f"status {value:#04x} written after FEATURES_OK was refused")
            if added & ~Status.FAILED:
                # checks: drv:init#5
                self._flag(Rule.CONTINUED_AFTER_REFUSAL, f"status {value:#04x} after FEATURES_OK was refused")
        if phase is Phase.SUSPENDING and not added & Status.FAILED:
            # checks: drv:suspend#2
            self._flag(Rule.SUSPEND_NOT_VERIFIED, f"status {value:#04x} written before SUSPEND was seen to complete")
        if added & Status.FAILED:
            self.phase = Phase.FAILED
            self.known_status = value
            return
        if added & Status.SUSPEND:
            self._suspend_write(value, known)
        elif phase not in (Phase.FAILED, Phase.REFUSED):
            self._init_bits(added, value)
        if added & Status.FEATURES_OK:
            self._features_ok_written()
        self.known_status = value

    def _init_bits(self, added: int, value: int) -> None:
        """Check that each newly set bit follows the bits before it (§3.1.1) and move the phase on."""
        for bit, after in _INIT_ORDER:
            if not added & bit:
                continue
            if self.phase not in after:
                # checks: drv:status#1, drv:init#1
                self._flag(Rule.STATUS_ORDER, f"{Status(bit).name} set in phase {self.phase.value} "
                                              f"(status {value:#04x})")
            if bit == Status.DRIVER_OK and self.phase is Phase.SUSPENDED:
                self.phase = Phase.RESUMING
                continue
            if bit == Status.DRIVER_OK:
                self.live_since_reset = True
                if self.config_vector_pending or any(q.vector_pending for q in self.queues.values()):
                    # checks: drv:pci/msix#3
                    self._flag(Rule.VECTOR_NOT_VERIFIED, "DRIVER_OK set with an MSI-X vector not read back")
            self.phase = _PHASE_AFTER[Status(bit)]

    def _suspend_write(self, value: int, known: int) -> None:
        negotiated = bool(self.negotiated & (1 << Feature.SUSPEND))
        if not known & Status.DRIVER_OK or self.phase is not Phase.LIVE or not negotiated:
            # checks: drv:suspend#1
            self._flag(Rule.SUSPEND_NOT_ALLOWED, f"SUSPEND set (status {value:#04x}, phase {self.phase.value}, "
                                                 f"VIRTIO_F_SUSPEND negotiated: {negotiated})")
        self.phase = Phase.SUSPENDING

    def _status_read(self, value: int) -> None:
        self.known_status = value
        if value == 0:
            if self.phase is not Phase.UNKNOWN:
                self._reset_view(Phase.RESET)  # reset done, or the device was reset under the driver
            else:
                self.phase = Phase.RESET
            return
        if self.phase is Phase.FEATURES_SET:
            self.phase = Phase.FEATURES_OK if value & Status.FEATURES_OK else Phase.REFUSED
        elif self.phase is Phase.SUSPENDING and value & Status.SUSPEND and not value & Status.DRIVER_OK:
            self.phase = Phase.SUSPENDED
        elif self.phase is Phase.RESUMING and value & Status.DRIVER_OK and not value & Status.SUSPEND:
            self.phase = Phase.LIVE

    # -- features (§2.2, §6) --------------------------------------------------------------------------------------

    def _driver_feature_write(self, value: int) -> None:
        sel = self._driver_feature_select
        new = value & ~self.accepted.get(sel, 0)
        if self.phase not in _NEGOTIATING:
            if self.phase in _BEFORE_FEATURES_OK:
                # checks: drv:init#1
                self._flag(Rule.STATUS_ORDER, f"driver_feature[{sel}] written in phase {self.phase.value}, "
                                              "before DRIVER")
            elif new:
                # checks: drv:init#3
                self._flag(Rule.FEATURES_AFTER_FEATURES_OK, f"driver_feature[{sel}] gained {new:#x} in phase "
                                                            f"{self.phase.value}")
        self.accepted[sel] = value

    def _features_ok_written(self) -> None:
        """FEATURES_OK written: the accepted set is final; judge it (§2.2.1, §6.1)."""
        accepted = sum(v << (32 * sel) for sel, v in self.accepted.items())
        self.negotiated = accepted
        if not self.offered:
            # checks: drv:features#2
            self._flag(Rule.FEATURES_UNREAD, "FEATURES_OK set, device_feature never read")
            return
        offered = sum(v << (32 * sel) for sel, v in self.offered.items())
        if accepted & ~offered:
            # checks: drv:features#1
            self._flag(Rule.FEATURE_NOT_OFFERED, f"accepted {accepted & ~offered:#x} beyond the offer {offered:#x}")
        if offered & (1 << Feature.VERSION_1) and not accepted & (1 << Feature.VERSION_1):
            # checks: drv:reserved-features#1
            self._flag(Rule.VERSION_1_DECLINED, f"accepted {accepted:#x}")
        if accepted & (1 << Feature.SR_IOV) and not self.layout.sriov:
            # checks: drv:reserved-features#7
            self._flag(Rule.SR_IOV_ACCEPTED, "no SR-IOV extended capability")
        judged = accepted & ~self.extension_features
        device_id = self.layout.device_id if self.layout.device_id is not None else -1
        bad = judged & RESERVED_FEATURES
        if device_id in DEVICE_TYPE_FEATURES:
            bad |= judged & _DEVICE_TYPE_RANGE & ~DEVICE_TYPE_FEATURES[device_id]
        if bad:
            # checks: drv:features#3
            self._flag(Rule.FEATURE_RESERVED, f"accepted reserved or undefined bits {bad:#x}")
        for feat, needs in FEATURE_DEPENDENCIES.get(device_id, ()):
            if judged & (1 << feat) and not accepted & (1 << needs):
                # checks: drv:features#1
                self._flag(Rule.FEATURE_DEPENDENCY, f"feature bit {int(feat)} accepted without bit {int(needs)}")

    # -- queues (§4.1.4.3, §4.1.5.1.2) ----------------------------------------------------------------------------

    def _vector_write(self, what: str, value: int) -> bool:
        """Judge an MSI-X vector mapping; True when it needs reading back (§4.1.5.1.2.2)."""
        if value == VIRTIO_MSI_NO_VECTOR:
            return False
        size = self.layout.msix_table_size
        if value >= size:
            # checks: drv:pci/msix#2
            self._flag(Rule.VECTOR_OUT_OF_TABLE, f"{what} = {value}, MSI-X Table Size {size}")
        return True

    def _queue_setup_allowed(self, what: str) -> bool:
        q = self._queue()
        if q.resetting:
            # checks: drv:pci/common-cfg#7, drv:vq-reset#1
            self._flag(Rule.QUEUE_RESET_NOT_AWAITED, f"{what} of queue {self._queue_select} before queue_reset "
                                                     "read back 0")
        if self.phase is Phase.REFUSED or self.phase is Phase.FAILED:
            # checks: drv:init#5
            self._flag(Rule.CONTINUED_AFTER_REFUSAL if self.phase is Phase.REFUSED else Rule.REINIT_AFTER_FAILED,
                       f"{what} of queue {self._queue_select} in phase {self.phase.value}")
            return False
        if self.phase is Phase.RESUMING:
            # checks: drv:suspend#6
            self._flag(Rule.RESUME_NOT_AWAITED, f"{what} of queue {self._queue_select} before the resume completed")
            return False
        if self.phase not in _SETUP and self.phase not in _SUSPEND_PHASES:
            # checks: drv:init#1
            self._flag(Rule.STATUS_ORDER, f"{what} of queue {self._queue_select} in phase {self.phase.value}, "
                                          "before FEATURES_OK was confirmed")
        return True

    def _queue_config_write(self, f: CommonCfg, value: int) -> None:
        q = self._queue()
        if q.enabled and not q.resetting:  # (a write during a queue reset is the rule below)
            # checks: drv:pci/common-cfg#4
            self._flag(Rule.QUEUE_CHANGED_WHILE_ENABLED, f"{f.name} of enabled queue {self._queue_select} "
                                                         f"written with {value:#x}")
        self._queue_setup_allowed(f.name)
        if f is CommonCfg.QUEUE_SIZE and (value == 0 or value & (value - 1)):
            # checks: drv:pci/common-cfg#3
            self._flag(Rule.QUEUE_SIZE_NOT_POWER_OF_2, f"queue_size {value} for queue {self._queue_select}")
        if f is CommonCfg.QUEUE_MSIX_VECTOR:
            q.vector_pending = self._vector_write(f"queue_msix_vector of queue {self._queue_select}", value)
        if f in _ADDRESS_OF:
            q.configured.add(_ADDRESS_OF[f])

    def _queue_enable_write(self, value: int) -> None:
        index, q = self._queue_select, self._queue()
        if value == 0:
            # checks: drv:pci/common-cfg#6
            self._flag(Rule.QUEUE_ENABLE_ZERO, f"queue {index}")
            return
        self._queue_setup_allowed("queue_enable")
        missing = _ADDRESSES - q.configured
        if missing:
            # checks: drv:pci/common-cfg#4, drv:vq-reenable#1
            self._flag(Rule.QUEUE_ENABLED_UNCONFIGURED, f"queue {index} enabled without its "
                                                        f"{', '.join(sorted(missing))} address"
                                                        + (" (re-enable after a queue reset)" if q.was_reset else ""))
        if q.vector_pending:
            # checks: drv:pci/msix#3
            self._flag(Rule.VECTOR_NOT_VERIFIED, f"queue {index} enabled, its queue_msix_vector not read back")
        if self.phase is Phase.LIVE and not q.was_reset and not q.resetting:
            # checks: drv:init#1
            self._flag(Rule.QUEUE_AFTER_DRIVER_OK, f"queue {index} enabled after DRIVER_OK")
        q.enabled = True

    # -- device configuration (§2.5, §3.1.1, §4.1.3.1) ----------------------------------------------------------

    def _device_config_access(self, rel: int, size: int, *, write: bool) -> None:
        device_id = self.layout.device_id if self.layout.device_id is not None else -1
        fields = DEVICE_CONFIG_FIELDS.get(device_id)
        if fields is not None:
            ok = any(rel == off and size == width for off, width in fields) or rel >= max(o + w for o, w in fields)
        else:
            ok = True
        if size not in (1, 2, 4) or rel % size or not ok:
            # checks: drv:pci/layout#1
            self._flag(Rule.ACCESS_WIDTH, f"device configuration {'write' if write else 'read'} of {size} bytes "
                                          f"at offset {rel}")
        offered = sum(v << (32 * sel) for sel, v in self.offered.items())
        for off, width, feat in OPTIONAL_CONFIG_FIELDS.get(device_id, ()):
            if rel < off + width and off < rel + size and not offered & (1 << feat):
                # checks: drv:config-space#2
                self._flag(Rule.OPTIONAL_CONFIG_FIELD, f"offset {rel}: needs feature bit {int(feat)} offered")
        if not write:
            return
        if self.phase in _BEFORE_FEATURES_OK:
            # checks: drv:init#2
            self._flag(Rule.CONFIG_WRITE_DURING_NEGOTIATION, f"offset {rel} written in phase {self.phase.value}")
        elif self.phase is Phase.RESUMING:
            # checks: drv:suspend#6
            self._flag(Rule.RESUME_NOT_AWAITED, f"device configuration offset {rel} written")
        elif self.phase in _SUSPEND_PHASES:
            # checks: drv:suspend#5
            self._flag(Rule.CONFIG_WRITE_WHILE_SUSPENDED, f"offset {rel} written in phase {self.phase.value}")

    # -- notifications and ISR (§4.1.4.4, §4.1.4.5, §4.1.5.2) ---------------------------------------------------

    def _notify(self, rel: int, size: int, value: int) -> None:
        if size != 2:
            # checks: drv:pci/avail-notify#1
            self._flag(Rule.NOTIFY_WIDTH, f"{size}-byte notification at notify offset {rel}")
        index = value & 0xFFFF
        expected = self.queues[index].notify_off if index in self.queues else None
        mult = self.layout.notify_multiplier
        at_other = expected is not None and rel != expected * mult
        if at_other or (self.num_queues is not None and index >= self.num_queues):
            # checks: drv:pci/avail-notify#3
            self._flag(Rule.NOTIFY_VALUE, f"value {value} written at notify offset {rel}")
        if not self.live_since_reset:
            # checks: drv:init#6
            self._flag(Rule.NOTIFY_BEFORE_DRIVER_OK, f"queue {index} notified in phase {self.phase.value}")
        elif self.phase is Phase.RESUMING:
            # checks: drv:suspend#6
            self._flag(Rule.RESUME_NOT_AWAITED, f"queue {index} notified before the resume completed")
        elif self.phase in _SUSPEND_PHASES:
            # checks: drv:suspend#4
            self._flag(Rule.NOTIFY_WHILE_SUSPENDED, f"queue {index} notified in phase {self.phase.value}")
        elif not (index in self.queues and self.queues[index].enabled):
            # checks: drv:init#1
            self._flag(Rule.QUEUE_NOT_SET_UP, f"queue {index} notified, not enabled since the last reset")

    def _isr_read_seen(self) -> None:
        if self._msix_enabled():
            # checks: drv:pci/isr#1
            self._flag(Rule.ISR_READ_WITH_MSIX, "ISR status read while MSI-X is enabled")

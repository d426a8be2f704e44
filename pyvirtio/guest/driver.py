"""The guest driver core, with Linux semantics (``drivers/virtio/virtio.c`` + ``virtio_pci_common.c``) where
they conform to virtio 1.4, and the spec's rules where Linux does not.

:class:`VirtioDriver` writes the device initialization sequence once (virtio 1.4 §3.1.1, rcore virtio-drivers'
``begin_init``/``finish_init``): :meth:`VirtioDriver.probe` and :meth:`VirtioDriver.restore` share it; probe
negotiates features, restore re-writes the ones negotiated before (Linux ``virtio_device_restore``: reset first,
no new negotiation). Freeze/restore follow ``virtio_device_freeze``/``virtio_device_restore``, the virtio 1.4
Device Suspend flow is :meth:`VirtioDriver.suspend_bit`/:meth:`VirtioDriver.resume_bit`, and a single queue is
reset and re-enabled with :meth:`VirtioDriver.reset_vq`/:meth:`VirtioDriver.enable_vq` (§2.6.1). Device
drivers override the hooks ``setup``, ``driver_freeze``, ``driver_restore``, ``reclaim_unused``,
``config_changed`` and ``vq_callback``.

What the driver may do at each moment is a state machine kept as data: :class:`DriverPhase` (where the
initialization, suspend and failure steps left the device, from the driver's side) and :data:`PHASE_ALLOWS`
(which :class:`Action` each phase allows). Buffers are made available with :meth:`VirtioDriver.add_buffer` and
notified with :meth:`VirtioDriver.kick`, both only while :attr:`VirtioDriver.submitting` (stopped before SUSPEND
is written, started again once the resume is confirmed); a notification that may not be sent yet (before
DRIVER_OK, submissions stopped) is held and sent when the device is live and submissions run again. Waits for
the device go through :meth:`VirtioDriver.wait_for`, which fails with :class:`DeviceNeedsReset` instead of timing
out when the device signals DEVICE_NEEDS_RESET (§2.1.1).

``VirtioDriver(..., linux_quirks=True)`` keeps Linux's non-conforming restore of a device that had FAILED
(FAILED set again after ACKNOWLEDGE, then the initialization goes on; the offer is not re-read): the real-VM
comparison uses it when it needs Linux's exact status sequence. The default conforms (§2.1.1, §3.1.1).

The driver takes its transport as a parameter: a PCI function (wrapped in
:class:`~pyvirtio.guest.transport.PciTransport`) or, with ``transport=``, any
:class:`~pyvirtio.guest.transport.Transport` — tests use :mod:`pyvirtio.guest.fake` to run a driver with no
device behind it. The state kept in the S4 image is a validated :class:`DriverState`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import ClassVar, TypedDict

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, DriverTimeout, InvalidStateError, PyvirtioError
from pyvirtio.guest.transport import PciFunctionAccess, PciTransport, Platform, Transport
from pyvirtio.spec.constants import VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_ISR_CONFIG, Feature, Status, bit
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

__all__ = [
    "PHASE_ALLOWS",
    "TRANSPORT_FEATURES",
    "Action",
    "DeviceNeedsReset",
    "DriverOptions",
    "DriverPhase",
    "DriverState",
    "SubmissionsStopped",
    "VirtioDriver",
    "state_bool",
    "state_error",
    "state_fields",
    "state_int",
]

#: Transport features a pyvirtio driver understands (Linux ``vring_transport_features`` + SUSPEND). Not among
#: them: ACCESS_PLATFORM (no IOMMU: the driver hands out guest-physical addresses), RING_PACKED, IN_ORDER,
#: ORDER_PLATFORM, SR_IOV (no SR-IOV capability is ever driven), NOTIFICATION_DATA, NOTIF_CONFIG_DATA, ADMIN_VQ.
TRANSPORT_FEATURES = (
    bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
)

_FEATURE_LIMIT = 1 << 64
_RING_ALIGN = 4096  # Linux allocates vrings page-aligned


class DeviceNeedsReset(DriverError):
    """The device presents DEVICE_NEEDS_RESET: what the driver waited for will not come (virtio 1.4 §2.1.1:
    the driver SHOULD NOT rely on the completion of operations); only a reset brings the device back."""


class SubmissionsStopped(DriverError):
    """New buffers are refused: the device is suspended (virtio 1.4 Device Suspend: after setting SUSPEND the
    driver MUST NOT make buffers available) or the driver stopped submissions before suspending it."""


class DriverPhase(Enum):
    """Where the device stands, as the driver set it up (virtio 1.4 §2.1, §3.1.1, Device Suspend)."""

    RESET = "reset"  # status written 0 and read back 0 (or never initialised)
    NEGOTIATING = "negotiating"  # ACKNOWLEDGE (and DRIVER) set; features being negotiated
    CONFIGURING = "configuring"  # FEATURES_OK set and confirmed; device-specific set-up (§3.1.1 step 7)
    LIVE = "live"  # DRIVER_OK set by the driver
    SUSPENDED = "suspended"  # SUSPEND written, until the resume is confirmed (SUSPEND=0, DRIVER_OK=1)
    FAILED = "failed"  # FAILED written: nothing but a reset (§2.1.1, §3.1.1)


class Action(Enum):
    """What a driver does to a device that only some phases allow."""

    WRITE_FEATURES = "write driver features"  # §3.1.1 step 4; none after FEATURES_OK (drv:init#3)
    WRITE_CONFIG = "write device configuration"  # not while negotiating (drv:init#2) nor suspended (drv:suspend#5)
    ADD_BUFFER = "make a buffer available"  # also needs submissions running (drv:suspend#3)
    NOTIFY = "send an available-buffer notification"  # only once DRIVER_OK (drv:init#6); submissions running (#4)
    RESET_QUEUE = "reset or re-enable a queue"  # a configured queue, device not suspended or failed
    SUSPEND = "set SUSPEND"  # only a live device (drv:suspend#1); never after FAILED (drv:status#3)
    RESUME = "resume from SUSPEND"  # only a device the driver suspended


#: Which phases allow each :class:`Action` (the rules of virtio 1.4 §3.1.1 and Device Suspend, as data). While
#: SUSPENDED, buffers and notifications are held back by the submissions being stopped (:meth:`VirtioDriver.
#: stop_submissions` runs before SUSPEND is written): that one switch is what a test flips to play a driver that
#: misbehaves while its device is suspended.
PHASE_ALLOWS: Mapping[Action, frozenset[DriverPhase]] = MappingProxyType({
    Action.WRITE_FEATURES: frozenset({DriverPhase.NEGOTIATING}),
    Action.WRITE_CONFIG: frozenset({DriverPhase.CONFIGURING, DriverPhase.LIVE}),
    Action.ADD_BUFFER: frozenset({DriverPhase.CONFIGURING, DriverPhase.LIVE, DriverPhase.SUSPENDED}),
    Action.NOTIFY: frozenset({DriverPhase.LIVE, DriverPhase.SUSPENDED}),
    Action.RESET_QUEUE: frozenset({DriverPhase.CONFIGURING, DriverPhase.LIVE}),
    Action.SUSPEND: frozenset({DriverPhase.LIVE}),
    Action.RESUME: frozenset({DriverPhase.SUSPENDED}),
})


#: :data:`PHASE_ALLOWS` keyed by the action's id, phases as tuples: :meth:`VirtioDriver.allows` runs per buffer and
#: per notification, and tuples test membership by identity without hashing enum members in Python.
_ALLOWED: dict[int, tuple[DriverPhase, ...]] = {id(a): tuple(ps) for a, ps in PHASE_ALLOWS.items()}
_ADD_BUFFER_PHASES = _ALLOWED[id(Action.ADD_BUFFER)]
_NOTIFY_PHASES = _ALLOWED[id(Action.NOTIFY)]


# -- state for the S4 image ----------------------------------------------------------------------------------------


def state_error(what: str, name: str, value: object, why: str) -> InvalidStateError:
    """The one-line :class:`InvalidStateError` for field ``name`` of ``what`` (value shown, shortened)."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidStateError(f"{what} field {name!r} = {shown}: {why}")


def state_fields(what: str, data: object, names: tuple[str, ...], *, strict: bool = True) -> Mapping[str, object]:
    """``data`` as a mapping that has every key in ``names`` (and, when ``strict``, no other key)."""
    if not isinstance(data, dict):
        raise InvalidStateError(f"{what}: expected an object, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    extra = sorted(str(k) for k in data if k not in names) if strict else []
    if missing or extra:
        raise InvalidStateError(f"{what}: missing fields {missing}, unknown fields {extra}")
    return data


def state_bool(what: str, data: Mapping[str, object], name: str) -> bool:
    """Field ``name`` of ``data``, which must be a bool."""
    v = data[name]
    if type(v) is not bool:
        raise state_error(what, name, v, "not a boolean")
    return v


def state_int(what: str, data: Mapping[str, object], name: str, lo: int, hi: int) -> int:
    """Field ``name`` of ``data``, which must be an int (not a bool) in ``lo <= v < hi``."""
    v = data[name]
    if type(v) is not int:
        raise state_error(what, name, v, "not an integer")
    if not lo <= v < hi:
        raise state_error(what, name, v, f"not in [{lo:#x}, {hi:#x})")
    return v


@dataclass(frozen=True)
class DriverState:
    """What the guest kernel keeps of a bound virtio driver in guest RAM (Linux ``struct virtio_device``):
    the negotiated features (always with VERSION_1, virtio 1.4 "Reserved Feature Bits"), ``failed`` and a
    config change not yet delivered. Untrusted when read from an image: :meth:`from_dict` re-validates every
    field."""

    features: int
    failed: bool
    config_change_pending: bool

    WHAT: ClassVar[str] = "driver state"
    KEYS: ClassVar[tuple[str, ...]] = ("features", "failed", "config_change_pending")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (what the image header stores)."""
        return {"features": self.features, "failed": self.failed, "config_change_pending": self.config_change_pending}

    @classmethod
    def core_from_dict(cls, data: object, *, strict: bool = True) -> DriverState:
        """Parse the :class:`DriverState` fields of ``data``; with ``strict=False`` keys this class does not own
        are left for a subclass to judge. Raises :class:`InvalidStateError` naming the field."""
        d = state_fields(cls.WHAT, data, DriverState.KEYS, strict=strict)
        features = state_int(cls.WHAT, d, "features", 0, _FEATURE_LIMIT)
        if not features & bit(Feature.VERSION_1):
            raise state_error(cls.WHAT, "features", features, "VERSION_1 missing (never negotiated without it)")
        return DriverState(features, state_bool(cls.WHAT, d, "failed"),
                           state_bool(cls.WHAT, d, "config_change_pending"))

    @classmethod
    def from_dict(cls, data: object) -> DriverState:
        """Parse :meth:`to_dict` output (e.g. from JSON), rejecting unknown, missing or bad fields."""
        return cls.core_from_dict(data)


class DriverOptions(TypedDict, total=False):
    """The keyword options of :class:`VirtioDriver`, so a driver subclass can pass them on without repeating them."""

    name: str
    use_msix: bool
    accept_suspend: bool
    extra_features: int
    transport: Transport | None
    linux_quirks: bool


class VirtioDriver:
    """A guest driver bound to one virtio device through a :class:`~pyvirtio.guest.transport.Transport`.

    ``VirtioDriver(platform, fn, alloc)`` wraps PCI function ``fn`` in a :class:`PciTransport`;
    ``VirtioDriver(platform, None, alloc, transport=t)`` uses ``t`` as it is. ``extra_features`` are the
    transport-level bits of kernel extensions the driver offers besides its own (e.g. the freeze_mode bit,
    :meth:`pyvirtio.guest.kernel.KernelConfig.driver_features`); left at None, :meth:`Guest.bind
    <pyvirtio.guest.kernel.Guest.bind>` fills them in (the compatibility path for callers that predate it).
    ``linux_quirks`` keeps Linux's non-conforming restore of a FAILED device (see the module docstring).
    """

    #: virtio device id this driver binds to
    device_id: ClassVar[int] = 0
    #: device-type feature bits the driver understands
    wanted_features: int = 0
    #: whether the device driver has ``.freeze``/``.restore`` (virtio-gpu before Linux 7.3 does not)
    has_pm_hooks: ClassVar[bool] = True
    #: default queue sizes the driver asks for (None = the device maximum)
    queue_sizes: ClassVar[tuple[int | None, ...]] = (None,)
    #: device-type feature dependencies: bit -> the bits it requires (virtio 1.4 §2.2: "requires")
    FEATURE_REQUIRES: ClassVar[Mapping[int, int]] = MappingProxyType({})

    SUSPEND_POLL = 1 * MS
    SUSPEND_TIMEOUT = 100 * MS
    QUEUE_RESET_TIMEOUT = 100 * MS

    def __init__(
        self,
        platform: Platform,
        fn: PciFunctionAccess | None,
        alloc: GuestAllocator,
        *,
        name: str = "virtio",
        use_msix: bool = True,
        accept_suspend: bool = True,
        extra_features: int = 0,
        transport: Transport | None = None,
        linux_quirks: bool = False,
    ) -> None:
        if transport is None:
            if fn is None:
                raise TypeError(f"{name}: a driver needs a PCI function or transport=")
            transport = PciTransport(fn, platform, name)
        elif fn is not None:
            raise TypeError(f"{name}: give a PCI function or transport=, not both")
        self.platform = platform
        self.alloc = alloc
        self.name = name
        self.t: Transport = transport
        if self.device_id and self.t.device_id != self.device_id:
            raise DriverError(f"{name}: device id {self.t.device_id} is not {self.device_id}")
        self.use_msix = use_msix
        #: transport-level bits a kernel extension understands (e.g. the freeze_mode proposal's bit)
        self.extra_features = extra_features
        self.accept_suspend = accept_suspend
        #: Linux's restore of a FAILED device (non-conforming, for the real-VM comparison)
        self.linux_quirks = linux_quirks
        self.features = 0
        self.vqs: list[DriverQueue] = []
        self._vq_mem: list[int] = []
        self._vq_vectors: list[int] = []
        #: queues reset with :meth:`reset_vq` and not re-enabled yet
        self.reset_queues: set[int] = set()
        self._held_kicks: set[int] = set()
        self.phase = DriverPhase.RESET
        #: buffers may be made available and notified (False from before SUSPEND until the resume is confirmed)
        self.submitting = True
        self.failed = False
        self.config_core_enabled = False
        self.config_change_pending = False
        self.config_changes_delivered = 0
        self.needs_reset_seen = False
        self.probed = False

    # -- feature helpers --------------------------------------------------------------------------------------

    def has(self, feature: int) -> bool:
        """Whether feature bit ``feature`` was negotiated."""
        return bool(self.features & bit(feature))

    def acceptable_features(self) -> int:
        """Every bit this driver would accept: its device bits, the transport bits, kernel extensions, SUSPEND.

        A kernel extension's bit (``extra_features``, e.g. the freeze_mode proposal's) lies in the range the spec
        reserves: accepting it is the experiment's deliberate departure from §2.2.1 and happens only when the
        kernel enables that extension."""
        want = self.wanted_features | TRANSPORT_FEATURES | self.extra_features
        if self.accept_suspend:
            want |= bit(Feature.SUSPEND)
        return want

    def feature_requires(self) -> Mapping[int, int]:
        """The device type's feature dependencies, bit -> required bits (default :attr:`FEATURE_REQUIRES`)."""
        return self.FEATURE_REQUIRES

    def negotiate(self, offered: int) -> int:
        """The features to accept from ``offered`` (virtio 1.4 §2.2.1): only offered bits this driver knows (an
        unknown, reserved or foreign bit is ignored, never a reason to fail; VERSION_1 always, SR_IOV never), then
        without any bit whose prerequisite is not accepted (dropped until none is left)."""
        # spec: drv:features#1, drv:features#3, drv:features#5, drv:reserved-features#1, drv:reserved-features#7
        accepted = offered & self.acceptable_features()
        requires = self.feature_requires()
        changed = True
        while changed:
            changed = False
            for feat, need in requires.items():
                if accepted & bit(feat) and accepted & need != need:
                    accepted &= ~bit(feat)
                    changed = True
        return accepted

    # -- the phase state machine --------------------------------------------------------------------------------

    def allows(self, action: Action) -> bool:
        """Whether the current :attr:`phase` allows ``action`` (:data:`PHASE_ALLOWS`)."""
        return self.phase in _ALLOWED[id(action)]

    def _require(self, action: Action) -> None:
        if self.allows(action):
            return
        if self.phase is DriverPhase.SUSPENDED:
            raise SubmissionsStopped(f"{self.name}: cannot {action.value}: the device is suspended")
        raise DriverError(f"{self.name}: cannot {action.value} while the device is {self.phase.value}")

    def _fail(self, why: str) -> DriverError:
        """Give up on the device (virtio 1.4 §3.1.1: SHOULD set FAILED, MUST NOT continue): set FAILED, keep
        ``failed``; returns the error to raise."""
        # spec: drv:init#4, drv:init#5
        if self.phase is not DriverPhase.FAILED:
            self.phase = DriverPhase.FAILED
            with contextlib.suppress(PyvirtioError):
                self.t.add_status(Status.FAILED)
        self.failed = True
        return DriverError(f"{self.name}: {why}")

    def reset_device(self) -> None:
        """Reset the device (virtio 1.4 §2.4: write 0, then poll until status reads 0): the driver is back at
        :attr:`DriverPhase.RESET`, a DEVICE_NEEDS_RESET it saw is over, no notification is held, and a suspension
        is over too (submissions are no longer stopped by it; the phase alone says what may be done)."""
        self.t.reset()
        self.phase = DriverPhase.RESET
        self.submitting = True
        self.needs_reset_seen = False
        self.reset_queues.clear()
        self._held_kicks.clear()

    # -- the initialization sequence (virtio 1.4 §3.1.1), shared by probe and restore ---------------------------

    def _begin_init(self, *, negotiate: bool) -> bool:
        """§3.1.1 steps 1-6: reset; ACKNOWLEDGE; DRIVER; the features — negotiated from the offer when
        ``negotiate``, else the ones negotiated before, checked against the offer — then FEATURES_OK and its
        re-read. Preceded by ``pci_enable_device``/``pci_set_master``.

        At a restore, a driver that had given up on the device (``failed``) sets FAILED again after ACKNOWLEDGE and
        stops there (returns False): §2.1.1, the driver MUST reset before re-initialising, and §3.1.1, it MUST NOT
        continue. With ``linux_quirks`` it goes on as Linux ``virtio_device_restore`` does (and does not re-read
        the offer).
        Raises :class:`DriverError` (FAILED set) if VERSION_1 is missing, features are no longer offered, or the
        device refuses FEATURES_OK."""
        t = self.t
        t.enable_device()
        # spec: drv:init#1, drv:status#1, drv:status#3
        self.reset_device()
        t.add_status(Status.ACKNOWLEDGE)
        self.phase = DriverPhase.NEGOTIATING
        if self.failed and not negotiate:
            t.add_status(Status.FAILED)
            if not self.linux_quirks:
                self.phase = DriverPhase.FAILED
                return False
        t.add_status(Status.DRIVER)
        if negotiate or not self.linux_quirks:
            # spec: drv:features#2
            offered = t.device_features()
            # spec: drv:features#4
            if not offered & bit(Feature.VERSION_1):
                raise self._fail("device does not offer VERSION_1")
            if negotiate:
                self.features = self.negotiate(offered)
            elif self.features & ~offered:
                raise self._fail(f"device no longer offers features {self.features & ~offered:#x}")
        self._require(Action.WRITE_FEATURES)
        t.set_driver_features(self.features)
        self._features_ok()
        return True

    def _finish_init(self) -> None:
        """§3.1.1 step 8 (after the device-specific step 7): DRIVER_OK unless the driver set it already
        (Linux ``virtio_dev_probe``/``virtio_device_restore``), then configuration changes and submissions."""
        if self.phase is not DriverPhase.LIVE:
            self.device_ready()
        self.config_enable()
        self.start_submissions()

    def _initialise(self, *, negotiate: bool, device_setup: Callable[[], None]) -> None:
        """The whole sequence around ``device_setup`` (step 7). Any failure on the way sets FAILED before the
        error propagates (§3.1.1: SHOULD set FAILED; MUST NOT continue) — a queue the device refuses included."""
        try:
            if not self._begin_init(negotiate=negotiate):
                return
            device_setup()
            self._finish_init()
        except (PyvirtioError, MemoryError) as e:
            if self.phase is not DriverPhase.FAILED:
                self._fail(str(e))
            raise

    def probe(self) -> None:
        """Linux ``virtio_dev_probe``: the initialization sequence with feature negotiation around
        :meth:`setup` (virtio 1.4 §3.1.1). Raises :class:`DriverError` (FAILED set) if the device lacks
        VERSION_1, refuses FEATURES_OK or a queue, or set-up fails otherwise. A new probe is a new attempt: the
        device was reset first (§2.1.1), whatever happened before."""
        self.failed = False
        self._initialise(negotiate=True, device_setup=self.setup)
        self.probed = True

    def _features_ok(self) -> None:
        """§3.1.1 steps 5-6: set FEATURES_OK, re-read it; not set means the device refused the subset."""
        # spec: drv:init#1, drv:init#3
        self.t.add_status(Status.FEATURES_OK)
        if not self.t.get_status() & Status.FEATURES_OK:
            raise self._fail(f"device refused features {self.features:#x} (-ENODEV)")
        self.phase = DriverPhase.CONFIGURING

    def device_ready(self) -> None:
        """``virtio_device_ready``: set DRIVER_OK (virtio 1.4 §3.1.1 step 8); the device is live, so notifications
        held back until now are sent."""
        # spec: drv:status#1, drv:init#1
        self.t.add_status(Status.DRIVER_OK)
        self.phase = DriverPhase.LIVE
        self._flush_kicks()

    # -- virtqueues -------------------------------------------------------------------------------------------

    @staticmethod
    def _queue_size(maxsz: int, want: int | None) -> int:
        """The size to program: ``want`` (default the maximum), at most ``maxsz``, rounded down to a power of 2
        (virtio 1.4 §4.1.4.3.2: a split ring's queue_size is a power of 2)."""
        # spec: drv:pci/common-cfg#3
        n = min(maxsz, want) if want else maxsz
        return 1 << (n.bit_length() - 1)

    def find_vqs(self, sizes: tuple[int | None, ...] | None = None) -> list[DriverQueue]:
        """Allocate and enable queues; one MSI-X vector per queue plus one for config (``vp_find_vqs_msix``),
        INTx when the MSI-X table is too small or absent (virtio 1.4 §4.1.5.1.2.2). In Linux 6.12's order, as the
        real kernel was seen to do it through UML: the config vector is unmasked (its interrupt requested) and
        written; each queue is checked against ``num_queues``, programmed, and its vector unmasked; only then
        are all queues enabled (``vp_modern_find_vqs``)."""
        sizes = sizes if sizes is not None else self.queue_sizes
        n = len(sizes)
        # spec: drv:pci/msix#1
        per_vq = self.use_msix and self.t.setup_msix(
            [self._config_irq] + [self._vq_irq_handler(i) for i in range(n)])
        if per_vq:
            self.t.mask_vector(0, False)
            if self.t.set_config_vector(0) == VIRTIO_MSI_NO_VECTOR:
                raise DriverError(f"{self.name}: config vector not accepted")
        else:
            self.t.setup_intx(self._intx_irq)
        self.vqs = []
        self._vq_vectors = []
        for i, want in enumerate(sizes):
            vector = i + 1 if per_vq else VIRTIO_MSI_NO_VECTOR
            self._vq_vectors.append(vector)
            self.vqs.append(self._setup_vq(i, want, vector, enable=False))
            if per_vq:
                self.t.mask_vector(vector, False)
        for i in range(n):
            self.t.enable_queue(i)
        return self.vqs

    def _setup_vq(self, index: int, want: int | None, vector: int, *, enable: bool = True) -> DriverQueue:
        """Allocate zeroed, page-aligned rings for queue ``index`` (recorded for :meth:`del_vqs`) and program it
        (:meth:`_program_vq`); ``enable`` False leaves ``queue_enable`` to the caller."""
        if index >= self.t.num_queues():
            raise DriverError(f"{self.name}: device has {self.t.num_queues()} queues, driver needs {index + 1}")
        maxsz = self.t.queue_max_size(index)
        if maxsz == 0:
            raise DriverError(f"{self.name}: queue {index} does not exist")
        size = self._queue_size(maxsz, want)
        layout_len = RingLayout.contiguous(0, size).total_bytes
        # spec: drv:split/alignment#1, drv:reserved-features#3
        base = self.alloc.alloc(layout_len, _RING_ALIGN)
        self._vq_mem.append(base)
        self.alloc.mem.fill(base, layout_len, 0)
        layout = RingLayout.contiguous(base, size)
        vq = DriverQueue(self.alloc.mem, layout, event_idx=self.has(Feature.EVENT_IDX),
                         indirect=self.has(Feature.INDIRECT_DESC), alloc=self.alloc)
        self._program_vq(index, vq, vector, enable=enable)
        return vq

    def _program_vq(self, index: int, vq: DriverQueue, vector: int, *, enable: bool = True) -> None:
        """Program queue ``index`` with ``vq``'s rings and enable it (§4.1.5.1.3): at discovery and, the same
        way, when re-enabling it after a queue reset (§2.6.1.2). DriverError if the vector is refused."""
        lay = vq.layout
        got = self.t.setup_queue(index, lay.size, lay.desc, lay.avail, lay.used, vector, enable=enable)
        # spec: drv:pci/msix#3
        if vector != VIRTIO_MSI_NO_VECTOR and got == VIRTIO_MSI_NO_VECTOR:
            raise DriverError(f"{self.name}: queue {index} vector not accepted")

    def del_vqs(self) -> None:
        """``vp_del_vqs``: forget the queues and release their memory and vectors (the device was reset). As
        Linux does (seen through UML): each queue's interrupt is freed, then the config interrupt, then MSI-X is
        disabled. (Linux also writes NO_VECTOR to each queue's and the config vector here, after the reset: a
        write outside the §3.1.1 sequence that pyvirtio's DriverMonitor records against it; the reset already
        set NO_VECTOR, so the model leaves those writes out.)"""
        if any(v != VIRTIO_MSI_NO_VECTOR for v in self._vq_vectors):
            for v in self._vq_vectors:
                if v != VIRTIO_MSI_NO_VECTOR:
                    self.t.release_vector(v)
            self.t.release_vector(0)
        for base in self._vq_mem:
            self.alloc.free(base)
        self._vq_mem.clear()
        self.vqs = []
        self._vq_vectors = []
        self.reset_queues.clear()
        self._held_kicks.clear()
        self.t.free_msix()
        self.t.setup_intx(None)

    def add_buffer(self, index: int, out: list[tuple[int, int]], in_: list[tuple[int, int]], token: object) -> int:
        """``virtqueue_add_sgs``: make a buffer available on queue ``index`` (``out`` device-readable, then ``in_``
        device-writable segments; see :meth:`DriverQueue.add`). Returns the head.

        :class:`SubmissionsStopped` while submissions are stopped (Device Suspend: no buffer is made available
        after SUSPEND is written); :class:`DriverError` before FEATURES_OK, after FAILED, or on a queue that is
        reset or does not exist."""
        # spec: drv:suspend#3
        if not self.submitting:
            raise SubmissionsStopped(f"{self.name}: submissions are stopped (device suspended)")
        if self.phase not in _ADD_BUFFER_PHASES:  # (allows(), inline)
            self._require(Action.ADD_BUFFER)
        if not 0 <= index < len(self.vqs) or index in self.reset_queues:
            raise DriverError(f"{self.name}: queue {index} is not set up")
        return self.vqs[index].add(out, in_, token)

    def kick(self, index: int) -> None:
        """``virtqueue_kick``: notify the device if suppression allows it (§2.7.10). Before DRIVER_OK and while
        submissions are stopped (the device is suspended) no notification is sent: it is held and sent once the
        device is live and submissions run (§3.1.1, Device Suspend); none for a queue that is reset, nor for a
        FAILED device."""
        if index in self.reset_queues or self.phase is DriverPhase.FAILED:
            return
        # spec: drv:init#6, drv:suspend#4
        if not (self.submitting and self.phase in _NOTIFY_PHASES):  # (allows(Action.NOTIFY), inline)
            self._held_kicks.add(index)
            return
        if self.vqs[index].kick_prepare():
            self.t.notify(index)

    def _flush_kicks(self) -> None:
        held, self._held_kicks = sorted(self._held_kicks), set()
        for index in held:
            if index < len(self.vqs):
                self.kick(index)

    # -- queue reset (virtio 1.4 §2.6.1, VIRTIO_F_RING_RESET) ---------------------------------------------------

    def reset_vq(self, index: int, timeout: int | None = None) -> list[object]:
        """Reset queue ``index`` (§2.6.1.1; Linux ``virtqueue_reset``): stop using it, tell the device
        (``queue_reset`` = 1) and poll until the reset is verified complete (it reads 0, §4.1.4.3.2); buffers the
        device used before are completed (:meth:`vq_callback`), the ones it never used are detached — only now
        that the queue is not live (§3.3.1) — and handed to :meth:`reclaim_unused`. Returns those tokens.

        :class:`DriverError` when VIRTIO_F_RING_RESET was not negotiated, the queue is not set up, the device is
        not configured or live, or it enters DEVICE_NEEDS_RESET; :class:`DriverTimeout` when the reset does not
        complete (its buffers then stay exposed: the queue is unusable until a device reset)."""
        if not self.has(Feature.RING_RESET):
            raise DriverError(f"{self.name}: VIRTIO_F_RING_RESET not negotiated")
        self._require(Action.RESET_QUEUE)
        if not 0 <= index < len(self.vqs) or index in self.reset_queues:
            raise DriverError(f"{self.name}: queue {index} is not set up")
        self.reset_queues.add(index)
        self._held_kicks.discard(index)
        # spec: drv:vq-reset#1
        self.t.reset_queue(index, timeout or self.QUEUE_RESET_TIMEOUT)
        with contextlib.suppress(PyvirtioError):
            self.vq_callback(index)  # completions the device returned before the reset
        # spec: drv:cleanup#2
        tokens = self.vqs[index].detach_unused()
        for token in tokens:
            self.reclaim_unused(token)
        return tokens

    def enable_vq(self, index: int, size: int | None = None) -> DriverQueue:
        """Re-enable queue ``index`` after :meth:`reset_vq` (§2.6.1.2; Linux ``virtqueue_enable_after_reset``):
        configure it exactly as at discovery — zeroed rings (new ones when ``size`` differs from the current
        size), size, addresses, the same MSI-X vector read back, then ``queue_enable`` — optionally with another
        ``size`` (rounded down to a power of 2, at most the device maximum). :class:`DriverError` if the queue
        was not reset, or the device is no longer configured or live (e.g. FAILED meanwhile)."""
        self._require(Action.RESET_QUEUE)
        if index not in self.reset_queues:
            raise DriverError(f"{self.name}: queue {index} was not reset")
        vq = self.vqs[index]
        maxsz = self.t.queue_max_size(index)
        if maxsz == 0:
            raise DriverError(f"{self.name}: queue {index} does not exist")
        new_size = self._queue_size(maxsz, size if size is not None else vq.num_max)
        # spec: drv:vq-reenable#1
        if new_size == vq.num_max:
            vq.reinit()
            self._program_vq(index, vq, self._vq_vectors[index])
        else:
            old = self._vq_mem[index]
            vq = self._setup_vq(index, new_size, self._vq_vectors[index])
            self._vq_mem[index] = self._vq_mem.pop()
            self.alloc.free(old)
            self.vqs[index] = vq
        self.reset_queues.discard(index)
        if self.phase is DriverPhase.LIVE:
            self._flush_kicks()
        return vq

    # -- waiting for the device ---------------------------------------------------------------------------------

    def wait_for(self, done: Callable[[], bool], timeout: int, failure: str) -> None:
        """Let the machine run until ``done()`` holds. Fails with :class:`DeviceNeedsReset` as soon as the device
        signals DEVICE_NEEDS_RESET (its configuration-change interrupt, or the status read when the time is up):
        what was awaited will not come (virtio 1.4 §2.1.1: SHOULD NOT rely on completion). Otherwise
        :class:`DriverTimeout` after ``timeout`` ns. Both messages are ``"<name>: ..."`` with ``failure`` saying
        what did not happen."""
        # spec: drv:status#4
        self.platform.run_until(lambda: done() or self.needs_reset_seen, timeout)
        if done():
            return
        self._wait_failed(failure)

    def _wait_failed(self, failure: str) -> None:
        """:meth:`wait_for` once the time is up (or DEVICE_NEEDS_RESET was seen) without ``done``: raise."""
        if self.needs_reset_seen or self.t.get_status() & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
            raise DeviceNeedsReset(f"{self.name}: DEVICE_NEEDS_RESET: {failure}")
        raise DriverTimeout(f"{self.name}: {failure}")

    # -- interrupts -------------------------------------------------------------------------------------------

    def _vq_irq_handler(self, index: int) -> Callable[[], None]:
        def handler() -> None:
            # spec: drv:pci/isr#1
            if index < len(self.vqs) and index not in self.reset_queues:
                self.vq_callback(index)

        return handler

    def _intx_irq(self) -> None:
        """INTx: read ISR (and so clear it; 0 means "not ours"); one interrupt may signal a configuration change
        and used buffers together, so both are handled (§4.1.5.4)."""
        isr = self.t.read_isr()
        if not isr:
            return
        # spec: drv:pci/config-notify#1
        if isr & VIRTIO_PCI_ISR_CONFIG:
            self._config_irq()
        for i in range(len(self.vqs)):
            if i not in self.reset_queues:
                self.vq_callback(i)

    def _config_irq(self) -> None:
        """``virtio_config_changed``: deliver, or remember for when delivery is enabled again."""
        if self.t.get_status() & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
        if not self.config_core_enabled:
            self.config_change_pending = True
            return
        self.config_changes_delivered += 1
        self.config_changed()

    def config_enable(self) -> None:
        """``virtio_config_core_enable``: replay a change that arrived while disabled."""
        self.config_core_enabled = True
        if self.config_change_pending:
            self.config_change_pending = False
            self.config_changes_delivered += 1
            self.config_changed()

    def config_disable(self) -> None:
        """``virtio_config_core_disable``: hold configuration changes back until :meth:`config_enable`."""
        self.config_core_enabled = False

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes of device configuration at ``offset``: not while features are negotiated
        (virtio 1.4 §3.1.1 step 4) and not while the device is suspended (Device Suspend); the driver is then
        refused with :class:`DriverError` (:class:`SubmissionsStopped` when suspended)."""
        # spec: drv:init#2, drv:suspend#5
        self._require(Action.WRITE_CONFIG)
        self.t.config_write(offset, size, value)

    # -- hooks for device drivers -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Device-specific init between FEATURES_OK and DRIVER_OK (virtio 1.4 §3.1.1 step 7; default: create
        the queues)."""
        self.find_vqs()

    def driver_freeze(self) -> None:
        """The device driver's ``.freeze``, the common recipe (Linux ``remove_common`` pattern): reset the
        device (virtio 1.4 §2.4: it then uses no buffer), hand every buffer still on a queue to
        :meth:`reclaim_unused` (``virtqueue_detach_unused_buf``), delete the queues. Buffers are reclaimed only
        after the reset made the queues non-live (§3.3.1)."""
        # spec: drv:cleanup#1, drv:cleanup#2
        self.reset_device()
        for vq in self.vqs:
            for token in vq.detach_unused():
                self.reclaim_unused(token)
        self.del_vqs()

    def reclaim_unused(self, token: object) -> None:
        """A buffer the device never used, detached after a reset (:meth:`driver_freeze`, :meth:`reset_vq`):
        release what it holds (default: nothing)."""

    def driver_restore(self) -> None:
        """The device driver's ``.restore``: re-create the queues (:meth:`setup`)."""
        self.setup()

    def config_changed(self) -> None:
        """A configuration change was delivered (virtio 1.4 §2.5.1, §4.1.5.3)."""

    def vq_callback(self, index: int) -> None:
        """A used-buffer notification for queue ``index`` (virtio 1.4 §2.7.10)."""

    # -- guest-side state, for the S4 image --------------------------------------------------------------------

    def state(self) -> DriverState:
        """Guest-kernel state of this driver that lives in guest RAM (written into the hibernation image)."""
        return DriverState(self.features, self.failed, self.config_change_pending)

    def save_state(self) -> dict[str, object]:
        """:meth:`state` as a JSON-able dict (the image header stores it); subclasses add their own keys."""
        return self.state().to_dict()

    def load_state(self, state: dict[str, object]) -> None:
        """Re-create this driver's state from an image (the image kernel's copy of the driver).

        The :class:`DriverState` keys are validated here (:class:`InvalidStateError` naming the field); other
        keys belong to a subclass, which validates them. The driver counts as probed: :meth:`restore` follows.
        """
        self._apply_state(DriverState.core_from_dict(state, strict=False))

    def _apply_state(self, st: DriverState) -> None:
        self.features, self.failed, self.config_change_pending = st.features, st.failed, st.config_change_pending
        self.probed = True

    # -- power management (Linux semantics) -------------------------------------------------------------------

    def freeze(self) -> None:
        """``virtio_pci_freeze`` = ``virtio_device_freeze`` + ``pci_disable_device``: configuration changes
        held back, ``failed`` remembered, the driver's ``.freeze`` (when it has PM hooks), bus mastering off."""
        self.config_disable()
        self.failed = bool(self.t.get_status() & Status.FAILED)
        if self.has_pm_hooks:
            self.driver_freeze()
        self.t.disable_device()

    def restore(self) -> None:
        """``virtio_pci_restore`` = ``pci_enable_device`` + ``pci_set_master`` + ``virtio_device_restore``:
        the initialization sequence (virtio 1.4 §3.1.1) with the features negotiated at probe, the driver's
        ``.restore`` (when it has PM hooks) as the device-specific step.

        A device the driver had given up on (FAILED at freeze) is reset, marked FAILED again and left there: the
        driver does not re-initialise it (§2.1.1, §3.1.1). With ``linux_quirks`` the initialization goes on after
        FAILED, as Linux does. Any failure sets FAILED before the error propagates."""
        self._initialise(negotiate=False, device_setup=self.driver_restore if self.has_pm_hooks else _nothing)

    def stop_submissions(self) -> None:
        """Stop making buffers available and notifying (before SUSPEND: virtio 1.4 Device Suspend, the driver MUST
        NOT make new buffers available nor send notifications). Device drivers extend it (and call it)."""
        self.submitting = False

    def start_submissions(self) -> None:
        """Submissions may resume (after the resume from SUSPEND is confirmed, and at the end of every
        initialization); notifications held meanwhile are sent. Device drivers extend it (and call it)."""
        self.submitting = True
        if self.phase is DriverPhase.LIVE:
            self._flush_kicks()

    def suspend_bit(self, timeout: int | None = None) -> None:
        """Virtio 1.4 Device Suspend, driver side: set SUSPEND, poll until SUSPEND=1 and DRIVER_OK=0.

        Only with DRIVER_OK set and VIRTIO_F_SUSPEND negotiated. From the moment SUSPEND is written no buffer is
        made available, no notification sent and no device configuration written (:data:`PHASE_ALLOWS`);
        configuration changes are held back. Raises :class:`DriverTimeout` if the device does not finish
        quiescing in time, :class:`DriverError` if it enters DEVICE_NEEDS_RESET or the feature was not negotiated.
        """
        t = self.t
        # spec: drv:suspend#1
        if not self.has(Feature.SUSPEND):
            raise DriverError(f"{self.name}: VIRTIO_F_SUSPEND not negotiated")
        status = t.get_status()
        if self.phase is DriverPhase.SUSPENDED and status & Status.SUSPEND and not status & Status.DRIVER_OK:
            return  # already suspended
        if not status & Status.DRIVER_OK or not self.allows(Action.SUSPEND):
            raise DriverError(f"{self.name}: SUSPEND needs a live device with DRIVER_OK (status {status:#x}, "
                              f"{self.phase.value})")
        self.stop_submissions()
        self.config_disable()
        # spec: drv:suspend#3, drv:suspend#4, drv:suspend#5
        self.phase = DriverPhase.SUSPENDED
        t.set_status(status | Status.SUSPEND)
        # spec: drv:suspend#2
        self._poll_status(lambda s: bool(s & Status.SUSPEND) and not s & Status.DRIVER_OK,
                          timeout or self.SUSPEND_TIMEOUT, "suspend")

    def resume_bit(self, timeout: int | None = None) -> None:
        """Resume from SUSPEND (virtio 1.4 Device Suspend): write DRIVER_OK, poll until SUSPEND=0 and DRIVER_OK=1;
        only then is the device used again (held notifications sent, configuration changes delivered,
        submissions started).

        Raises :class:`DriverTimeout` on a time-out, :class:`DriverError` on DEVICE_NEEDS_RESET.
        """
        t = self.t
        status = t.get_status()
        if status & Status.DRIVER_OK and not status & Status.SUSPEND:
            if self.phase is DriverPhase.SUSPENDED:
                self._resumed()
            return
        self._require(Action.RESUME)
        t.set_status(status | Status.DRIVER_OK)
        # spec: drv:suspend#6
        self._poll_status(lambda s: not s & Status.SUSPEND and bool(s & Status.DRIVER_OK),
                          timeout or self.SUSPEND_TIMEOUT, "resume")
        self._resumed()

    def _resumed(self) -> None:
        """The resume is confirmed: the device is live again; held notifications, configuration changes and
        submissions go on."""
        self.phase = DriverPhase.LIVE
        self._flush_kicks()
        self.config_enable()
        self.start_submissions()

    def _poll_status(self, done: Callable[[int], bool], timeout: int, what: str) -> None:
        result: list[int] = []

        def check() -> bool:
            s = self.t.get_status()
            result[:] = [s]
            return done(s) or bool(s & Status.DEVICE_NEEDS_RESET)

        if not self.platform.run_until(check, timeout):
            raise DriverTimeout(f"{self.name}: {what} did not complete (status {result[0]:#x})")
        if result[0] & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
            raise DeviceNeedsReset(f"{self.name}: device set DEVICE_NEEDS_RESET during {what}")


def _nothing() -> None:
    """The device-specific step of a driver without PM hooks: nothing."""

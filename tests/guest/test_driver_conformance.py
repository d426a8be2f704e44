"""pyvirtio's own driver checked against the driver statements of virtio 1.4 (issue 9).

:class:`~pyvirtio.guest.checker.DriverChecker` sits between a driver and its PCI function and records every access
that breaks a driver statement. Two halves, so that each check can fail:

* every driver flow (probe, I/O, Device Suspend, freeze/restore, queue reset and re-enable, hibernation replay,
  a FAILED device) runs under the checker, on a real machine and on a fake function: no violation;
* for every statement the checker watches, a hand-written access sequence that breaks it is flagged with that id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.devices import Gpu, Rng
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError
from pyvirtio.guest.checker import CHECKED, DriverChecker
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.fake import FakeFunction, FakePlatform, acknowledge_suspend
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind, S4ReplayGpuDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_COMMAND,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFFSET,
    CommonCfg,
    Feature,
    GpuCfg,
    GpuFeature,
    PciCommand,
    Status,
    bit,
)

GPU_BITS = sum(bit(f) for f in GpuFeature)
GPU_OPTIONAL = {GpuCfg.BLOB_ALIGNMENT: GpuFeature.BLOB_ALIGNMENT}
HEAP = (1 << 20, 40 << 20)


def _machine() -> tuple[Machine, GuestAllocator]:
    m = Machine(64 << 20, seed=1)
    return m, GuestAllocator(m.memory, *HEAP)


def _frame(drv: GpuDriver) -> None:
    fb = drv.framebuffers[0]
    drv.draw(0, np.full((fb.height, fb.width, 4), 90, np.uint8))


# -- the flows --------------------------------------------------------------------------------------------------


def flow_rng_machine() -> DriverChecker:
    """virtio-rng on a machine: probe, reads, SUSPEND/resume, freeze/restore, queue reset + re-enable (same and
    another size), all with reads in between."""
    m, alloc = _machine()
    ck = DriverChecker(m.plug(Rng()), memory=m.memory)
    drv = RngDriver(m, ck, alloc, name="rng")
    drv.probe()
    assert len(drv.read(32)) == 32
    waiting = drv.request(16)
    drv.suspend_bit()
    drv.resume_bit()
    assert m.run_until(lambda: waiting.done)
    drv.freeze()
    drv.restore()
    assert len(drv.read(8)) == 8
    drv.reset_vq(0)
    drv.enable_vq(0)
    assert len(drv.read(8)) == 8
    drv.reset_vq(0)
    drv.enable_vq(0, 16)
    assert len(drv.read(8)) == 8 and drv.vqs[0].num_max == 16
    return ck


def flow_rng_intx() -> DriverChecker:
    """virtio-rng with INTx (no MSI-X): the ISR is read in the interrupt handler."""
    m, alloc = _machine()
    ck = DriverChecker(m.plug(Rng()), memory=m.memory)
    drv = RngDriver(m, ck, alloc, name="rng", use_msix=False)
    drv.probe()
    assert len(drv.read(8)) == 8
    return ck


def _gpu_flow(kind: GpuDriverKind) -> DriverChecker:
    m, alloc = _machine()
    ck = DriverChecker(m.plug(Gpu(num_scanouts=2, width=64, height=48)), memory=m.memory, device_bits=GPU_BITS,
                       feature_requires=GpuDriver.FEATURE_REQUIRES, optional_config=GPU_OPTIONAL)
    drv = FLAVOURS[kind](m, ck, alloc, name="gpu")
    drv.probe()
    _frame(drv)
    drv.set_cursor(0, 5, 6)
    drv.suspend_bit()
    drv.resume_bit()
    _frame(drv)
    drv.reset_vq(1)
    drv.enable_vq(1)
    drv.set_cursor(0, 7, 8)
    if isinstance(drv, S4ReplayGpuDriver):
        drv.hibernation = True  # a plain Gpu forgets every resource on reset: replay them all
    drv.freeze()
    drv.restore()
    if drv.has_pm_hooks:
        _frame(drv)
    return ck


def flow_gpu_no_hooks() -> DriverChecker:
    """virtio-gpu as Linux <= 7.2 (no PM hooks): probe, draw, cursor, SUSPEND/resume, a reset of the cursor queue,
    freeze/restore (after which its queues are dead: the modelled black screen)."""
    return _gpu_flow(GpuDriverKind.NO_HOOKS)


def flow_gpu_s4_replay() -> DriverChecker:
    """virtio-gpu as Linux 7.3: the same, and the restore re-creates every object and replays the modeset."""
    return _gpu_flow(GpuDriverKind.S4_REPLAY)


def flow_gpu_config_change() -> DriverChecker:
    """A display hot-plug (configuration change) while the device is suspended is handled after the resume:
    events_clear is not written while suspended."""
    m, alloc = _machine()
    dev = Gpu(num_scanouts=2, width=64, height=48, enabled_scanouts=1)
    ck = DriverChecker(m.plug(dev), memory=m.memory, device_bits=GPU_BITS,
                       feature_requires=GpuDriver.FEATURE_REQUIRES, optional_config=GPU_OPTIONAL)
    drv = GpuDriver(m, ck, alloc, name="gpu")
    drv.probe()
    drv.suspend_bit()
    dev.hotplug(1, True, 64, 48)
    m.run_for(1_000_000)
    drv.resume_bit()
    m.run_for(1_000_000)
    assert drv.display_events_handled == 1
    return ck


def _fake(**kw: object) -> tuple[FakeFunction, FakePlatform, GuestAllocator]:
    kw.setdefault("features", bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.RING_RESET)
                  | bit(Feature.SUSPEND) | bit(Feature.SR_IOV) | bit(Feature.ACCESS_PLATFORM) | bit(3))
    fn = FakeFunction(**kw)  # type: ignore[arg-type]
    mem = GuestMemory(1 << 20)
    return fn, FakePlatform(), GuestAllocator(mem, 0x1000, 0x80000)


def flow_fake_lifecycle() -> DriverChecker:
    """The core over a fake function that offers bits the driver must not take (SR_IOV, ACCESS_PLATFORM, an
    unknown device bit): probe, a slow reset, SUSPEND/resume, a slow queue reset, freeze/restore."""
    fn, platform, alloc = _fake(queue_sizes=(64, 32))
    ck = DriverChecker(fn)

    class Two(VirtioDriver):
        queue_sizes = (None, None)

    drv = Two(platform, ck, alloc, name="dev")
    fn.reset_reads = 3
    drv.probe()
    fn.on_status = acknowledge_suspend
    drv.suspend_bit()
    drv.resume_bit()
    fn.queue_reset_reads = 4
    drv.reset_vq(1)
    drv.enable_vq(1, 8)
    drv.freeze()
    drv.restore()
    assert fn.queue_resets == [1]
    return ck


def flow_fake_failed_restore() -> DriverChecker:
    """A device given up before freeze is reset and marked FAILED again on restore, and left alone; a later
    restore resets it first."""
    fn, platform, alloc = _fake()
    ck = DriverChecker(fn)
    drv = VirtioDriver(platform, ck, alloc, name="dev")
    drv.probe()
    fn.status |= Status.FAILED
    drv.freeze()
    drv.restore()
    drv.restore()
    return ck


def flow_fake_setup_failure() -> DriverChecker:
    """A device that refuses the queue's MSI-X vector: FAILED is set and nothing more happens."""
    fn, platform, alloc = _fake()
    fn.refuse_vectors = True
    ck = DriverChecker(fn)
    with pytest.raises(Exception, match="vector not accepted"):
        VirtioDriver(platform, ck, alloc, name="dev").probe()
    assert fn.status & Status.FAILED
    return ck


FLOWS: dict[str, Callable[[], DriverChecker]] = {f.__name__[5:]: f for f in (
    flow_rng_machine, flow_rng_intx, flow_gpu_no_hooks, flow_gpu_s4_replay, flow_gpu_config_change,
    flow_fake_lifecycle, flow_fake_failed_restore, flow_fake_setup_failure)}


@pytest.mark.spec(*CHECKED)
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_driver_flows_break_no_driver_statement(flow: str) -> None:
    """virtio 1.4 driver requirements (§2.1.1 status, §2.2.1 features, §2.4.2 reset, §2.5.1 optional config,
    §2.6.1 queue reset, §3.1.1 initialization, Device Suspend, §6.1 reserved features, §4.1.3.1/§4.1.4 PCI
    layout, capabilities, common configuration, ISR, MSI-X, notifications): every access pyvirtio's drivers make
    in every flow obeys each statement the checker watches (:data:`~pyvirtio.guest.checker.CHECKED`)."""
    ck = FLOWS[flow]()
    assert ck.finish() == [], "\n".join(map(str, ck.violations))
    assert len(ck.log) > 50


# -- each rule can fail ---------------------------------------------------------------------------------------------


@dataclass
class Raw:
    """A misbehaving driver: raw register accesses through a checker over a fake function."""

    fn: FakeFunction
    ck: DriverChecker

    def w(self, f: CommonCfg, value: int) -> None:
        self.ck.bar_write(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + f, COMMON_CFG_WIDTH[f], value)

    def r(self, f: CommonCfg) -> int:
        return self.ck.bar_read(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + f, COMMON_CFG_WIDTH[f])

    def status(self, value: int) -> None:
        self.w(CommonCfg.DEVICE_STATUS, value)

    def reset(self) -> None:
        self.status(0)
        assert self.r(CommonCfg.DEVICE_STATUS) == 0

    def offer(self) -> int:
        feats = 0
        for sel in range(2):
            self.w(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            feats |= self.r(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return feats

    def accept(self, feats: int) -> None:
        for sel in range(2):
            self.w(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.w(CommonCfg.DRIVER_FEATURE, (feats >> (32 * sel)) & 0xFFFFFFFF)

    def negotiate(self, feats: int | None = None) -> None:
        """Reset, ACKNOWLEDGE, DRIVER, read the offer, accept ``feats`` (default: VERSION_1 and RING_RESET and
        SUSPEND when offered), FEATURES_OK read back."""
        self.reset()
        self.status(0x01)
        self.status(0x03)
        offer = self.offer()
        want = bit(Feature.VERSION_1) | bit(Feature.RING_RESET) | bit(Feature.SUSPEND)
        self.accept(offer & want if feats is None else feats)
        self.status(0x0B)
        self.r(CommonCfg.DEVICE_STATUS)  # the re-read of FEATURES_OK

    def queue(self, index: int = 0, size: int = 8, *, enable: bool = True) -> None:
        self.w(CommonCfg.QUEUE_SELECT, index)
        self.w(CommonCfg.QUEUE_SIZE, size)
        areas = sorted(f for f in CommonCfg if CommonCfg.QUEUE_DESC_LO <= f <= CommonCfg.QUEUE_DEVICE_HI)
        for i, f in enumerate(areas):  # desc 0x4000, driver (avail) 0x8000, device (used) 0xC000; high halves 0
            self.w(f, 0x4000 * (i // 2 + 1) if i % 2 == 0 else 0)
        if enable:
            self.w(CommonCfg.QUEUE_ENABLE, 1)

    def live(self) -> None:
        self.negotiate()
        self.queue()
        self.status(0x0F)

    def notify(self, value: int = 0, size: int = 2) -> None:
        self.w(CommonCfg.QUEUE_SELECT, value)
        off = self.r(CommonCfg.QUEUE_NOTIFY_OFF)
        self.ck.bar_write(QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET + off * self.ck.notify_mult, size, value)

    def suspended(self) -> None:
        self.live()
        self.fn.on_status = acknowledge_suspend
        self.status(0x1F)
        assert self.r(CommonCfg.DEVICE_STATUS) == 0x1B


def raw() -> Raw:
    fn, _, _ = _fake(device_config=bytes(16))
    d = Raw(fn, DriverChecker(fn, optional_config={0: 5}, memory=GuestMemory(1 << 20)))
    d.ck.config_write(PCI_COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    return d


def _ring_moves(d: Raw) -> None:
    d.suspended()
    assert d.ck.memory is not None
    d.ck.memory.write_u16(0x8000 + 2, 1)  # the avail ring of queue 0 (driver area at 0x8000): idx 0 -> 1
    d.r(CommonCfg.DEVICE_STATUS)


def _resume_then_notify(d: Raw) -> None:
    d.suspended()
    d.fn.on_status = None  # the device is slow to resume
    d.status(0x1F)
    d.notify(0)


def _queue_reset_then_reconfigure(d: Raw) -> None:
    d.live()
    d.fn.queue_reset_reads = 2
    d.w(CommonCfg.QUEUE_SELECT, 0)
    d.w(CommonCfg.QUEUE_RESET, 1)
    d.w(CommonCfg.QUEUE_SIZE, 8)


def _reenable_without_areas(d: Raw) -> None:
    d.live()
    d.w(CommonCfg.QUEUE_SELECT, 0)
    d.w(CommonCfg.QUEUE_RESET, 1)
    assert d.r(CommonCfg.QUEUE_RESET) == 0
    d.w(CommonCfg.QUEUE_SIZE, 8)
    d.w(CommonCfg.QUEUE_ENABLE, 1)


def _isr_with_msix(d: Raw) -> None:
    d.live()
    d.ck.config_write(d.fn.msix_cap + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE)
    d.ck.bar_read(QEMU_MODERN_BAR, QEMU_ISR_OFFSET, 1)


BREACHES: dict[str, Callable[[Raw], None]] = {
    "drv:status#1": lambda d: (d.reset(), d.status(0x02)),
    "drv:status#2": lambda d: (d.live(), d.r(CommonCfg.DEVICE_STATUS), d.status(0x0B)),
    "drv:status#3": lambda d: (d.negotiate(), d.status(0x8B), d.status(0x8F)),
    "drv:features#1": lambda d: d.negotiate(bit(Feature.VERSION_1) | bit(Feature.IN_ORDER)),
    "drv:features#2": lambda d: (d.reset(), d.status(0x01), d.status(0x03), d.accept(bit(Feature.VERSION_1))),
    "drv:features#3": lambda d: d.negotiate(bit(Feature.VERSION_1) | bit(3)),
    "drv:reset#1": lambda d: (d.status(0), d.status(0x01)),
    "drv:config-space#2": lambda d: (d.negotiate(), d.ck.bar_read(QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET, 4)),
    "drv:vq-reset#1": _queue_reset_then_reconfigure,
    "drv:vq-reenable#1": _reenable_without_areas,
    "drv:init#1": lambda d: (d.reset(), d.status(0x01), d.status(0x03), d.offer(), d.accept(bit(Feature.VERSION_1)),
                             d.status(0x0B), d.status(0x0F)),
    "drv:init#2": lambda d: (d.reset(), d.status(0x03 & 0x01), d.status(0x03),
                             d.ck.bar_write(QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET, 4, 1)),
    "drv:init#3": lambda d: (d.negotiate(), d.accept(bit(Feature.VERSION_1))),
    "drv:init#5": lambda d: (d.negotiate(), d.status(0x8B), d.queue()),
    "drv:init#6": lambda d: (d.negotiate(), d.queue(), d.notify(0)),
    "drv:suspend#1": lambda d: (d.negotiate(bit(Feature.VERSION_1)), d.queue(), d.status(0x0F), d.status(0x1F)),
    "drv:suspend#2": lambda d: (d.live(), d.status(0x1F), d.status(0x1F)),
    "drv:suspend#3": _ring_moves,
    "drv:suspend#4": lambda d: (d.suspended(), d.notify(0)),
    "drv:suspend#5": lambda d: (d.suspended(), d.ck.bar_write(QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET, 4, 1)),
    "drv:suspend#6": _resume_then_notify,
    "drv:reserved-features#1": lambda d: d.negotiate(bit(Feature.RING_RESET)),
    "drv:reserved-features#7": lambda d: d.negotiate(bit(Feature.VERSION_1) | bit(Feature.SR_IOV)),
    "drv:pci/layout#1": lambda d: d.ck.bar_read(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + CommonCfg.DEVICE_STATUS, 4),
    "drv:pci/caps#7": lambda d: d.ck.config_write(d.ck.cap_ranges[0][0] + 8, 4, 0),
    "drv:pci/common-cfg#1": lambda d: d.w(CommonCfg.NUM_QUEUES, 4),
    "drv:pci/common-cfg#3": lambda d: (d.negotiate(), d.queue(size=12)),
    "drv:pci/common-cfg#4": lambda d: (d.negotiate(), d.w(CommonCfg.QUEUE_SELECT, 0), d.w(CommonCfg.QUEUE_ENABLE, 1)),
    "drv:pci/common-cfg#5": lambda d: (d.negotiate(), d.status(0), d.w(CommonCfg.QUEUE_SELECT, 0)),
    "drv:pci/common-cfg#6": lambda d: (d.negotiate(), d.queue(enable=False), d.w(CommonCfg.QUEUE_ENABLE, 0)),
    "drv:pci/common-cfg#7": _queue_reset_then_reconfigure,
    "drv:pci/isr#1": _isr_with_msix,
    "drv:pci/msix#2": lambda d: (d.negotiate(), d.w(CommonCfg.CONFIG_MSIX_VECTOR, 9)),
    "drv:pci/msix#3": lambda d: (d.negotiate(), d.w(CommonCfg.CONFIG_MSIX_VECTOR, 0), d.w(CommonCfg.QUEUE_SELECT, 0)),
    "drv:pci/avail-notify#1": lambda d: (d.live(), d.notify(0, size=4)),
    "drv:pci/avail-notify#3": lambda d: (d.live(), d.w(CommonCfg.QUEUE_SELECT, 0), d.r(CommonCfg.QUEUE_NOTIFY_OFF),
                                         d.ck.bar_write(QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET, 2, 5)),
}


def test_every_checked_statement_has_a_breach() -> None:
    """The checker's list and the breaches below name the same statements."""
    assert sorted(BREACHES) == sorted(CHECKED)


@pytest.mark.parametrize("statement", sorted(BREACHES))
def test_the_checker_flags_a_breach(statement: str) -> None:
    """Each statement the checker watches is flagged, by its id, when a driver breaks it — and a clean
    initialization alone flags nothing."""
    clean = raw()
    clean.live()
    assert clean.ck.violations == []
    d = raw()
    BREACHES[statement](d)
    assert statement in d.ck.ids(), "\n".join(map(str, d.ck.violations)) or "nothing flagged"


# -- any order of operations ------------------------------------------------------------------------------------------

OPS = ("request", "read", "kick", "suspend", "resume", "freeze", "restore", "reset_vq", "enable_vq", "give_up",
       "slow_reset", "slow_queue_reset", "config_irq", "needs_reset")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(OPS), max_size=25))
@pytest.mark.spec(*CHECKED)
def test_any_sequence_of_driver_operations_breaks_no_statement(ops: list[str]) -> None:
    """Property (hypothesis) over the driver's phase state machine (:data:`~pyvirtio.guest.driver.PHASE_ALLOWS`):
    whatever the order in which a guest asks for requests, kicks, Device Suspend and resume, freeze and restore,
    queue resets, giving up on the device (FAILED), slow resets and DEVICE_NEEDS_RESET, every access the driver
    makes obeys the statements the checker watches; the only errors are driver errors (refusals, time-outs)."""
    fn, platform, alloc = _fake(queue_sizes=(16,))
    fn.on_status = acknowledge_suspend
    ck = DriverChecker(fn)
    drv = RngDriver(platform, ck, alloc, name="rng")
    drv.probe()
    for op in ops:
        try:
            if op == "request":
                drv.request(8)
            elif op == "read":
                drv.read(8, timeout=1_000_000)
            elif op == "kick":
                drv.kick(0) if drv.vqs else None
            elif op == "suspend":
                drv.suspend_bit(timeout=2_000_000)
            elif op == "resume":
                drv.resume_bit(timeout=2_000_000)
            elif op == "freeze":
                drv.freeze()
            elif op == "restore":
                drv.restore()
            elif op == "reset_vq":
                drv.reset_vq(0, timeout=5_000_000)
            elif op == "enable_vq":
                drv.enable_vq(0, 8)
            elif op == "give_up":
                drv._fail("the test gives up")
            elif op == "slow_reset":
                fn.reset_reads = 2
            elif op == "slow_queue_reset":
                fn.queue_reset_reads = 3
            elif op == "config_irq":
                platform.signal(fn, 0)
            elif op == "needs_reset":
                fn.status |= Status.DEVICE_NEEDS_RESET
        except DriverError:
            pass
    assert ck.finish() == [], "\n".join(map(str, ck.violations))

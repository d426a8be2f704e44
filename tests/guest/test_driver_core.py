"""The driver core against a fake PCI function (no device model): rcore virtio-drivers' FakeTransport style.

Every test runs :class:`~pyvirtio.guest.driver.VirtioDriver` (or the rng driver) over
:class:`~pyvirtio.guest.fake.FakeFunction` through the real :class:`~pyvirtio.guest.transport.PciTransport`,
and checks the registers the driver wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, DriverTimeout, InvalidStateError
from pyvirtio.guest.driver import TRANSPORT_FEATURES, DriverState, VirtioDriver
from pyvirtio.guest.fake import FakeFunction, FakePlatform, acknowledge_suspend
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.guest.rng import RngDriver
from pyvirtio.guest.transport import PciTransport
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    PCI_COMMAND,
    VIRTIO_MSI_NO_VECTOR,
    CommonCfg,
    DeviceId,
    Feature,
    PciCommand,
    Status,
    bit,
)
from pyvirtio.trace import Trace
from pyvirtio.virtqueue import RingLayout

PROBE = [0x00, 0x01, 0x03, 0x0B, 0x0F]  # reset, ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
OFFERED = (bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.SUSPEND)
           | bit(Feature.RING_PACKED) | bit(0) | bit(44))


@dataclass
class Rig:
    fn: FakeFunction
    platform: FakePlatform
    mem: GuestMemory
    alloc: GuestAllocator


def rig(**fn_kw: object) -> Rig:
    fn_kw.setdefault("features", OFFERED)
    fn = FakeFunction(**fn_kw)  # type: ignore[arg-type]
    mem = GuestMemory(1 << 20)
    return Rig(fn, FakePlatform(), mem, GuestAllocator(mem, 0x1000, 0x80000))


def driver(r: Rig, cls: type[VirtioDriver] = VirtioDriver, **kw: object) -> VirtioDriver:
    return cls(r.platform, r.fn, r.alloc, name="dev", **kw)  # type: ignore[arg-type]


def status_after(r: Rig, mark: int) -> list[int]:
    return r.fn.status_writes[mark:]


# -- probe: virtio 1.4 §3.1.1 ------------------------------------------------------------------------------------


@pytest.mark.spec("drv:status#1", "drv:init#1", "drv:features#2", "drv:features#3", "drv:reserved-features#1")
def test_probe_negotiates_the_features_both_sides_know() -> None:
    """virtio 1.4 §3.1.1 steps 1-8 (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, re-read, queues, DRIVER_OK);
    step 4: the driver writes back only the subset of offered bits it understands (not RING_PACKED, not an
    unknown device bit, not an unclaimed reserved bit)."""
    r = rig()
    drv = driver(r)
    drv.probe()
    assert r.fn.status_writes == PROBE
    want = OFFERED & (TRANSPORT_FEATURES | bit(Feature.SUSPEND))
    assert drv.features == r.fn.driver_features == want
    assert drv.probed and r.fn.status == 0x0F
    assert r.fn.writes(CommonCfg.DEVICE_FEATURE_SELECT) == [0, 1]


def test_probe_features_by_constructor() -> None:
    """``extra_features`` (a kernel extension's bit) and ``accept_suspend`` decide what the driver accepts."""
    r = rig()
    drv = driver(r, extra_features=bit(44), accept_suspend=False)
    drv.probe()
    assert drv.has(44) and not drv.has(Feature.SUSPEND)


@pytest.mark.spec("drv:features#4", "drv:init#4")
def test_probe_refuses_a_device_without_version_1() -> None:
    """virtio 1.4 §3.1.1: on failure the driver SHOULD set FAILED; a modern driver needs VERSION_1."""
    r = rig(features=bit(Feature.EVENT_IDX))
    with pytest.raises(DriverError, match="VERSION_1"):
        driver(r).probe()
    assert r.fn.status & Status.FAILED
    assert not any(v & Status.FEATURES_OK for v in r.fn.status_writes)


@pytest.mark.spec("drv:init#4", "drv:init#5")
def test_features_ok_refused_is_an_error_and_nothing_goes_live() -> None:
    """virtio 1.4 §3.1.1 step 6: FEATURES_OK not set on re-read means the device does not support the subset —
    the device is unusable: FAILED is set, DRIVER_OK never written, no queue enabled."""
    r = rig()
    r.fn.refuse_features_ok = True
    with pytest.raises(DriverError, match="refused features"):
        driver(r).probe()
    assert r.fn.status_writes[-1] & Status.FAILED
    assert not any(v & Status.DRIVER_OK for v in r.fn.status_writes)
    assert r.fn.writes(CommonCfg.QUEUE_ENABLE) == []


@pytest.mark.spec("drv:pci/common-cfg#4", "drv:pci/msix#3", "drv:pci/avail-notify#3")
def test_queue_setup_writes() -> None:
    """virtio 1.4 §4.1.5.1.3 (virtqueue configuration): select, size, the three areas (64-bit, lo/hi), vector
    (read back: §4.1.5.1.2), enable — before DRIVER_OK; MSI-X vector 0 for config, i+1 for queue i."""
    r = rig(queue_sizes=(256, 128))

    class Two(VirtioDriver):
        queue_sizes = (None, 16)

    drv = driver(r, Two)
    drv.probe()
    q0, q1 = r.fn.queues
    assert (q0.size, q1.size) == (256, 16)  # the device maximum, and the driver's smaller choice
    for q, vq, vector in ((q0, drv.vqs[0], 1), (q1, drv.vqs[1], 2)):
        lay = vq.layout
        assert (q.desc, q.driver, q.device) == (lay.desc, lay.avail, lay.used)
        assert lay == RingLayout.contiguous(lay.desc, q.size) and lay.desc % 4096 == 0
        assert q.enable == 1 and q.msix_vector == vector
    assert r.fn.config_vector == 0
    log = [a for a in r.fn.log if a.write]
    enable_at = max(i for i, a in enumerate(log) if a.offset == CommonCfg.QUEUE_ENABLE and a.space == "bar4")
    driver_ok_at = max(i for i, a in enumerate(log) if a.offset == CommonCfg.DEVICE_STATUS and a.space == "bar4")
    assert enable_at < driver_ok_at
    drv.vqs[1].add([(0x9000, 4)], [], "tok")
    drv.kick(1)
    assert r.fn.notifications == [1]


def test_queue_setup_without_msix_uses_intx_and_no_vectors() -> None:
    """``use_msix=False`` (``vp_find_vqs_intx``): no vector written, the INTx handler routed."""
    r = rig()
    drv = driver(r, use_msix=False)
    drv.probe()
    assert r.fn.writes(CommonCfg.QUEUE_MSIX_VECTOR) == [] and r.fn.writes(CommonCfg.CONFIG_MSIX_VECTOR) == []
    assert "dev" in r.platform.intx_handlers


@pytest.mark.spec("drv:pci/msix#3", "drv:init#4")
def test_refused_vector_is_an_error() -> None:
    """virtio 1.4 §4.1.5.1.2: a vector that reads back NO_VECTOR was not mapped; the driver must not go on."""
    r = rig()
    r.fn.refuse_vectors = True
    with pytest.raises(DriverError, match="vector not accepted"):
        driver(r).probe()
    assert r.fn.config_vector == VIRTIO_MSI_NO_VECTOR
    assert r.fn.status & Status.FAILED  # §3.1.1: the driver SHOULD set FAILED when it gives up


def test_interrupts_reach_the_callbacks_and_config_changes_wait_while_disabled() -> None:
    """MSI-X vector i+1 calls ``vq_callback(i)``; a config change while delivery is disabled is delivered when
    it is enabled again (Linux ``virtio_config_core_enable``)."""
    r = rig()
    seen: list[object] = []

    class Spy(VirtioDriver):
        def vq_callback(self, index: int) -> None:
            seen.append(index)

        def config_changed(self) -> None:
            seen.append("config")

    drv = driver(r, Spy)
    drv.probe()
    assert r.platform.signal(r.fn, 1) and seen == [0]
    drv.config_disable()
    r.platform.signal(r.fn, 0)
    assert seen == [0] and drv.config_change_pending
    drv.config_enable()
    assert seen == [0, "config"]


# -- the transport as a parameter ----------------------------------------------------------------------------------


def test_driver_takes_a_ready_transport() -> None:
    """``transport=``: the driver uses the transport it is given; a function and a transport together, or
    neither, is a programming error."""
    r = rig()
    t = PciTransport(r.fn, r.platform, "dev")
    drv = VirtioDriver(r.platform, None, r.alloc, name="dev", transport=t)
    assert drv.t is t
    drv.probe()
    assert r.fn.status == 0x0F
    with pytest.raises(TypeError):
        VirtioDriver(r.platform, r.fn, r.alloc, transport=t)
    with pytest.raises(TypeError):
        VirtioDriver(r.platform, None, r.alloc)


@pytest.mark.spec("drv:pci/discovery#1")
def test_wrong_device_id_is_refused() -> None:
    """A driver binds to its device id only (virtio 1.4 §4.1.2.1: PCI device id 0x1040 + virtio id)."""
    r = rig()
    r.fn = FakeFunction(DeviceId.GPU)
    with pytest.raises(DriverError, match="device id"):
        driver(r, RngDriver)


# -- freeze / restore: Linux virtio_device_freeze / virtio_device_restore -----------------------------------------


@pytest.mark.spec("drv:cleanup#2")
def test_freeze_register_sequence() -> None:
    """``virtio_pci_freeze``: config delivery off, the driver's .freeze (reset: write 0, virtio 1.4 §4.1.4.3.2),
    queues deleted (MSI-X disabled), then bus mastering off."""
    r = rig()
    drv = driver(r)
    drv.probe()
    mark = len(r.fn.status_writes)
    drv.freeze()
    assert status_after(r, mark) == [0x00]
    assert not drv.config_core_enabled and drv.vqs == []
    assert not r.fn.config_read(PCI_COMMAND, 2) & PciCommand.MASTER
    assert r.platform.msi_handlers == {}
    assert drv.alloc.allocations == 0  # ring memory released


@pytest.mark.parametrize("linux", [False, True], ids=["conforming", "linux-quirks"])
def test_restore_shares_the_init_sequence_and_does_not_renegotiate(linux: bool) -> None:
    """``virtio_device_restore``: reset first, then the same §3.1.1 sequence as probe with the features
    negotiated before — written again, no new negotiation — queues, DRIVER_OK. The conforming driver reads the
    offer to check it still holds those features (§2.2.1: validate the offer, accept only offered bits); Linux
    does not even read it."""
    r = rig()
    drv = driver(r, linux_quirks=linux)
    drv.probe()
    feats = r.fn.driver_features
    drv.freeze()
    mark_log, mark = len(r.fn.log), len(r.fn.status_writes)
    r.fn.features |= bit(Feature.RING_RESET)  # a new offer after the restore must not change anything
    drv.restore()
    assert status_after(r, mark) == PROBE
    assert r.fn.driver_features == feats == drv.features
    offer_read = [a for a in r.fn.log[mark_log:] if a.space == "bar4" and a.offset == CommonCfg.DEVICE_FEATURE]
    assert bool(offer_read) is not linux
    assert r.fn.config_read(PCI_COMMAND, 2) & PciCommand.MASTER
    assert r.fn.queues[0].enable == 1


@pytest.mark.spec("drv:features#1", "drv:features#2")
def test_restore_refuses_a_device_that_no_longer_offers_the_features() -> None:
    """§2.2.1: the driver MUST validate the offer and MUST NOT accept a feature the device does not offer: a
    device that lost a negotiated feature across the sleep is given up (FAILED) instead of being told to use
    it."""
    r = rig()
    drv = driver(r)
    drv.probe()
    drv.freeze()
    r.fn.features &= ~bit(Feature.EVENT_IDX)
    with pytest.raises(DriverError, match="no longer offers"):
        drv.restore()
    assert r.fn.status & Status.FAILED and drv.failed
    assert not r.fn.driver_features & ~r.fn.features  # nothing unoffered was written
    assert not any(v & Status.FEATURES_OK for v in status_after(r, len(r.fn.status_writes) - 4))


@pytest.mark.spec("drv:status#3", "drv:init#5")
def test_restore_of_a_failed_device_stops_after_failed() -> None:
    """Issue 9 defect 8. §2.1.1: if the driver sets FAILED it MUST reset the device before attempting to
    re-initialise; §3.1.1: after giving up it MUST NOT continue the initialization. A device that was FAILED at
    freeze is reset, shows ACKNOWLEDGE then FAILED again, and nothing more: no DRIVER, no features, no queue,
    no DRIVER_OK. Linux (``linux_quirks``) goes on initialising after FAILED: that mode is kept for the real-VM
    comparison and tested below."""
    r = rig()
    drv = driver(r)
    drv.probe()
    r.fn.status |= Status.FAILED
    drv.freeze()
    mark, mark_log = len(r.fn.status_writes), len(r.fn.log)
    drv.restore()
    assert status_after(r, mark) == [0x00, 0x01, 0x81]
    assert drv.failed and r.fn.queues[0].enable == 0
    assert not [a for a in r.fn.log[mark_log:] if a.write and a.space == "bar4"
                and a.offset in (CommonCfg.DRIVER_FEATURE, CommonCfg.QUEUE_ENABLE)]
    # the next attempt starts with a reset again (and stops again: the driver gave up on this device)
    mark = len(r.fn.status_writes)
    drv.restore()
    assert status_after(r, mark) == [0x00, 0x01, 0x81]


def test_restore_of_a_failed_device_linux_quirks_sets_failed_and_continues() -> None:
    """Linux ``virtio_device_restore`` (``linux_quirks=True``): a device that was FAILED at freeze gets FAILED
    again after ACKNOWLEDGE, and the initialization goes on (non-conforming: §3.1.1 MUST NOT continue)."""
    r = rig()
    drv = driver(r, linux_quirks=True)
    drv.probe()
    r.fn.status |= Status.FAILED
    drv.freeze()
    mark = len(r.fn.status_writes)
    drv.restore()
    assert status_after(r, mark) == [0x00, 0x01, 0x81, 0x83, 0x8B, 0x8F]
    assert r.fn.queues[0].enable == 1


def test_restore_without_hooks_sets_driver_ok_but_builds_no_queue() -> None:
    """A driver without .freeze/.restore: the core still runs the sequence, but no queue is re-created."""
    r = rig()

    class NoHooks(VirtioDriver):
        has_pm_hooks = False

    drv = driver(r, NoHooks)
    drv.probe()
    drv.freeze()
    drv.restore()
    assert r.fn.status == 0x0F and r.fn.queues[0].enable == 0


def test_rng_freeze_reclaims_requests_in_flight() -> None:
    """Linux virtio-rng ``remove_common``: reset, then every buffer still on the queue is detached and freed
    (``virtqueue_detach_unused_buf``); the request is lost, its memory back in the allocator."""
    r = rig()
    drv = driver(r, RngDriver)
    assert isinstance(drv, RngDriver)
    drv.probe()
    base = r.alloc.allocations
    req = drv.request(16)
    assert r.alloc.allocations == base + 1
    drv.freeze()
    assert drv.lost == [req] and drv.outstanding == [] and r.alloc.allocations == 0
    drv.restore()
    assert r.alloc.allocations == base


# -- Device Suspend (virtio 1.4) -------------------------------------------------------------------------------------


@pytest.mark.spec("drv:suspend#2", "drv:suspend#6")
def test_suspend_bit_polls_until_the_device_acknowledges() -> None:
    """Device Suspend: after setting SUSPEND the driver MUST poll until SUSPEND=1 and DRIVER_OK=0; to resume it
    writes DRIVER_OK and MUST wait until SUSPEND=0 and DRIVER_OK=1."""
    r = rig()
    drv = driver(r)
    drv.probe()
    r.fn.on_status = acknowledge_suspend
    drv.suspend_bit()
    assert r.fn.status == 0x1B and not drv.config_core_enabled
    drv.resume_bit()
    assert r.fn.status == 0x0F and drv.config_core_enabled
    assert r.fn.status_writes[-2:] == [0x1F, 0x1F]


@pytest.mark.spec("drv:suspend#2")
def test_suspend_bit_completes_when_the_device_gets_there_later() -> None:
    """The poll waits (virtual time) for a device that quiesces after 3 ms."""
    r = rig()
    drv = driver(r)
    drv.probe()
    r.platform.scheduler.schedule(3 * MS, lambda: setattr(r.fn, "status", 0x1B))
    drv.suspend_bit()
    assert r.platform.now == 3 * MS


def test_suspend_bit_times_out_with_no_device_behind() -> None:
    """A device that never acknowledges SUSPEND: the poll gives up after the time-out (DriverTimeout, Linux
    -ETIMEDOUT) in virtual time — nothing hangs, nothing sleeps."""
    r = rig()
    drv = driver(r)
    drv.probe()
    t0 = r.platform.now
    with pytest.raises(DriverTimeout, match="suspend did not complete"):
        drv.suspend_bit(timeout=7 * MS)
    assert r.platform.now - t0 == 7 * MS
    assert r.fn.status == 0x1F  # SUSPEND written, never acknowledged


@pytest.mark.spec("drv:suspend#1")
def test_suspend_bit_needs_reset_and_negotiation() -> None:
    """Device Suspend: a device that cannot suspend MUST set DEVICE_NEEDS_RESET (the driver reports it); the
    driver SHOULD NOT set SUSPEND unless VIRTIO_F_SUSPEND was negotiated."""
    r = rig()
    drv = driver(r)
    drv.probe()
    r.fn.on_status = lambda old, new: new | Status.DEVICE_NEEDS_RESET
    with pytest.raises(DriverError, match="DEVICE_NEEDS_RESET"):
        drv.suspend_bit()
    assert drv.needs_reset_seen
    r2 = rig()
    drv2 = driver(r2, accept_suspend=False)
    drv2.probe()
    with pytest.raises(DriverError, match="not negotiated"):
        drv2.suspend_bit()
    assert r2.fn.status_writes == PROBE


# -- the guest kernel's feature bits: constructor, not patching ------------------------------------------------------


@dataclass
class Board:
    memory: GuestMemory
    trace: Trace


def test_bind_checks_the_kernel_features_instead_of_patching() -> None:
    """``KernelConfig.driver_features``: a freeze_mode kernel's drivers offer its bit. A driver built with the
    bit negotiates it; one built without it is refused, and bind never patches the driver."""
    kernel = KernelConfig(freeze_mode=True, freeze_mode_bit=44)
    assert kernel.driver_features() == bit(44) and KernelConfig().driver_features() == 0
    r = rig()
    guest = Guest(Board(r.mem, Trace(r.platform)), kernel, heap_base=0x1000, heap_size=0x80000)
    good = guest.bind(VirtioDriver(r.platform, r.fn, guest.alloc, name="a", extra_features=kernel.driver_features()))
    assert good.has(44)
    with pytest.raises(DriverError, match="needs 0x100000000000"):
        guest.bind(VirtioDriver(r.platform, rig().fn, guest.alloc, name="b", extra_features=0))
    plain = VirtioDriver(r.platform, rig().fn, guest.alloc, name="c")
    with pytest.raises(DriverError, match="needs 0x100000000000"):
        guest.bind(plain, probe=False)
    assert plain.extra_features == 0


def test_driver_state_strict_and_core_parsing() -> None:
    """``DriverState.from_dict`` is strict (an unknown key is refused); ``VirtioDriver.load_state`` parses only
    the core keys and leaves the others to the subclass that owns them; the loaded driver counts as probed."""
    st = DriverState(bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX), False, True)
    assert DriverState.from_dict(st.to_dict()) == st
    with pytest.raises(InvalidStateError, match="unknown fields \\['gpu'\\]"):
        DriverState.from_dict({**st.to_dict(), "gpu": {}})
    r = rig()
    drv = driver(r)
    mark = len(r.fn.log)
    drv.load_state({**st.to_dict(), "gpu": {}})
    assert drv.state() == st and drv.probed and r.fn.log[mark:] == []  # loading touches no register

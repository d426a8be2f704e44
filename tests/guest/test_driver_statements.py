"""Driver statements of virtio 1.4 checked one by one over a fake PCI function (and a machine where a device has
to answer): discovery, capabilities, the common configuration, MSI-X, configuration space, features,
initialization order, cleanup and Device Suspend. Each test names its statements."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from pyvirtio.devices import Gpu
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError
from pyvirtio.guest.driver import Action, DriverPhase, SubmissionsStopped, VirtioDriver
from pyvirtio.guest.fake import FakeFunction, FakePlatform, acknowledge_suspend
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.guest.transport import TRANSITIONAL_DEVICE_IDS, PciTransport, virtio_device_id, walk_capabilities
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    PCI_VENDOR_ID,
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFFSET,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
    CommonCfg,
    DeviceId,
    Feature,
    GpuCfg,
    GpuFeature,
    Status,
    VirtioPciCap,
    bit,
)

BAR = f"bar{QEMU_MODERN_BAR}"
OFFER = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.RING_RESET) | bit(Feature.SUSPEND)


@dataclass
class Rig:
    fn: FakeFunction
    platform: FakePlatform
    mem: GuestMemory
    alloc: GuestAllocator


def rig(**kw: object) -> Rig:
    kw.setdefault("features", OFFER)
    fn = FakeFunction(**kw)  # type: ignore[arg-type]
    mem = GuestMemory(1 << 20)
    return Rig(fn, FakePlatform(), mem, GuestAllocator(mem, 0x1000, 0x80000))


def common_accesses(fn: FakeFunction, since: int = 0) -> list[tuple[bool, int, int, int]]:
    """``(write, offset in common config, size, value)`` since log index ``since``."""
    return [(a.write, a.offset - QEMU_COMMON_OFFSET, a.size, a.value) for a in fn.log[since:]
            if a.space == BAR and QEMU_COMMON_OFFSET <= a.offset < QEMU_COMMON_OFFSET + 0x1000]


# -- discovery (§4.1.2.2) --------------------------------------------------------------------------------------------


@pytest.mark.spec("drv:pci/discovery#1", "drv:pci/discovery#2")
def test_ids_a_driver_matches() -> None:
    """§4.1.2.2: vendor 0x1AF4 with device id 0x1040 + virtio id (0x1040..0x107F), plus the transitional ids of
    the listed types; another vendor, or an id outside both, is no virtio device."""
    assert virtio_device_id(0x1AF4, 0x1044) == DeviceId.ENTROPY
    assert virtio_device_id(0x1AF4, 0x1050) == DeviceId.GPU
    assert virtio_device_id(0x1AF4, 0x107F) == 0x3F
    assert virtio_device_id(0x1AF4, 0x1005) == DeviceId.ENTROPY
    assert {virtio_device_id(0x1AF4, t) for t in TRANSITIONAL_DEVICE_IDS} == {1, 2, 3, 4, 5, 8, 9}
    for vendor, device in ((0x8086, 0x1044), (0x1AF4, 0x1080), (0x1AF4, 0x1006), (0x1AF4, 0x103F)):
        assert virtio_device_id(vendor, device) is None
    r = rig()
    r.fn.cfg[PCI_VENDOR_ID] = 0x86
    with pytest.raises(DriverError, match="not a virtio"):
        PciTransport(r.fn, r.platform)


@pytest.mark.spec("drv:pci/discovery#3")
@pytest.mark.parametrize("revision", [0, 1, 0x7F, 0xFF])
def test_any_revision_id_is_matched(revision: int) -> None:
    """§4.1.2.2: drivers MUST match any PCI Revision ID value."""
    r = rig(revision=revision)
    drv = RngDriver(r.platform, r.fn, r.alloc)
    drv.probe()
    assert r.fn.status == 0x0F


# -- capabilities (§4.1.4.1) -----------------------------------------------------------------------------------------


@pytest.mark.spec("drv:pci/caps#1")
def test_reserved_cfg_types_are_skipped() -> None:
    """§4.1.4.1: the driver MUST ignore a vendor capability whose cfg_type is reserved: a first "COMMON" turned
    into reserved type 0x7F is skipped and the next COMMON_CFG used."""
    r = rig()
    common = next(c for c in walk_capabilities(r.fn)
                  if getattr(c, "cfg_type", None) == VirtioPciCap.COMMON_CFG)
    r.fn.cfg[common.pos + 3] = 0x7F
    r.fn.add_virtio_capability(VirtioPciCap.COMMON_CFG, QEMU_MODERN_BAR, QEMU_COMMON_OFFSET, 64)
    t = PciTransport(r.fn, r.platform)
    assert t.common is not None and t.common.offset == QEMU_COMMON_OFFSET
    RngDriver(r.platform, None, r.alloc, transport=t).probe()
    assert r.fn.status == 0x0F


@pytest.mark.spec("drv:pci/caps#3", "drv:pci/caps#5", "drv:pci/caps#6", "drv:config-space#3")
def test_long_capabilities_and_large_structures_are_fine() -> None:
    """§4.1.4.1: the driver MUST accept a cap_len larger than the structure it knows and MUST handle an
    unexpectedly large structure length, mapping only what it needs (§2.5.1: never limiting the structure
    size): a 0x40-byte COMMON capability, 4 KiB structures; the driver works and reads no device-config byte it
    does not use (the rng reads none)."""
    r = rig(device_config=bytes(4096))
    common = next(c for c in walk_capabilities(r.fn) if getattr(c, "cfg_type", None) == VirtioPciCap.COMMON_CFG)
    r.fn.cfg[common.pos + 2] = 0x40  # cap_len
    r.fn.cfg[common.pos + 12: common.pos + 16] = (0x1000).to_bytes(4, "little")  # length
    t = PciTransport(r.fn, r.platform)
    assert t.common is not None and t.common.length == 0x1000
    assert t.device_cfg is not None and t.device_cfg.length == 4096
    drv = RngDriver(r.platform, None, r.alloc, transport=t)
    drv.probe()
    drv.request(8)
    assert r.fn.status == 0x0F
    assert not [a for a in r.fn.log if a.space == BAR and QEMU_DEVICE_OFFSET <= a.offset < QEMU_DEVICE_OFFSET + 4096]


@pytest.mark.spec("drv:pci/caps#6", "drv:config-space#4")
def test_structures_too_small_for_what_the_driver_uses_are_refused() -> None:
    """§4.1.4.1: the driver MAY check that a structure is large enough (§2.5.1: it SHOULD only check that):
    a COMMON_CFG too short for the virtio 1.0 fields is not usable; a GPU whose device configuration lacks
    blob_alignment while offering BLOB_ALIGNMENT fails its set-up cleanly (DriverError, FAILED)."""
    r = rig()
    common = next(c for c in walk_capabilities(r.fn) if getattr(c, "cfg_type", None) == VirtioPciCap.COMMON_CFG)
    r.fn.cfg[common.pos + 12] = 0x20
    with pytest.raises(DriverError, match="lacks a COMMON"):
        PciTransport(r.fn, r.platform)
    g = rig(device_id=DeviceId.GPU, queue_sizes=(64, 64), device_config=struct.pack("<IIII", 0, 0, 1, 0),
            features=bit(Feature.VERSION_1) | bit(GpuFeature.RESOURCE_BLOB) | bit(GpuFeature.BLOB_ALIGNMENT))
    with pytest.raises(DriverError, match="beyond the structure"):
        GpuDriver(g.platform, g.fn, g.alloc).probe()
    assert g.fn.status & Status.FAILED


# -- common configuration (§4.1.4.3.2) ------------------------------------------------------------------------------


@pytest.mark.spec("drv:pci/common-cfg#1", "drv:pci/common-cfg#6")
def test_transport_never_writes_read_only_fields_nor_a_zero_queue_enable() -> None:
    """§4.1.4.3.2: the driver MUST NOT write device_feature, num_queues, config_generation, queue_notify_off or
    queue_notif_config_data, nor 0 to queue_enable: the transport refuses (a driver bug) and nothing is
    written."""
    r = rig()
    t = PciTransport(r.fn, r.platform)
    for f in (CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
              CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_NOTIF_CONFIG_DATA):
        with pytest.raises(ValueError, match="never writes"):
            t.write(f, 1)
    with pytest.raises(ValueError, match="queue_enable"):
        t.write(CommonCfg.QUEUE_ENABLE, 0)
    assert not [a for a in common_accesses(r.fn) if a[0]]


@pytest.mark.spec("drv:pci/common-cfg#3")
def test_queue_size_written_is_a_power_of_two() -> None:
    """§4.1.4.3.2: without RING_PACKED the driver MUST NOT write a queue_size that is not a power of 2: a device
    whose maximum is 100 gets 64."""
    r = rig(queue_sizes=(100,))
    drv = RngDriver(r.platform, r.fn, r.alloc)
    drv.probe()
    assert r.fn.writes(CommonCfg.QUEUE_SIZE) == [64] and drv.vqs[0].num_max == 64
    with pytest.raises(ValueError, match="power of 2"):
        drv.t.setup_queue(0, 100, 0x1000, 0x2000, 0x3000, VIRTIO_MSI_NO_VECTOR)


@pytest.mark.spec("drv:pci/common-cfg#5", "drv:reset#1")
def test_a_slow_reset_is_waited_for_before_anything_else() -> None:
    """§4.1.4.3.2: after writing 0 the driver MUST wait for a read of 0 before re-initialising; §2.4.2: it
    SHOULD consider the reset complete only then. The device takes five reads: the driver keeps reading (virtual
    time passes) and writes nothing until it read 0."""
    r = rig()
    drv = RngDriver(r.platform, r.fn, r.alloc)
    drv.probe()
    r.fn.reset_reads = 5
    mark = len(r.fn.log)
    drv.freeze()
    drv.restore()
    log = common_accesses(r.fn, mark)
    zero_write = next(i for i, a in enumerate(log) if a[0] and a[1] == CommonCfg.DEVICE_STATUS and a[3] == 0)
    status_reads = [a for a in log[zero_write:] if not a[0] and a[1] == CommonCfg.DEVICE_STATUS]
    assert [a[3] for a in status_reads[:6]] == [0x0F] * 5 + [0]
    first_zero = zero_write + 1 + next(i for i, a in enumerate(log[zero_write + 1:])
                                       if not a[0] and a[1] == CommonCfg.DEVICE_STATUS and a[3] == 0)
    assert not [a for a in log[zero_write + 1:first_zero] if a[0]]
    assert r.fn.status == 0x0F and r.platform.now > 0


# -- MSI-X (§4.1.5.1.2.2), ISR, notifications -----------------------------------------------------------------------


@pytest.mark.spec("drv:pci/msix#1", "drv:pci/msix#2", "drv:pci/msix#3")
@pytest.mark.parametrize("vectors", [0, 1, 2, 3, 64, 2048])
def test_every_msix_table_size_is_handled(vectors: int) -> None:
    """§4.1.5.1.2.2: the driver MUST handle any MSI-X Table Size (none, 1 .. 0x800 entries), never routes an event
    to a vector beyond the table, and reads every vector back. The rng needs 2 vectors: with fewer it falls back
    to INTx and writes no vector."""
    r = rig(msix_vectors=vectors)
    drv = RngDriver(r.platform, r.fn, r.alloc, name="rng")
    drv.probe()
    assert r.fn.status == 0x0F
    written = r.fn.writes(CommonCfg.CONFIG_MSIX_VECTOR) + r.fn.writes(CommonCfg.QUEUE_MSIX_VECTOR)
    if vectors >= 2:
        assert written == [0, 1] and r.fn.msix_entry(1)[2] is False and "rng" not in r.platform.intx_handlers
    else:
        assert written == [] and "rng" in r.platform.intx_handlers
    assert all(v < max(vectors, 1) for v in written)
    log = common_accesses(r.fn)
    for i, (write, off, _, _) in enumerate(log):
        if write and off in (CommonCfg.CONFIG_MSIX_VECTOR, CommonCfg.QUEUE_MSIX_VECTOR):
            assert log[i + 1][:2] == (False, off)  # read back at once


@pytest.mark.spec("drv:pci/isr#1")
def test_no_isr_read_for_a_queue_interrupt_with_msix() -> None:
    """§4.1.4.5.2: with MSI-X enabled the driver SHOULD NOT read the ISR when handling a queue interrupt."""
    r = rig()
    seen: list[int] = []

    class Spy(RngDriver):
        def vq_callback(self, index: int) -> None:
            seen.append(index)

    drv = Spy(r.platform, r.fn, r.alloc)
    drv.probe()
    mark = len(r.fn.log)
    assert r.platform.signal(r.fn, 1) and seen == [0]
    assert not [a for a in r.fn.log[mark:] if a.space == BAR and a.offset == QEMU_ISR_OFFSET]


@pytest.mark.spec("drv:pci/config-notify#1")
def test_one_intx_interrupt_for_config_change_and_used_buffers() -> None:
    """§4.1.5.4.2: the driver MUST handle one interrupt that signals both a configuration change and used
    buffers: with INTx and ISR = QUEUE|CONFIG, both the configuration handler and the queue callback run, and
    the ISR read clears it."""
    r = rig()
    seen: list[object] = []

    class Spy(VirtioDriver):
        def vq_callback(self, index: int) -> None:
            seen.append(index)

        def config_changed(self) -> None:
            seen.append("config")

    drv = Spy(r.platform, r.fn, r.alloc, name="dev", use_msix=False)
    drv.probe()
    r.fn.isr = VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG
    r.platform.intx_handlers["dev"]()
    assert seen == ["config", 0] and r.fn.isr == 0
    r.platform.intx_handlers["dev"]()  # shared line, not ours: nothing
    assert seen == ["config", 0]


@pytest.mark.spec("drv:pci/avail-notify#1", "drv:pci/avail-notify#3", "drv:pci/layout#1")
def test_notifications_are_16_bit_queue_indexes_and_accesses_are_naturally_sized() -> None:
    """§4.1.5.2.1: without NOTIFICATION_DATA / NOTIF_CONFIG_DATA each notification is a 16-bit write of the queue
    index; §4.1.3.1: every common-configuration access has the field's width and alignment (64-bit fields as
    two 32-bit halves)."""
    r = rig(queue_sizes=(8, 8, 8))

    class Three(VirtioDriver):
        queue_sizes = (None, None, None)

    drv = Three(r.platform, r.fn, r.alloc, name="dev")
    drv.probe()
    for i in (2, 0, 1):
        drv.vqs[i].add([(0x9000, 4)], [], "t")
        drv.kick(i)
    notes = [a for a in r.fn.log if a.space == BAR and QEMU_NOTIFY_OFFSET <= a.offset < QEMU_NOTIFY_OFFSET + 0x1000]
    assert [(a.size, a.value, a.offset - QEMU_NOTIFY_OFFSET) for a in notes] == [(2, 2, 8), (2, 0, 0), (2, 1, 4)]
    for _, off, size, _ in common_accesses(r.fn):
        assert COMMON_CFG_WIDTH[off] == size and off % size == 0
    with pytest.raises(ValueError, match=r"§4\.1\.3\.1"):
        drv.t.config_read(2, 4)


# -- features (§2.2.1, §6.1) ----------------------------------------------------------------------------------------


@pytest.mark.spec("drv:features#5", "drv:features#3", "drv:reserved-features#1", "drv:reserved-features#7")
def test_every_bit_offered_is_no_reason_to_fail() -> None:
    """§2.2.1: the driver MUST NOT fail because the device offers features it does not understand, and MUST NOT
    accept those; §6.1: it accepts VERSION_1 and never SR_IOV (no SR-IOV capability). All 64 bits offered: the
    driver probes and accepts exactly the bits it knows."""
    r = rig(features=(1 << 64) - 1)
    drv = RngDriver(r.platform, r.fn, r.alloc)
    drv.probe()
    assert r.fn.status == 0x0F
    known = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET) \
        | bit(Feature.SUSPEND)
    assert r.fn.driver_features == drv.features == known
    assert not drv.has(Feature.SR_IOV) and drv.has(Feature.VERSION_1)


# -- configuration space (§2.5.1) -----------------------------------------------------------------------------------


class GpuSetupOnly(GpuDriver):
    """The GPU driver up to DRIVER_OK (the fake has no device to answer display commands)."""

    def init_display(self) -> None:
        pass


@pytest.mark.spec("drv:config-space#1")
def test_multi_field_reads_retry_while_the_generation_changes() -> None:
    """§2.5.1: reads of several fields are not atomic: the driver reads config_generation before and after and
    reads again while it changed. The device changes num_scanouts (and the generation) during the first read:
    the driver retries and uses the consistent second values."""
    r = rig(device_id=DeviceId.GPU, queue_sizes=(64, 64), device_config=struct.pack("<IIIII", 0, 0, 1, 0, 4096),
            features=bit(Feature.VERSION_1))
    fn = r.fn
    orig = fn._bar_read
    changed = []

    def racing(bar: int, offset: int, size: int, ones: int) -> int:
        value = orig(bar, offset, size, ones)
        if offset == QEMU_DEVICE_OFFSET + GpuCfg.NUM_SCANOUTS and not changed:
            changed.append(True)
            fn.device_config[GpuCfg.NUM_SCANOUTS] = 2
            fn.generation += 1
        return value

    fn._bar_read = racing  # type: ignore[method-assign]
    drv = GpuSetupOnly(r.platform, fn, r.alloc)
    drv.probe()
    assert drv.num_scanouts == 2
    gen_reads = [a for a in fn.log if a.space == BAR and a.offset == QEMU_COMMON_OFFSET + CommonCfg.CONFIG_GENERATION]
    assert len(gen_reads) == 4


@pytest.mark.spec("drv:gpu/controlq#1")
def test_blob_sizes_are_multiples_of_blob_alignment() -> None:
    """§5.7.6.8.1: with BLOB_ALIGNMENT negotiated, RESOURCE_CREATE_BLOB's size MUST be a multiple of
    blob_alignment: a 1000-byte blob on a device asking for 64 KiB alignment is created with 64 KiB."""
    m = Machine(64 << 20, seed=1)
    dev = Gpu(num_scanouts=1, width=64, height=48, blob_alignment_bytes=1 << 16)
    drv = GpuDriver(m, m.plug(dev), GuestAllocator(m.memory, 1 << 20, 40 << 20))
    drv.probe()
    assert drv.has_blob_alignment and drv.blob_alignment == 1 << 16
    obj = drv.create_blob(1000)
    assert obj.blob is not None and obj.blob.size == 1 << 16
    blob = dev.resources[obj.id].blob
    assert blob is not None and blob.size == 1 << 16 and not drv.errors


# -- initialization (§3.1.1) ----------------------------------------------------------------------------------------


@pytest.mark.spec("drv:init#6")
def test_a_kick_before_driver_ok_is_held_until_the_device_is_live() -> None:
    """§3.1.1: the driver MUST NOT send an available-buffer notification before DRIVER_OK: a buffer added and
    kicked during set-up (step 7) is notified only after DRIVER_OK is written."""
    r = rig()
    order: list[str] = []

    class Early(RngDriver):
        def setup(self) -> None:
            super().setup()
            self.vqs[0].add([], [(0x9000, 8)], "early")
            self.kick(0)
            order.append(f"kicked, {len(r.fn.notifications)} sent")

    Early(r.platform, r.fn, r.alloc).probe()
    assert order == ["kicked, 0 sent"] and r.fn.notifications == [0]
    status_at = max(i for i, a in enumerate(r.fn.log) if a.write and a.offset == CommonCfg.DEVICE_STATUS)
    notify_at = max(i for i, a in enumerate(r.fn.log) if a.write and a.offset >= QEMU_NOTIFY_OFFSET)
    assert r.fn.log[status_at].value & Status.DRIVER_OK and status_at < notify_at


@pytest.mark.spec("drv:init#2", "drv:init#3")
def test_no_config_write_while_negotiating_and_no_features_after_features_ok() -> None:
    """§3.1.1 step 4: the driver MAY read but MUST NOT write device configuration while negotiating; step 5:
    no new feature bits after FEATURES_OK. The driver refuses both (its phase says so) and writes nothing."""
    r = rig(device_config=bytes(8))
    drv = VirtioDriver(r.platform, r.fn, r.alloc, name="dev")
    drv.t.enable_device()
    drv.reset_device()
    drv.t.add_status(Status.ACKNOWLEDGE | Status.DRIVER)
    drv.phase = DriverPhase.NEGOTIATING
    with pytest.raises(DriverError, match="negotiating"):
        drv.write_config(0, 4, 1)
    drv.probe()
    mark = len(r.fn.log)
    with pytest.raises(DriverError, match="write driver features"):
        drv._require(Action.WRITE_FEATURES)
    drv.write_config(0, 4, 7)  # live: allowed
    assert r.fn.device_config[:4] == (7).to_bytes(4, "little") and len(r.fn.log) == mark + 1
    assert r.fn.writes(CommonCfg.DRIVER_FEATURE) == [r.fn.driver_features & 0xFFFFFFFF, r.fn.driver_features >> 32]


# -- cleanup (§3.3.1) --------------------------------------------------------------------------------------------------


@pytest.mark.spec("drv:cleanup#1", "drv:cleanup#2")
def test_exposed_buffers_are_left_alone_until_the_reset_read_back_0() -> None:
    """§3.3.1: the driver MUST NOT alter the entries of buffers exposed on a live queue, and reclaims them only
    after a reset made the queue non-live. At the moment the reset is seen complete, the descriptor table and
    the available ring are exactly as they were when the buffers were exposed; the tokens are handed back
    after it."""
    r = rig()
    events: list[str] = []

    class Watch(RngDriver):
        def reclaim_unused(self, token: object) -> None:
            events.append("reclaim")
            super().reclaim_unused(token)

    drv = Watch(r.platform, r.fn, r.alloc)
    drv.probe()
    for n in (8, 16, 32):
        drv.request(n)
    lay = drv.vqs[0].layout
    rings = (r.mem.read(lay.desc, 16 * lay.size), r.mem.read(lay.avail, 4 + 2 * lay.size))
    orig = r.fn._common_read

    def watch(off: int, size: int) -> int:
        v = orig(off, size)
        if off == CommonCfg.DEVICE_STATUS and v == 0 and not events:
            events.append("reset seen")
            assert (r.mem.read(lay.desc, 16 * lay.size), r.mem.read(lay.avail, 4 + 2 * lay.size)) == rings
        return v

    r.fn._common_read = watch  # type: ignore[method-assign]
    drv.freeze()
    assert events == ["reset seen", "reclaim", "reclaim", "reclaim"]


# -- Device Suspend ----------------------------------------------------------------------------------------------------


@pytest.mark.spec("drv:suspend#3", "drv:suspend#4", "drv:suspend#5")
def test_suspended_driver_adds_notifies_and_configures_nothing() -> None:
    """Device Suspend: once SUSPEND is written the driver MUST NOT make buffers available, send notifications or
    change device configuration (other than device status): each is refused or held, nothing reaches the
    device; after the resume it all works."""
    r = rig(device_config=bytes(8))
    drv = RngDriver(r.platform, r.fn, r.alloc, name="rng")
    drv.probe()
    r.fn.on_status = acknowledge_suspend
    drv.suspend_bit()
    mark = len(r.fn.log)
    with pytest.raises(SubmissionsStopped):
        drv.request(8)
    with pytest.raises(SubmissionsStopped):
        drv.add_buffer(0, [], [(0x9000, 8)], "x")
    with pytest.raises(SubmissionsStopped):
        drv.write_config(0, 4, 1)
    drv.kick(0)
    assert [a for a in r.fn.log[mark:] if a.write] == [] and r.fn.notifications == []
    assert drv.vqs[0].avail_idx == 0
    drv.resume_bit()
    drv.request(8)
    drv.write_config(0, 4, 1)
    assert r.fn.notifications == [0]

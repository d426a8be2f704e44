"""Issue 9, driver side: the defects of pyvirtio's guest driver, each with the statement it broke.

Each test here failed before its fix (run against the tree before issue 9's driver work):
queue reset (defect 1), the restore of a FAILED device and FAILED on a failed set-up (8), GPU submissions while
suspended (9), feature dependencies and the transitional entropy id (10), the 2^32-byte chain limit and waits that
ignored DEVICE_NEEDS_RESET (11). Queue reset is also a hypothesis property over scripted ``queue_reset`` reads.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.clock import MS
from pyvirtio.conformance.driver_monitor import DriverMonitor
from pyvirtio.devices import Gpu, Rng
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.driver import DeviceNeedsReset, DriverPhase, SubmissionsStopped, VirtioDriver
from pyvirtio.guest.fake import FakeFunction, FakePlatform, acknowledge_suspend
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.rng import RngDriver, RngRequest
from pyvirtio.guest.transport import PciTransport
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    QEMU_COMMON_OFFSET,
    QEMU_MODERN_BAR,
    VIRTIO_MSI_NO_VECTOR,
    CommonCfg,
    DeviceId,
    Feature,
    GpuCfg,
    GpuFeature,
    Status,
    bit,
)
from pyvirtio.virtqueue.driver import CHAIN_BYTES_MAX, DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

OFFER = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.RING_RESET) | bit(Feature.SUSPEND)
HEAP = (1 << 20, 40 << 20)


def fake(**kw: object) -> tuple[FakeFunction, FakePlatform, GuestAllocator]:
    kw.setdefault("features", OFFER)
    fn = FakeFunction(**kw)  # type: ignore[arg-type]
    mem = GuestMemory(1 << 20)
    return fn, FakePlatform(), GuestAllocator(mem, 0x1000, 0x80000)


def machine_rng(**dev_kw: object) -> tuple[Machine, Rng, RngDriver]:
    m = Machine(64 << 20, seed=1)
    dev = Rng(**dev_kw)  # type: ignore[arg-type]
    drv = RngDriver(m, m.plug(dev), GuestAllocator(m.memory, *HEAP), name="rng")
    drv.probe()
    return m, dev, drv


def queue_log(fn: FakeFunction, since: int) -> list[tuple[str, CommonCfg, int]]:
    """``(r|w, field, value)`` of every common-configuration access since log index ``since``."""
    out = []
    for a in fn.log[since:]:
        if a.space == f"bar{QEMU_MODERN_BAR}" and QEMU_COMMON_OFFSET <= a.offset < QEMU_COMMON_OFFSET + 0x40:
            out.append(("w" if a.write else "r", CommonCfg(a.offset - QEMU_COMMON_OFFSET), a.value))
    return out


# -- defect 1: the driver can reset and re-enable a queue -------------------------------------------------------


class Recorder(RngDriver):
    """An rng driver that records what ``reclaim_unused`` is handed."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.reclaimed: list[object] = []

    def reclaim_unused(self, token: object) -> None:
        self.reclaimed.append(token)
        super().reclaim_unused(token)


@pytest.mark.spec("drv:vq-reset#1", "drv:pci/common-cfg#7", "drv:cleanup#2")
def test_reset_vq_polls_queue_reset_until_it_reads_0_then_detaches() -> None:
    """Defect 1. §2.6.1.1.2: after telling the device to reset a queue the driver MUST verify the reset happened;
    §4.1.4.3.2: it MUST NOT consider it complete until ``queue_reset`` reads back 0. The device here keeps it at 1
    for five reads: the driver writes 1 once, keeps reading (selecting the queue each time), touches no queue
    register meanwhile, and only then detaches the buffer it had exposed (§3.3.1: reclaimed once not live)."""
    fn, platform, alloc = fake()
    drv = Recorder(platform, fn, alloc, name="rng")
    drv.probe()
    req = drv.request(16)
    fn.queue_reset_reads = 5
    mark = len(fn.log)
    tokens = drv.reset_vq(0)
    log = queue_log(fn, mark)
    assert fn.queue_resets == [0]
    resets = [v for op, f, v in log if f == CommonCfg.QUEUE_RESET]
    assert resets[0] == 1 and resets[1:] == [1] * 5 + [0]
    first_zero = max(i for i, (op, f, v) in enumerate(log) if f == CommonCfg.QUEUE_RESET)
    assert not [x for x in log[:first_zero] if x[0] == "w" and x[1] not in (CommonCfg.QUEUE_SELECT,
                                                                            CommonCfg.QUEUE_RESET)]
    assert tokens == [req] and drv.reclaimed == [req] and drv.lost == [req] and drv.outstanding == []
    assert fn.queues[0].enable == 0 and 0 in drv.reset_queues
    with pytest.raises(DriverError, match="not set up"):
        drv.request(8)


@pytest.mark.spec("drv:vq-reenable#1", "drv:pci/common-cfg#4")
def test_enable_vq_programs_the_queue_as_at_discovery() -> None:
    """Defect 1. §2.6.1.2.2: re-enabling, the driver MUST configure the queue as during initial discovery,
    optionally with other parameters: size, the three areas, the vector read back, then queue_enable — here the
    same registers as at probe, and with a smaller size new rings."""
    fn, platform, alloc = fake(queue_sizes=(64,))
    drv = RngDriver(platform, fn, alloc, name="rng")
    drv.probe()
    q = fn.queues[0]
    first = (q.size, q.desc, q.driver, q.device, q.msix_vector)
    drv.reset_vq(0)
    mark = len(fn.log)
    drv.enable_vq(0)
    assert (q.size, q.desc, q.driver, q.device, q.msix_vector, q.enable) == (*first, 1)
    writes = [f for op, f, _ in queue_log(fn, mark) if op == "w" and f != CommonCfg.QUEUE_SELECT]
    assert writes[-1] == CommonCfg.QUEUE_ENABLE and CommonCfg.QUEUE_SIZE in writes
    drv.reset_vq(0)
    vq = drv.enable_vq(0, 16)
    assert q.size == vq.num_max == 16 and q.desc == vq.layout.desc != first[1] and q.enable == 1
    assert drv.request(8) in drv.outstanding and fn.notifications == [0]


@pytest.mark.spec("drv:vq-reset#1")
def test_reset_vq_that_never_completes_times_out_and_keeps_the_buffers_exposed() -> None:
    """§2.6.1.1.2 / §4.1.4.3.2: a queue reset that never reads 0 is never taken as done: DriverTimeout, and the
    buffers stay exposed (not reclaimed, §3.3.1) — the queue is unusable until a device reset."""
    fn, platform, alloc = fake()
    drv = RngDriver(platform, fn, alloc, name="rng")
    drv.probe()
    req = drv.request(16)
    fn.queue_reset_reads = -1
    with pytest.raises(DriverTimeout, match="reset did not complete"):
        drv.reset_vq(0, timeout=5 * MS)
    assert drv.outstanding == [req] and drv.lost == [] and drv.vqs[0].in_flight == 1


def test_reset_vq_needs_ring_reset_negotiated() -> None:
    """§2.6.1: a queue is reset individually only when VIRTIO_F_RING_RESET is negotiated; nothing is written."""
    fn, platform, alloc = fake(features=bit(Feature.VERSION_1))
    drv = RngDriver(platform, fn, alloc, name="rng")
    drv.probe()
    with pytest.raises(DriverError, match="RING_RESET"):
        drv.reset_vq(0)
    assert fn.queue_resets == [] and fn.queues[0].enable == 1


@pytest.mark.spec("drv:vq-reset#1", "drv:vq-reenable#1")
def test_reset_vq_on_a_machine() -> None:
    """Defect 1 on the model: a request in flight on the slow entropy device, the queue reset and re-enabled; the
    driver reclaims the buffer and the re-enabled queue serves new requests."""
    m, dev, drv = machine_rng(bytes_per_us=1)
    slow = drv.request(4096)
    m.run_for(1 * MS)
    drv.reset_vq(0)
    assert slow in drv.lost and not slow.done
    drv.enable_vq(0)
    assert len(drv.read(16, timeout=50 * MS)) == 16


@settings(max_examples=60, deadline=None)
@given(plan=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.sampled_from([None, 4, 8, 16, 64])),
                     min_size=1, max_size=6))
@pytest.mark.spec("drv:vq-reset#1", "drv:pci/common-cfg#7", "drv:vq-reenable#1", "drv:cleanup#2")
def test_queue_reset_property(plan: list[tuple[int, int, int | None]]) -> None:
    """Property (hypothesis): for any sequence of (requests in flight, reads the device takes to finish the
    reset, re-enable size), the driver never reconfigures or notifies the queue before ``queue_reset`` read 0,
    every exposed buffer is reclaimed exactly once after that, the re-enabled queue has a power-of-2 size of at
    most the maximum, and the driver-conformance monitor sees no driver-side violation."""
    fn, platform, alloc = fake(queue_sizes=(32,))
    ck = DriverMonitor(fn)
    drv = RngDriver(platform, ck, alloc, name="rng")
    drv.probe()
    base = alloc.allocations
    for n_req, reads, size in plan:
        reqs = [drv.request(8) for _ in range(n_req)]
        fn.queue_reset_reads = reads
        drv.reset_vq(0)
        assert all(r in drv.lost for r in reqs) and drv.outstanding == []
        assert alloc.allocations == base
        vq = drv.enable_vq(0, size)
        assert vq.num_max == fn.queues[0].size == min(32, size or vq.num_max) and fn.queues[0].enable == 1
    assert ck.violations == [], ck.report()


# -- defect 8: FAILED ---------------------------------------------------------------------------------------------


@pytest.mark.spec("drv:init#4", "drv:init#5")
def test_queue_setup_failure_sets_failed() -> None:
    """Defect 8. §3.1.1: if a step goes irrecoverably wrong the driver SHOULD set FAILED and MUST NOT continue: a
    refused MSI-X vector during queue set-up sets FAILED; DRIVER_OK is never written."""
    fn, platform, alloc = fake()
    fn.refuse_vectors = True
    drv = VirtioDriver(platform, fn, alloc, name="dev")
    with pytest.raises(DriverError, match="vector not accepted"):
        drv.probe()
    assert fn.status & Status.FAILED and drv.failed and drv.phase is DriverPhase.FAILED
    assert not any(v & Status.DRIVER_OK for v in fn.status_writes)
    assert fn.config_vector == VIRTIO_MSI_NO_VECTOR


@pytest.mark.spec("drv:init#4")
def test_device_specific_setup_failure_sets_failed() -> None:
    """§3.1.1 step 7 failing (the GPU's num_scanouts out of range): FAILED is set."""
    fn, platform, alloc = fake(device_id=DeviceId.GPU, queue_sizes=(64, 64),
                               device_config=struct.pack("<IIII", 0, 0, 0, 0))
    with pytest.raises(DriverError, match="num_scanouts"):
        GpuDriver(platform, fn, alloc).probe()
    assert fn.status & Status.FAILED


@pytest.mark.spec("drv:status#3")
def test_failed_restore_on_a_machine() -> None:
    """Defect 8 on the model: an rng device the driver had given up on is, at restore, reset and marked FAILED,
    and stays untouched; the status sequence shows no initialization after FAILED."""
    m, dev, drv = machine_rng()
    drv.t.add_status(Status.FAILED)
    drv.freeze()
    drv.restore()
    assert m.trace.status_sequence("rng")[-4:] == [0x8F, 0x00, 0x01, 0x81]
    assert drv.vqs == [] and drv.failed
    with pytest.raises(DriverError):
        drv.read(8)


# -- defect 9: GPU submissions while suspended ---------------------------------------------------------------------


def machine_gpu(**drv_kw: object) -> tuple[Machine, Gpu, GpuDriver]:
    m = Machine(64 << 20, seed=1)
    dev = Gpu(num_scanouts=1, width=64, height=48)
    drv = GpuDriver(m, m.plug(dev), GuestAllocator(m.memory, *HEAP), **drv_kw)  # type: ignore[arg-type]
    drv.probe()
    return m, dev, drv


@pytest.mark.spec("drv:suspend#3", "drv:suspend#4")
def test_gpu_submits_nothing_while_suspended() -> None:
    """Defect 9. Device Suspend: once SUSPEND is written the driver MUST NOT make buffers available nor send
    notifications. Drawing and moving the cursor on a suspended GPU are refused (SubmissionsStopped) before
    anything reaches a ring: no avail idx moves, no notification is written, no guest memory is taken. After
    the resume the GPU works again."""
    m, dev, drv = machine_gpu()
    drv.suspend_bit()
    idx = [m.memory.read_u16(vq.layout.avail + 2) for vq in drv.vqs]
    allocs = drv.alloc.allocations
    n = len(m.trace)
    fb = drv.framebuffers[0]
    with pytest.raises(SubmissionsStopped):
        drv.draw(0, np.zeros((fb.height, fb.width, 4), np.uint8))
    with pytest.raises(SubmissionsStopped):
        drv.move_cursor(0, 3, 3)
    m.run_for(5 * MS)
    assert [m.memory.read_u16(vq.layout.avail + 2) for vq in drv.vqs] == idx
    assert drv.alloc.allocations == allocs
    notify_writes = [e for e in m.trace.events[n:] if e.kind.value == "bar_write" and e.detail["offset"] >= 0x3000]
    assert notify_writes == [] and not m.trace.violations()
    drv.resume_bit()
    drv.draw(0, np.zeros((fb.height, fb.width, 4), np.uint8))


def test_a_kick_while_suspended_is_held_and_sent_after_the_resume() -> None:
    """Device Suspend: a notification the driver would send while suspended is held, and sent once the resume is
    confirmed (the buffer was made available before SUSPEND)."""
    fn, platform, alloc = fake()
    drv = RngDriver(platform, fn, alloc, name="rng")
    drv.probe()
    fn.on_status = acknowledge_suspend
    drv.vqs[0].add([], [(0x9000, 8)], RngRequest(0x9000, 8))  # exposed before the suspend, not yet notified
    drv.suspend_bit()
    drv.kick(0)
    assert fn.notifications == []
    drv.resume_bit()
    assert fn.notifications == [0]


# -- defect 10: feature dependencies; the transitional entropy id ---------------------------------------------------


class GpuSetupOnly(GpuDriver):
    """The GPU driver up to DRIVER_OK (no display commands: the fake has no device behind it)."""

    def init_display(self) -> None:
        pass


GPU_CONFIG = struct.pack("<IIIII", 0, 0, 1, 0, 4096)  # events_read, events_clear, num_scanouts, capsets, align


@pytest.mark.spec("drv:features#1")
def test_gpu_never_accepts_context_init_without_virgl() -> None:
    """Defect 10. §2.2.1: the driver MUST NOT accept a feature which requires another feature that was not
    accepted; §5.7.3: CONTEXT_INIT requires VIRGL. A (non-conforming) device offering CONTEXT_INIT alone: the
    driver that wants both accepts neither; offered together, both."""
    gpu_bits = bit(GpuFeature.CONTEXT_INIT)
    fn, platform, alloc = fake(device_id=DeviceId.GPU, queue_sizes=(64, 64), device_config=GPU_CONFIG,
                               features=bit(Feature.VERSION_1) | gpu_bits)
    drv = GpuSetupOnly(platform, fn, alloc, want_virgl=True, want_context_init=True)
    drv.probe()
    assert not drv.has(GpuFeature.CONTEXT_INIT) and not fn.driver_features & gpu_bits
    fn2, platform2, alloc2 = fake(device_id=DeviceId.GPU, queue_sizes=(64, 64), device_config=GPU_CONFIG,
                                  features=bit(Feature.VERSION_1) | gpu_bits | bit(GpuFeature.VIRGL))
    drv2 = GpuSetupOnly(platform2, fn2, alloc2, want_virgl=True, want_context_init=True)
    drv2.probe()
    assert drv2.has(GpuFeature.CONTEXT_INIT) and drv2.has(GpuFeature.VIRGL)


@pytest.mark.spec("drv:features#1", "drv:config-space#2")
def test_gpu_never_accepts_blob_alignment_without_resource_blob() -> None:
    """§5.7.3: BLOB_ALIGNMENT requires RESOURCE_BLOB; without it the driver neither accepts the bit nor reads
    the blob_alignment field (§2.5.1: an optional field only when its feature is there)."""
    fn, platform, alloc = fake(device_id=DeviceId.GPU, queue_sizes=(64, 64), device_config=GPU_CONFIG,
                               features=bit(Feature.VERSION_1) | bit(GpuFeature.BLOB_ALIGNMENT))
    drv = GpuSetupOnly(platform, fn, alloc, want_blob=False)
    drv.wanted_features |= bit(GpuFeature.BLOB_ALIGNMENT)
    drv.probe()
    assert not drv.has(GpuFeature.BLOB_ALIGNMENT) and drv.blob_alignment == 1
    assert not [a for a in fn.log if a.space == f"bar{QEMU_MODERN_BAR}" and a.offset == 0x2000 + GpuCfg.BLOB_ALIGNMENT]


@pytest.mark.spec("drv:pci/discovery#2")
def test_rng_binds_to_the_transitional_id_0x1005() -> None:
    """Defect 10. §4.1.2.2: drivers for device types listed with a Transitional PCI Device ID MUST match it too:
    entropy is 0x1005 (the modern id is 0x1044). The rng driver binds to a function presenting 0x1005 (with
    modern capabilities, revision 0) and works; 0x1006 is no virtio device."""
    fn, platform, alloc = fake(pci_device_id=0x1005, revision=0)
    drv = RngDriver(platform, fn, alloc, name="rng")
    assert drv.t.device_id == DeviceId.ENTROPY
    drv.probe()
    assert fn.status == 0x0F and drv.request(8) in drv.outstanding
    with pytest.raises(DriverError, match="not a virtio"):
        PciTransport(FakeFunction(pci_device_id=0x1006), platform)


# -- defect 11: 2^32-byte chains; waits and DEVICE_NEEDS_RESET ------------------------------------------------------


@pytest.mark.spec("drv:split/desc#1")
def test_a_chain_of_more_than_4gib_is_refused() -> None:
    """Defect 11. §2.7.5.2: drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total. Two
    segments of 2^31 + 1 bytes are refused (nothing written to the ring); exactly 2^32 is allowed."""
    mem = GuestMemory(1 << 20)
    vq = DriverQueue(mem, RingLayout.contiguous(0x1000, 8))
    half = (1 << 31) + 1
    with pytest.raises(ValueError, match="2\\^32"):
        vq.add([(0x10000, half)], [(0x20000, half)], "too big")
    assert vq.avail_idx == 0 and vq.num_free == 8
    vq.add([(0x10000, 1 << 31)], [(0x20000, 1 << 31)], "exactly 4 GiB")
    assert vq.avail_idx == 1 and CHAIN_BYTES_MAX == 1 << 32


@pytest.mark.spec("drv:status#4")
def test_a_wait_fails_on_device_needs_reset_instead_of_timing_out() -> None:
    """Defect 11. §2.1.1: with DEVICE_NEEDS_RESET set the driver SHOULD NOT rely on the completion of operations.
    A read waiting on a slow entropy device that enters DEVICE_NEEDS_RESET after 1 ms fails then, with
    DeviceNeedsReset — not after the 100 ms time-out."""
    m, dev, drv = machine_rng(bytes_per_us=1)
    m.scheduler.schedule(1 * MS, lambda: dev.needs_reset("test"))
    t0 = m.now
    with pytest.raises(DeviceNeedsReset, match="DEVICE_NEEDS_RESET"):
        drv.read(1 << 20, timeout=100 * MS)
    assert m.now - t0 <= 2 * MS and drv.needs_reset_seen


@pytest.mark.spec("drv:status#4")
def test_gpu_wait_fails_on_device_needs_reset() -> None:
    """Defect 11, virtio-gpu: a command waited for on a device that enters DEVICE_NEEDS_RESET fails at once
    (DeviceNeedsReset), and a reset (freeze) clears the state so the driver can start again."""
    m, dev, drv = machine_gpu()
    dev.needs_reset("test")
    m.run_for(1 * MS)
    t0 = m.now
    with pytest.raises(DeviceNeedsReset):
        drv.get_display_info()
    assert m.now == t0
    assert not drv.probe_alive(timeout=10 * MS)
    drv.reset_device()
    assert not drv.needs_reset_seen and drv.phase is DriverPhase.RESET


@pytest.mark.spec("drv:status#4")
def test_needs_reset_noticed_at_the_deadline_without_an_interrupt() -> None:
    """A device that sets DEVICE_NEEDS_RESET without a configuration interrupt: the wait ends at its time-out,
    then reads the status and reports DeviceNeedsReset (not a plain time-out)."""
    fn, platform, alloc = fake()
    drv = RngDriver(platform, fn, alloc, name="rng")
    drv.probe()
    fn.status |= Status.DEVICE_NEEDS_RESET
    with pytest.raises(DeviceNeedsReset):
        drv.read(8, timeout=3 * MS)
    assert platform.now == 3 * MS


@pytest.mark.spec("drv:status#3")
def test_a_new_probe_after_a_failed_one_starts_with_a_reset_and_may_succeed() -> None:
    """§2.1.1 / §3.1.1: after setting FAILED the driver may reset the device and try again: a second probe
    resets first and, the device now cooperating, brings it up."""
    fn, platform, alloc = fake()
    fn.refuse_features_ok = True
    drv = RngDriver(platform, fn, alloc, name="rng")
    with pytest.raises(DriverError, match="refused features"):
        drv.probe()
    assert drv.failed and fn.status & Status.FAILED
    fn.refuse_features_ok = False
    mark = len(fn.status_writes)
    drv.probe()
    assert fn.status_writes[mark:] == [0x00, 0x01, 0x03, 0x0B, 0x0F] and not drv.failed


@pytest.mark.spec("drv:suspend#2", "drv:suspend#3")
def test_a_failed_suspend_falls_back_and_the_restore_submits_again() -> None:
    """Device Suspend: a device that needs a reset instead of suspending (DEVICE_NEEDS_RESET) makes the driver
    stop, then freeze and restore; submissions stopped for the SUSPEND end with that reset, so the restoring
    GPU flavour replays its modeset and draws again."""
    from pyvirtio.guest.gpu.flavours import S4ReplayGpuDriver

    m = Machine(64 << 20, seed=1)
    dev = Gpu(num_scanouts=1, width=64, height=48)
    drv = S4ReplayGpuDriver(m, m.plug(dev), GuestAllocator(m.memory, *HEAP))
    drv.probe()
    dev.faults.suspend_fails = True
    with pytest.raises(DeviceNeedsReset):
        drv.suspend_bit()
    assert not drv.submitting
    drv.hibernation = True  # a plain Gpu forgets its resources on reset: re-create them
    drv.freeze()
    drv.restore()
    assert drv.submitting and not drv.errors
    fb = drv.framebuffers[0]
    drv.draw(0, np.full((fb.height, fb.width, 4), 7, np.uint8))

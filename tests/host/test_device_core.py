"""The generic device core against the device statements of virtio 1.4 §2.1-§2.5, §2.7 and §6, and the entropy
device (§5.4): status, features, reset, device configuration space, reserved feature bits, what a device writes
and when. Each test names the statements it checks; the devices are driven without PCI (``LoopbackDriver``) unless
the statement is about what a driver reads through the transport.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.clock import MS, US
from pyvirtio.devices import Gpu, Rng, TestDevice
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    GPU_CONFIG_SIZE_BLOB_ALIGNMENT,
    QEMU_DEVICE_OFFSET,
    QEMU_MODERN_BAR,
    RNG_REQUESTQ,
    Feature,
    GpuFeature,
    Status,
    bit,
)
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

from .loopback import HEAP_BASE, LoopbackContext, LoopbackDriver
from .pci_helpers import cwrite, enable

S = DeviceLifecycle
#: The transport and reserved bits (§6) the core implements and may offer.
CORE_BITS = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
#: The gpu bits pyvirtio implements (§5.7.3; bit 5 is BLOB_ALIGNMENT or the abandoned FREEZING).
GPU_BITS = sum(bit(f) for f in GpuFeature)


def gpu_variants() -> list[Gpu]:
    """Every combination of the gpu's feature switches that the constructor accepts."""
    out = []
    for virgl, ctx, blob, align, freezing, edid, uuid in itertools.product([False, True], repeat=7):
        try:
            out.append(Gpu(virgl=virgl, context_init=ctx, resource_blob=blob, offer_blob_alignment=align,
                           offer_freezing=freezing, edid=edid, resource_uuid=uuid))
        except ValueError:
            continue
    return out


def all_devices() -> list[VirtioDevice]:
    """A device of every kind and option that pyvirtio builds."""
    return [Rng(), Rng(offer_suspend=False), TestDevice(), TestDevice(offer_suspend=False), *gpu_variants()]


class RecordingMemory(GuestMemory):
    """Guest memory (one region at 0) that logs every write (address, length) in order: those through its
    methods, and those the split queues make straight into the ring buffers they resolved with
    :meth:`GuestMemory.locate` (:func:`record_ring_writes`; the buffer offset is the address)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.writes: list[tuple[int, int]] = []
        _RECORDING[id(self.regions[0].mm)] = self

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.writes.append((addr, len(memoryview(data).cast("B"))))
        super().write(addr, data)

    def pack_into(self, fmt: struct.Struct, addr: int, *values: int) -> None:
        self.writes.append((addr, fmt.size))
        super().pack_into(fmt, addr, *values)

    def fill(self, addr: int, n: int, byte: int = 0) -> None:
        self.writes.append((addr, n))
        super().fill(addr, n, byte)


_RECORDING: dict[int, RecordingMemory] = {}


@pytest.fixture(autouse=True)
def record_ring_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on the split queues' packs into ring buffers (device and driver side)."""
    from pyvirtio.virtqueue import device, driver

    def spying(fn, size: int):  # type: ignore[no-untyped-def]
        def spy(buf, off: int, *values: int) -> None:  # type: ignore[no-untyped-def]
            mem = _RECORDING.get(id(buf))
            if mem is not None:
                mem.writes.append((off, size))
            fn(buf, off, *values)
        return spy

    for module, names in ((device, ("_USED_PACK", "_U16_PACK")), (driver, ("_U16_PACK", "_DESC_PACK"))):
        for name in names:
            fn = getattr(module, name)
            monkeypatch.setattr(module, name, spying(fn, fn.__self__.size))


def recording_loopback(dev: VirtioDevice) -> tuple[LoopbackDriver, RecordingMemory]:
    ctx = LoopbackContext()
    mem = RecordingMemory(32 << 20)
    ctx.memory = mem
    return LoopbackDriver(dev, ctx), mem


def overlaps(write: tuple[int, int], addr: int, n: int) -> bool:
    return write[0] < addr + n and addr < write[0] + write[1]


# -- device status (§2.1.2) -------------------------------------------------------------------------------------


@pytest.mark.spec("dev:status#1")
def test_no_buffer_is_used_before_driver_ok() -> None:
    """§2.1.2: the device MUST NOT consume buffers or send used-buffer notifications before DRIVER_OK. A
    driver makes a buffer available and notifies after FEATURES_OK and queue set-up but before DRIVER_OK:
    nothing is popped, written or notified until DRIVER_OK is set; then the buffer is served."""
    dev = Rng(latency=5 * US)
    drv = LoopbackDriver(dev)
    dev.write_status(Status.ACKNOWLEDGE)
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER)
    dev.set_driver_features(bit(Feature.VERSION_1))
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    dq = dev.queues[RNG_REQUESTQ]
    layout = RingLayout.contiguous(drv.alloc.alloc(RingLayout.contiguous(0, 8).total_bytes, 4096), 8)
    assert dq.set_size(8)
    dq.desc_table, dq.avail_ring, dq.used_ring = layout.desc, layout.avail, layout.used
    assert dev.enable_queue(RNG_REQUESTQ)
    vq = DriverQueue(drv.ctx.memory, layout)
    buf = drv.alloc.alloc(16)
    vq.add([], [(buf, 16)], "early")
    dev.kick(RNG_REQUESTQ)
    drv.run_until(lambda: False, 2 * MS)
    assert dq.next_avail == 0 and drv.ctx.memory.read(buf, 16) == bytes(16)
    assert drv.ctx.queue_notifications == [] and vq.get_used() is None
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
    assert drv.run_until(lambda: dq.next_used == 1)
    assert vq.get_used() == ("early", 16) and drv.ctx.queue_notifications == [RNG_REQUESTQ]


@pytest.mark.spec("dev:status#2", "dev:status#3")
def test_a_broken_ring_sets_needs_reset_and_notifies_a_config_change() -> None:
    """§2.1.2: the device SHOULD set DEVICE_NEEDS_RESET when an error needs a reset, and with DRIVER_OK set MUST
    then send a configuration change notification. Here the driver moves avail.idx further than the queue size
    (§2.7.6): the ring is unusable, the device sets DEVICE_NEEDS_RESET and notifies once."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    drv.init()
    avail = drv.vqs[RNG_REQUESTQ].layout.avail
    drv.ctx.memory.pack_into(struct.Struct("<H"), avail + 2, 100)
    dev.kick(RNG_REQUESTQ)
    assert drv.run_until(lambda: bool(dev.status & Status.DEVICE_NEEDS_RESET))
    assert dev.lifecycle is S.NEEDS_RESET and drv.ctx.config_notifications == 1
    drv.run_until(lambda: False, 1 * MS)
    assert drv.ctx.config_notifications == 1


@pytest.mark.spec("dev:status#3")
def test_needs_reset_without_driver_ok_sends_no_config_notification() -> None:
    """§2.1.2: the config change notification goes with DEVICE_NEEDS_RESET only when DRIVER_OK is set (here
    the queue rings are unusable during set-up: the device needs a reset, but the driver is not live)."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER)
    dev.set_driver_features(bit(Feature.VERSION_1))
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    dq = dev.queues[RNG_REQUESTQ]
    dq.desc_table = drv.ctx.memory.size + 4096  # outside guest RAM
    assert not dev.enable_queue(RNG_REQUESTQ)
    assert dev.status & Status.DEVICE_NEEDS_RESET and drv.ctx.config_notifications == 0


# -- feature bits (§2.2.2) and reserved feature bits (§6.2) ----------------------------------------------------


@pytest.mark.spec("dev:features#1")
def test_no_feature_is_offered_without_the_features_it_requires() -> None:
    """§2.2.2: the device MUST NOT offer a feature which requires another that is not offered. The gpu's
    dependent bits (§5.7.3: CONTEXT_INIT requires VIRGL, BLOB_ALIGNMENT requires RESOURCE_BLOB) come only with
    what they need, over every constructor combination; the ones that would break this are refused."""
    variants = gpu_variants()
    assert len(variants) > 20
    for dev in variants:
        f = dev.offered_features()
        if f & bit(GpuFeature.CONTEXT_INIT):
            assert f & bit(GpuFeature.VIRGL)
        if dev.offer_blob_alignment:
            assert f & bit(GpuFeature.RESOURCE_BLOB)
    with pytest.raises(ValueError, match="requires"):
        Gpu(context_init=True, virgl=False)
    with pytest.raises(ValueError, match="requires"):
        Gpu(resource_blob=False, offer_blob_alignment=True)


@pytest.mark.spec("dev:features#3", "dev:reserved-features#1", "dev:reserved-features#5")
def test_offered_bits_are_exactly_the_implemented_ones() -> None:
    """§2.2.2: the device MUST NOT offer feature bits it would not support; §6.2: it MUST offer VERSION_1, and
    MUST NOT offer SR_IOV without an SR-IOV capability (pyvirtio has none). Every device of every option offers
    VERSION_1 and nothing outside the bits the core and the device type implement."""
    for dev in all_devices():
        f = dev.offered_features()
        allowed = CORE_BITS | bit(Feature.SUSPEND) | (GPU_BITS if isinstance(dev, Gpu) else 0)
        assert f & bit(Feature.VERSION_1), dev
        assert not f & bit(Feature.SR_IOV), dev
        assert f & ~allowed == 0, (dev, hex(f & ~allowed))
        assert bool(f & bit(Feature.SUSPEND)) == dev.offer_suspend
    for name in ("ACCESS_PLATFORM", "RING_PACKED", "IN_ORDER", "ORDER_PLATFORM", "NOTIFICATION_DATA",
                 "NOTIF_CONFIG_DATA", "ADMIN_VQ", "NOTIFY_ON_EMPTY", "ANY_LAYOUT"):
        assert not any(d.offered_features() & bit(Feature[name]) for d in all_devices()), name


def _negotiate(dev: VirtioDevice, features: int) -> bool:
    dev.write_status(0)
    dev.write_status(Status.ACKNOWLEDGE)
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER)
    dev.set_driver_features(features)
    dev.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    return bool(dev.status & Status.FEATURES_OK)


@settings(max_examples=60, deadline=None)
@given(pick=st.integers(0, 2**64 - 1), device=st.sampled_from(["rng", "testdev", "gpu", "gpu-virgl"]))
@pytest.mark.spec("dev:features#2", "dev:features#4")
def test_any_valid_subset_is_accepted_and_again_after_reset(pick: int, device: str) -> None:
    """§2.2.2: the device SHOULD accept any valid subset of the features it offers (here: any subset with
    VERSION_1), otherwise it MUST NOT let FEATURES_OK stick; and having accepted a set once it SHOULD NOT fail
    the same set after a reset. Invalid sets (a bit not offered, VERSION_1 missing) never get FEATURES_OK."""
    dev: VirtioDevice = {"rng": Rng, "testdev": TestDevice, "gpu": Gpu,
                         "gpu-virgl": lambda: Gpu(virgl=True, context_init=True)}[device]()
    LoopbackDriver(dev)
    offered = dev.offered_features()
    subset = (pick & offered) | bit(Feature.VERSION_1)
    if subset & bit(GpuFeature.CONTEXT_INIT):
        subset |= bit(GpuFeature.VIRGL)  # a valid subset respects §5.7.3 dependencies
    if subset & bit(GpuFeature.BLOB_ALIGNMENT) and isinstance(dev, Gpu) and dev.offer_blob_alignment:
        subset |= bit(GpuFeature.RESOURCE_BLOB)
    for _ in range(3):  # accepted, and accepted again after every reset
        assert _negotiate(dev, subset)
        assert dev.driver_features == subset
    assert not _negotiate(dev, subset & ~bit(Feature.VERSION_1))
    unoffered = ~offered & ((1 << 64) - 1)
    extra = unoffered & -unoffered  # the lowest bit not offered
    assert not _negotiate(dev, subset | extra)
    assert dev.lifecycle is S.CONFIGURING and not dev.status & Status.FEATURES_OK
    assert _negotiate(dev, subset)


# -- reset (§2.4.1) ----------------------------------------------------------------------------------------------


@pytest.mark.spec("dev:reset#1", "dev:reset#2")
def test_after_reset_reads_0_nothing_touches_the_queues_or_notifies() -> None:
    """§2.4.1: the device MUST reinitialise device status to 0 on reset, and once it reads 0 MUST NOT notify
    or touch the queues until the driver re-initialises it. A request is in flight when the driver writes 0:
    the status reads 0 at once, and afterwards no guest memory is written and no notification is sent, not even
    when the old request's time comes; after re-initialisation the device works again."""
    dev = Rng(bytes_per_us=1, latency=20 * US)
    drv, mem = recording_loopback(dev)
    drv.init()
    _, buf = drv.submit(RNG_REQUESTQ, b"", 64)
    assert drv.run_until(lambda: dev.inflight() == 1)
    dev.write_status(0)
    assert dev.status == 0 and dev.lifecycle is S.RESET
    writes, notes = len(mem.writes), list(drv.ctx.queue_notifications)
    dev.kick(RNG_REQUESTQ)  # a stray notification from the driver changes nothing either
    drv.run_until(lambda: False, 5 * MS)
    assert mem.writes[writes:] == [] and drv.ctx.queue_notifications == notes
    assert drv.ctx.config_notifications == 0 and mem.read(buf, 64) == bytes(64)
    drv.init()
    drv.submit(RNG_REQUESTQ, b"", 8)
    _, length = drv.wait_used(RNG_REQUESTQ)
    assert length == 8


# -- device configuration space (§2.5.2) -------------------------------------------------------------------------


@pytest.mark.spec("dev:config-space#1")
def test_every_config_field_reads_before_features_ok() -> None:
    """§2.5.2: the device MUST allow reading any device-specific configuration field before FEATURES_OK,
    including fields conditional on offered features. Through the PCI device-config window of a gpu that
    offers BLOB_ALIGNMENT, with status only ACKNOWLEDGE | DRIVER: events_read, events_clear, num_scanouts,
    num_capsets and blob_alignment all read their values; the test device's 16 bytes too."""
    m = Machine(16 << 20, seed=1)
    gpu = Gpu(num_scanouts=3, blob_alignment_bytes=8192)
    td = TestDevice()
    fn_gpu, fn_td = m.plug(gpu), m.plug(td)
    for fn in (fn_gpu, fn_td):
        enable(fn)
        cwrite(fn, 20, 1, Status.ACKNOWLEDGE)
        cwrite(fn, 20, 1, Status.ACKNOWLEDGE | Status.DRIVER)
    assert gpu.offer_blob_alignment and gpu.config_size() == GPU_CONFIG_SIZE_BLOB_ALIGNMENT
    gpu.events_read = 1
    fields = [fn_gpu.bar_read(QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET + off, 4) for off in range(0, 20, 4)]
    assert fields == [1, 0, 3, 0, 8192]
    td.config[:] = bytes(range(16))
    got = b"".join(fn_td.bar_read(QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET + off, 4).to_bytes(4, "little")
                   for off in range(0, 16, 4))
    assert got == bytes(range(16))
    assert not gpu.status & Status.FEATURES_OK and not td.status & Status.FEATURES_OK


# -- split virtqueue, what the device writes (§2.7.8, §2.7.10) ---------------------------------------------------


@pytest.mark.spec("dev:split/used#2", "dev:split/used#1")
@pytest.mark.parametrize("kind", ["rng", "testdev"])
def test_buffer_bytes_are_written_before_used_idx(kind: str) -> None:
    """§2.7.8.2: the device MUST write the len bytes it reports (from the first writable buffer on) and set
    len, both before it updates used idx. In the order of guest-memory writes, every byte of a request's
    writable buffer and its used element come before the used.idx update that publishes it."""
    dev: VirtioDevice = Rng() if kind == "rng" else TestDevice()
    drv, mem = recording_loopback(dev)
    drv.init()
    vq = drv.vqs[0]
    idx_addr = vq.layout.used + 2
    for n in (1, 8, 40):
        mark = len(mem.writes)
        _, buf = drv.submit(0, b"x" * n if kind == "testdev" else b"", n)
        _, length = drv.wait_used(0)
        assert length == n
        log = mem.writes[mark:]
        publish = next(i for i, w in enumerate(log) if overlaps(w, idx_addr, 2))
        data = [i for i, w in enumerate(log) if overlaps(w, buf, n)]
        slot = vq.layout.used + 4 + 8 * ((vq.last_used - 1) % vq.num_max)
        elem = [i for i, w in enumerate(log) if overlaps(w, slot, 8)]
        assert data and max(data) < publish, (data, publish)
        assert elem and max(elem) < publish
        covered = sum(w[1] for w in (log[i] for i in data))
        assert covered >= length


@pytest.mark.spec("dev:split/avail-event#3")
def test_spurious_notifications_are_harmless() -> None:
    """§2.7.10.2: the device MUST handle spurious notifications. Notifications with nothing new available —
    before any buffer, after every buffer was used, many in a row — pop nothing, write nothing, notify nothing
    and are no error; real buffers made available afterwards are served as usual."""
    dev = TestDevice()
    drv, mem = recording_loopback(dev)
    drv.init()
    mark = len(mem.writes)
    for _ in range(5):
        dev.kick(0)
        drv.run_until(lambda: False, 100 * US)
    assert mem.writes[mark:] == [] and drv.ctx.queue_notifications == []
    drv.submit(0, b"ping", 4)
    assert drv.wait_used(0)[1] == 4
    notes = len(drv.ctx.queue_notifications)
    mark = len(mem.writes)
    for _ in range(5):
        dev.kick(0)
    drv.run_until(lambda: False, 1 * MS)
    assert mem.writes[mark:] == [] and len(drv.ctx.queue_notifications) == notes
    assert not dev.status & Status.DEVICE_NEEDS_RESET and drv.ctx.trace.violations() == []


# -- entropy device (§5.4.6) -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 2, 3, 31, 64, 4096, Rng.MAX_CHUNK, Rng.MAX_CHUNK + 1, 100_000]),
                      min_size=1, max_size=4))
@pytest.mark.spec("dev:rng/operation#1")
def test_entropy_device_writes_at_least_one_byte_per_buffer(sizes: list[int]) -> None:
    """§5.4.6.2: the device MUST place one or more random bytes into each buffer and MAY use less than all of
    it. Every request comes back with 1 <= len <= its size (at most MAX_CHUNK: less than a bigger buffer),
    the len bytes are the device's stream and nothing past len is written."""
    dev = Rng(seed=7, bytes_per_us=4096)
    drv = LoopbackDriver(dev)
    drv.init(queue_size=8)
    mem = drv.ctx.memory
    stream = Rng(seed=7).source
    for n in sizes:
        _, buf = drv.submit(RNG_REQUESTQ, b"", n)
        _, length = drv.wait_used(RNG_REQUESTQ)
        assert 1 <= length <= min(n, Rng.MAX_CHUNK)
        assert mem.read(buf, length) == stream.read(length)
        assert mem.read(buf + length, n - length) == bytes(n - length)
    assert drv.ctx.trace.violations() == []


def test_entropy_device_reports_readable_buffers() -> None:
    """§5.4.6.1 (driver MUST NOT place device-readable buffers): the device still fills the writable part,
    never writes the readable one, and records the driver's violation."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    drv.init()
    out, buf = drv.submit(RNG_REQUESTQ, b"readable", 16)
    assert drv.wait_used(RNG_REQUESTQ)[1] == 16
    assert drv.ctx.memory.read(out, 8) == b"readable"
    assert [str(e.detail["rule"]) for e in drv.ctx.trace.violations()] == [
        "§5.4.6.1 driver MUST NOT place device-readable buffers on the entropy queue"]
    assert HEAP_BASE <= out < buf

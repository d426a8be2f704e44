"""The common configuration structure, device side (virtio 1.4 §4.1.4.3.1, §4.1.3.2), register by register.

Raw offsets (reference ``struct virtio_pci_common_cfg``): device_feature_select @0, device_feature @4,
driver_feature_select @8, driver_feature @12, device_status @20, queue_select @22, queue_size @24, queue_enable @28,
queue_desc @32/36, queue_driver @40/44, queue_device @48/52, queue_reset @58.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.devices import Gpu, Rng
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine

from ..pci_helpers import cread, cwrite, enable, status

VERSION_1, RING_RESET, SUSPEND = 32, 40, 43
QUEUE_RESET, QUEUE_ENABLE, QUEUE_SIZE, QUEUE_SELECT = 58, 28, 24, 22
RING = 0x10000  # desc; avail at +0x1000, used at +0x2000


def features_ok(fn: VirtioPciFunction, feats: int) -> None:
    """ACKNOWLEDGE, DRIVER, the features, FEATURES_OK (raw §3.1.1 steps 1-5)."""
    cwrite(fn, 20, 1, 1)
    cwrite(fn, 20, 1, 3)
    for sel in (0, 1):
        cwrite(fn, 8, 4, sel)
        cwrite(fn, 12, 4, (feats >> (32 * sel)) & 0xFFFFFFFF)
    cwrite(fn, 20, 1, 0x0B)
    assert status(fn) == 0x0B


def setup_queue(fn: VirtioPciFunction, q: int = 0, size: int = 16, addr: int = RING) -> None:
    cwrite(fn, QUEUE_SELECT, 2, q)
    cwrite(fn, QUEUE_SIZE, 2, size)
    for off, a in ((32, addr), (40, addr + 0x1000), (48, addr + 0x2000)):
        cwrite(fn, off, 4, a & 0xFFFFFFFF)
        cwrite(fn, off + 4, 4, a >> 32)
    cwrite(fn, QUEUE_ENABLE, 2, 1)


@pytest.fixture
def fn(machine: Machine) -> VirtioPciFunction:
    f = machine.plug(Gpu())
    enable(f)
    return f


@pytest.mark.spec("dev:pci/common-cfg#3")
def test_device_feature_shows_every_offered_word_for_any_select(fn: VirtioPciFunction) -> None:
    """§4.1.4.3.1: device_feature shows offered bits 32*select..32*select+31 for ANY select the driver writes
    (0 beyond the highest word of the offer)."""
    offered = fn.device.offered_features()
    for sel in (0, 1, 2, 7, 8, 0xFFFF, 0xFFFFFFFF):
        cwrite(fn, 0, 4, sel)
        assert cread(fn, 0, 4) == sel
        assert cread(fn, 4, 4) == ((offered >> (32 * sel)) & 0xFFFFFFFF if sel < 8 else 0)
    assert offered >> 32 & 1  # VERSION_1 in word 1


@pytest.mark.spec("dev:pci/common-cfg#4")
def test_driver_feature_shows_what_the_driver_wrote_per_window(fn: VirtioPciFunction) -> None:
    """§4.1.4.3.1: driver_feature presents the valid bits the driver wrote, per driver_feature_select window."""
    feats = (1 << VERSION_1) | (1 << SUSPEND) | 0b11
    for sel in (0, 1):
        cwrite(fn, 8, 4, sel)
        cwrite(fn, 12, 4, (feats >> (32 * sel)) & 0xFFFFFFFF)
    for sel in (1, 0, 5):
        cwrite(fn, 8, 4, sel)
        assert cread(fn, 12, 4) == ((feats >> (32 * sel)) & 0xFFFFFFFF)
    assert fn.device.driver_features == feats


@pytest.mark.spec("dev:pci/common-cfg#6", "dev:pci/common-cfg#7")
def test_writing_zero_to_device_status_resets_and_reads_zero_when_done(fn: VirtioPciFunction) -> None:
    """§4.1.4.3.1: writing 0 to device_status resets the device, which presents 0 once done (here: when the write
    returns); every queue_enable reads 0 after the reset."""
    features_ok(fn, 1 << VERSION_1)
    setup_queue(fn, 0)
    setup_queue(fn, 1, addr=RING + 0x4000)
    cwrite(fn, 20, 1, 0x0F)
    assert status(fn) == 0x0F
    cwrite(fn, 20, 1, 0)
    assert status(fn) == 0
    for q in (0, 1):
        cwrite(fn, QUEUE_SELECT, 2, q)
        assert cread(fn, QUEUE_ENABLE, 2) == 0


@pytest.mark.spec("dev:pci/common-cfg#8", "dev:pci/common-cfg#9", "dev:pci/common-cfg#10", "dev:pci/common-cfg#12")
def test_queue_reset_register(fn: VirtioPciFunction) -> None:
    """§4.1.4.3.1 with VIRTIO_F_RING_RESET: queue_reset reads 0 after a device reset and after the queue is enabled;
    writing 1 resets the selected queue, and once that is done queue_reset and queue_enable both read 0 (the
    queue's size back to the maximum, its addresses cleared); the other queue is untouched."""
    features_ok(fn, (1 << VERSION_1) | (1 << RING_RESET))
    cwrite(fn, QUEUE_SELECT, 2, 0)
    assert cread(fn, QUEUE_RESET, 2) == 0  # after the reset that started the init
    setup_queue(fn, 0)
    setup_queue(fn, 1, addr=RING + 0x4000)
    cwrite(fn, 20, 1, 0x0F)
    cwrite(fn, QUEUE_SELECT, 2, 0)
    assert (cread(fn, QUEUE_ENABLE, 2), cread(fn, QUEUE_RESET, 2)) == (1, 0)  # enabled: reads 0
    max_size = fn.device.queues[0].max_size
    cwrite(fn, QUEUE_RESET, 2, 1)
    assert (cread(fn, QUEUE_RESET, 2), cread(fn, QUEUE_ENABLE, 2)) == (0, 0)
    assert cread(fn, QUEUE_SIZE, 2) == max_size and cread(fn, 32, 4) == 0
    cwrite(fn, QUEUE_SELECT, 2, 1)
    assert cread(fn, QUEUE_ENABLE, 2) == 1  # only the selected queue
    setup_queue(fn, 0)  # re-enable after the reset (§2.6.2)
    cwrite(fn, QUEUE_SELECT, 2, 0)
    assert (cread(fn, QUEUE_ENABLE, 2), cread(fn, QUEUE_RESET, 2)) == (1, 0)
    cwrite(fn, 20, 1, 0)
    assert cread(fn, QUEUE_RESET, 2) == 0


def test_queue_reset_is_ignored_without_ring_reset(fn: VirtioPciFunction) -> None:
    """Without VIRTIO_F_RING_RESET negotiated the register does nothing: the queue stays enabled."""
    features_ok(fn, 1 << VERSION_1)
    setup_queue(fn, 0)
    cwrite(fn, QUEUE_RESET, 2, 1)
    assert cread(fn, QUEUE_ENABLE, 2) == 1


@pytest.mark.spec("dev:pci/common-cfg#13")
@pytest.mark.parametrize("q", [2, 3, 0x7FFF, 0xFFFF])
def test_queue_size_of_a_missing_queue_reads_zero(fn: VirtioPciFunction, q: int) -> None:
    """§4.1.4.3.1: queue_size reads 0 when queue_select names a queue that does not exist (gpu: 2 queues)."""
    cwrite(fn, QUEUE_SELECT, 2, q)
    assert cread(fn, QUEUE_SELECT, 2) == q
    assert cread(fn, QUEUE_SIZE, 2) == 0
    cwrite(fn, QUEUE_SIZE, 2, 16)  # a write for a missing queue goes nowhere
    assert cread(fn, QUEUE_SIZE, 2) == 0


@pytest.mark.spec("dev:pci/common-cfg#14")
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=12))
def test_queue_size_always_reads_zero_or_a_power_of_two(writes: list[int]) -> None:
    """§4.1.4.3.1 (split ring, no RING_PACKED): queue_size reads 0 or a power of 2, whatever the driver writes."""
    m = Machine(1 << 20, seed=1)
    f = m.plug(Rng())
    enable(f)
    for w in writes:
        cwrite(f, QUEUE_SIZE, 2, w)
        size = cread(f, QUEUE_SIZE, 2)
        assert size == 0 or size & (size - 1) == 0
        assert size <= 64


@pytest.mark.spec("dev:pci/layout#1")
@pytest.mark.parametrize("order", ["lo-hi", "hi-lo"])
def test_64_bit_fields_take_their_halves_independently(machine: Machine, order: str) -> None:
    """§4.1.3.2: the device MUST allow independent access to the low and high 32-bit halves of a 64-bit field:
    either half alone changes only itself, in any order, and the device uses the combined value."""
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, QUEUE_SELECT, 2, 0)
    for off, value in ((32, 0x1_2345_6000), (40, 0x2_0000_1000), (48, 0xFFFF_FFFF_0000_0000)):
        lo, hi = value & 0xFFFFFFFF, value >> 32
        steps = [(off, lo), (off + 4, hi)] if order == "lo-hi" else [(off + 4, hi), (off, lo)]
        for o, v in steps:
            cwrite(fn, o, 4, v)
        assert (cread(fn, off, 4), cread(fn, off + 4, 4)) == (lo, hi)
        cwrite(fn, off + 4, 4, 0)  # the high half alone
        assert (cread(fn, off, 4), cread(fn, off + 4, 4)) == (lo, 0)
        cwrite(fn, off + 4, 4, hi)
    q = fn.device.queues[0]
    assert (q.desc_table, q.avail_ring, q.used_ring) == (0x1_2345_6000, 0x2_0000_1000, 0xFFFF_FFFF_0000_0000)

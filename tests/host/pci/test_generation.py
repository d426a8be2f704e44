"""``config_generation`` (virtio 1.4 §4.1.4.3.1, §2.5): the device MUST present a changed generation after the
driver read a device-specific config value that changed since the config was last read. The field is 8 bits
(common config offset 21), so a plain counter wraps back to a value the driver saw (issue 9 defect 5).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyvirtio.clock import MS
from pyvirtio.devices import TestDevice
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine

from ..pci_helpers import CONFIG_GENERATION, cread, cwrite, enable, status

DEVICE_CFG = 0x2000


def gen(fn: VirtioPciFunction) -> int:
    return cread(fn, CONFIG_GENERATION, 1)


def value(fn: VirtioPciFunction) -> int:
    return fn.bar_read(4, DEVICE_CFG, 4)


@pytest.mark.spec("dev:pci/common-cfg#5")
@pytest.mark.parametrize("changes", [1, 255, 256, 257, 512, 1000])
def test_the_generation_read_after_changes_differs_from_the_one_read_before(machine: Machine,
                                                                            changes: int) -> None:
    """§4.1.4.3.1: a driver reads the generation, the device config changes ``changes`` times, the driver reads
    the config and the generation again: it MUST differ — 256 changes must not wrap the 8-bit counter back to
    the value the driver read (defect 5)."""
    dev = TestDevice()
    fn = machine.plug(dev)
    enable(fn)
    before = gen(fn)
    for i in range(changes):
        dev.host_set_value(i + 1)
    assert value(fn) == changes
    assert gen(fn) != before


@pytest.mark.spec("dev:pci/common-cfg#5")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 20), st.sampled_from([255, 256, 257, 512])), min_size=1, max_size=12))
@example([256])
@example([3, 253, 256])
def test_every_before_after_pair_of_reads_sees_a_change(bursts: list[int]) -> None:
    """Property (§2.5.1 driver loop): between two generation reads with ``n`` config changes in between, the
    generation differs iff ``n`` > 0, for any sequence of bursts."""
    m = Machine(1 << 20, seed=5)
    dev = TestDevice()
    fn = m.plug(dev)
    enable(fn)
    before = gen(fn)
    for n in bursts:
        for i in range(n):
            dev.host_set_value(i)
        value(fn)
        after = gen(fn)
        assert (after != before) == (n > 0), (n, before, after)
        before = after


@pytest.mark.spec("dev:pci/common-cfg#5", "dev:suspend#4", "dev:suspend#5")
def test_a_change_applied_by_a_reset_while_suspended_changes_the_generation(machine: Machine,
                                                                            alloc: GuestAllocator) -> None:
    """A config change deferred while suspended (Device Suspend: config frozen, notified on resume) that is applied
    by a reset instead of a resume still presents a changed generation: the driver read the old value with the
    old generation (defect 5)."""
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev")
    drv.probe()
    drv.suspend_bit()
    g0, v0 = gen(fn), value(fn)
    dev.host_set_value(42)
    machine.run_for(1 * MS)
    assert (gen(fn), value(fn)) == (g0, v0)  # frozen while suspended
    cwrite(fn, 20, 1, 0)
    assert status(fn) == 0
    assert value(fn) == 42
    assert gen(fn) != g0


@pytest.mark.spec("dev:pci/common-cfg#5")
def test_an_unchanged_config_keeps_its_generation(machine: Machine) -> None:
    """The generation changes only with the config: reads alone do not move it (the driver loop terminates)."""
    dev = TestDevice()
    fn = machine.plug(dev)
    enable(fn)
    dev.host_set_value(1)
    g = gen(fn)
    for _ in range(300):
        value(fn)
        assert gen(fn) == g

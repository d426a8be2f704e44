"""The guest kernel's freeze_mode (reference §2.9) and the FREEZING driver when the device does not cooperate, as
our Linux patches do (``guest/linux/virtio-pci-freeze-mode.patch``, ``guest/linux/virtio-gpu-freezing.patch``):
FREEZE_S3 not reached in time is logged and the freeze goes on plainly (the sleep is not refused); a ``.freeze``
that fails withdraws its request (UNFREEZE, STATUS_FREEZING 0)."""

from __future__ import annotations

import pytest

from pyvirtio.clock import S
from pyvirtio.devices import TestDevice
from pyvirtio.errors import DriverError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.gpu.flavours import FreezingGpuDriver
from pyvirtio.guest.kernel import Guest, KernelConfig, SleepAborted
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import FreezeMode


def _freeze_mode_guest(state_bytes: int) -> tuple[Machine, TestDevice, Guest, VirtioDriver]:
    m = Machine(32 << 20)
    dev = TestDevice()
    dev.state_bytes = lambda: state_bytes  # type: ignore[method-assign]
    fn = m.plug(dev, freeze_mode_bit=44)
    kernel = KernelConfig(freeze_mode=True, freeze_mode_bit=44)
    g = Guest(m, kernel)
    drv = g.bind(VirtioDriver(m, fn, g.alloc, name="testdev", extra_features=kernel.driver_features()))
    return m, dev, g, drv


def test_freeze_s3_not_reached_in_time_falls_back_to_a_plain_freeze() -> None:
    m, dev, g, drv = _freeze_mode_guest(64 << 30)  # 16 s at 4 GiB/s; the kernel waits 10 s
    g.suspend()
    notes = g.pm["testdev"].notes
    assert len(notes) == 1 and notes[0].startswith("freeze_mode FREEZE_S3 failed") and "plain freeze" in notes[0]
    assert any(e.detail.get("event") == "freeze_mode_failed" for e in m.trace.events)
    assert drv.t.get_status() == 0  # the plain freeze's reset happened
    g.resume()
    m.run_for(10 * S)
    fm = m.function("testdev").freeze_mode
    assert fm is not None and fm.mode == FreezeMode.UNFREEZE and not dev.retain_state_on_reset


def test_a_failed_freeze_withdraws_freeze_s3() -> None:
    m, dev, g, drv = _freeze_mode_guest(1 << 20)

    def fail() -> None:
        raise DriverError("testdev: .freeze failed")

    drv.driver_freeze = fail  # type: ignore[method-assign]
    drv.has_pm_hooks = True  # type: ignore[misc]
    with pytest.raises(SleepAborted):
        g.suspend()
    fm = m.function("testdev").freeze_mode
    assert fm is not None and fm.mode == FreezeMode.UNFREEZE and not dev.retain_state_on_reset


def test_freezing_driver_withdraws_freezing_when_the_queues_do_not_drain() -> None:
    m = Machine(64 << 20)
    dev = PmGpu("gpu", offer_freezing=True)
    fn = m.plug(dev)
    g = Guest(m, KernelConfig())
    drv = g.bind(FreezingGpuDriver(m, fn, g.alloc, name="gpu"))

    def stuck() -> None:
        assert dev.freezing  # STATUS_FREEZING 1 was answered first
        raise DriverError("gpu: queues did not drain (-ETIMEDOUT)")

    drv.drain = stuck  # type: ignore[method-assign]
    with pytest.raises(SleepAborted):
        g.suspend()
    assert not dev.freezing and not dev.retain_state_on_reset

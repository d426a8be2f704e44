"""freeze_mode (reference §2.9), device side: writing the mode the device reports withdraws a change still under
way. Found by our Linux patch on a real kernel (``s3-freeze-mode-timeout`` in UML): a driver that gave up waiting
for FREEZE_S3 writes UNFREEZE at restore; the device must not reach FREEZE_S3 afterwards and keep its state on
every later reset."""

from __future__ import annotations

from pyvirtio.clock import MS, S
from pyvirtio.devices import TestDevice
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import CommonCfg, FreezeMode


def test_unfreeze_withdraws_a_freeze_still_under_way() -> None:
    m = Machine(32 << 20)
    dev = TestDevice()
    dev.state_bytes = lambda: 8 << 30  # type: ignore[method-assign]  # 2 s at 4 GiB/s
    fn = m.plug(dev, freeze_mode_bit=44)
    fm = fn.freeze_mode
    assert fm is not None
    kernel = KernelConfig(freeze_mode=True, freeze_mode_bit=44)
    g = Guest(m, kernel)
    drv = g.bind(VirtioDriver(m, fn, g.alloc, name="testdev", extra_features=kernel.driver_features()))
    drv.t.write(CommonCfg.FREEZE_MODE, FreezeMode.FREEZE_S3)
    m.run_for(100 * MS)
    assert drv.t.read(CommonCfg.FREEZE_MODE) == FreezeMode.UNFREEZE  # still under way
    drv.t.write(CommonCfg.FREEZE_MODE, FreezeMode.UNFREEZE)
    m.run_for(3 * S)
    assert fm.mode == FreezeMode.UNFREEZE and not dev.retain_state_on_reset
    assert [e.detail["event"] for e in m.trace.events if e.detail.get("event", "").startswith("freeze_mode")] == [
        "freeze_mode_withdrawn"]
    # a change requested again after the withdrawal completes as usual
    drv.t.write(CommonCfg.FREEZE_MODE, FreezeMode.FREEZE_S3)
    m.run_for(3 * S)
    assert fm.mode == FreezeMode.FREEZE_S3 and dev.retain_state_on_reset

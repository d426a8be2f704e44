"""The guest PM core's per-device paths (Linux virtio_pci_common.c dev_pm_ops), with virtio-rng and the test device."""

from __future__ import annotations

import pytest

from pyvirtio.clock import MS
from pyvirtio.devices import Rng, TestDevice
from pyvirtio.errors import DriverError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.freeze_mode import set_freeze_mode
from pyvirtio.guest.kernel import DevicePm, Guest, KernelConfig, PmPath
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.pci.function import ResetKind
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_DEFAULT, CommonCfg, FreezeMode, PowerState


def s3(machine: Machine, guest: Guest) -> None:
    guest.suspend()
    machine.stop_cpu()
    machine.run_for(100 * MS)
    machine.system_reset(ResetKind.WAKEUP)
    machine.start_cpu()
    guest.resume()


def setup(kernel: KernelConfig, *, nsr: bool, dev: Rng | None = None):  # type: ignore[no-untyped-def]
    m = Machine(32 << 20, seed=2)
    fn = m.plug(dev or Rng(), pcie_port=nsr, no_soft_reset=nsr)
    g = Guest(m, kernel)
    drv = g.bind(RngDriver(m, fn, g.alloc, name="rng", extra_features=kernel.driver_features()))
    return m, fn, g, drv


def test_pm_path_values_are_the_note_texts() -> None:
    """The PM path is an enum whose text is what notes and reports carry ("suspended by freeze-fallback")."""
    assert [str(p) for p in PmPath] == ["none", "suspend-bit", "freeze", "freeze-fallback"]
    assert f"suspended by {PmPath.FREEZE_FALLBACK}" == "suspended by freeze-fallback"
    assert PmPath("suspend-bit") is PmPath.SUSPEND_BIT and DevicePm().path is PmPath.NONE


def test_s3_without_no_soft_reset_freezes_and_the_wake_reset_hits() -> None:
    m, fn, g, drv = setup(KernelConfig(), nsr=False)
    s3(m, g)
    assert g.pm["rng"].path is PmPath.FREEZE
    assert m.trace.status_sequence("rng")[-6:] == [0x0F, 0x00, 0x01, 0x03, 0x0B, 0x0F]
    assert len(drv.read(8)) == 8


def test_s3_with_no_soft_reset_does_nothing_and_survives_the_wake_reset() -> None:
    """QEMU virtio_pci_no_soft_reset: NSR and D3hot -> the wake reset skips the function; Linux 6.8 does nothing."""
    m, fn, g, drv = setup(KernelConfig(pm_no_reset=True), nsr=True)
    s3(m, g)
    assert g.pm["rng"].path is PmPath.NONE
    assert m.trace.status_sequence("rng") == [0x01, 0x03, 0x0B, 0x0F]
    assert fn.power_state is PowerState.D0
    assert len(drv.read(8)) == 8


def test_old_kernel_ignores_no_soft_reset() -> None:
    """Linux < 6.8 has no vp_supports_pm_no_reset: it freezes even when the function advertises NSR."""
    m, fn, g, drv = setup(KernelConfig(pm_no_reset=False), nsr=True)
    s3(m, g)
    assert g.pm["rng"].path is PmPath.FREEZE


def test_s3_with_suspend_bit() -> None:
    m, fn, g, drv = setup(KernelConfig(pm_no_reset=True, suspend_bit=True), nsr=True)
    s3(m, g)
    assert g.pm["rng"].path is PmPath.SUSPEND_BIT
    assert m.trace.status_sequence("rng")[-5:] == [0x0F, 0x1F, 0x1B, 0x1F, 0x0F]


def test_suspend_bit_timeout_falls_back_to_freeze() -> None:
    """Fault: a device that never finishes quiescing; the driver times out and falls back; nothing hangs."""
    dev = Rng(bytes_per_us=1)
    m, fn, g, drv = setup(KernelConfig(pm_no_reset=True, suspend_bit=True, suspend_timeout=5 * MS), nsr=True,
                          dev=dev)
    drv.request(4096)
    assert m.run_until(lambda: dev.inflight() == 1, 1 * MS)
    dev.faults.quiesce_never_completes = True
    s3(m, g)
    assert g.pm["rng"].path is PmPath.FREEZE_FALLBACK
    dev.faults.quiesce_never_completes = False
    assert len(drv.read(8)) == 8


def test_failed_resume_recovers_through_full_restore() -> None:
    """Fault: the device fails to resume -> DEVICE_NEEDS_RESET; the driver recovers with a full restore."""
    dev = Rng()
    m, fn, g, drv = setup(KernelConfig(pm_no_reset=True, suspend_bit=True), nsr=True, dev=dev)
    g.suspend()
    dev.faults.resume_fails = True
    m.system_reset(ResetKind.WAKEUP)
    g.resume()
    assert "full restore" in " ".join(g.pm["rng"].notes)
    dev.faults.resume_fails = False
    assert drv.t.get_status() == 0x0F
    assert len(drv.read(8)) == 8


def test_reset_while_suspended_by_the_machine() -> None:
    """Fault: a reset while suspended (no NSR protection): the device is re-initialised on resume."""
    m = Machine(32 << 20)
    fn = m.plug(Rng())  # no PCIe port: the wake reset is not skipped
    g = Guest(m, KernelConfig(pm_no_reset=True, suspend_bit=True))
    drv = g.bind(RngDriver(m, fn, g.alloc, name="rng"))
    drv.suspend_bit()
    m.system_reset(ResetKind.WAKEUP)
    assert drv.t.get_status() == 0xFF  # config space reset: memory decoding off, BARs read all-ones
    drv.t.enable_device()
    assert drv.t.get_status() == 0
    with pytest.raises(DriverError):  # resume by DRIVER_OK on a reset device must not succeed
        drv.resume_bit(timeout=2 * MS)
    drv.freeze()
    drv.restore()
    assert len(drv.read(8)) == 8


def test_freeze_mode_handshake_takes_time_and_survives_reset() -> None:
    """freeze_mode (2023 v5 as reviewed): at offset 64, behind a feature bit, polled until reached."""
    m = Machine(32 << 20)
    dev = TestDevice()
    dev.state_bytes = lambda: 400 << 20  # type: ignore[method-assign]
    fn = m.plug(dev, freeze_mode_bit=44)
    fm = fn.freeze_mode
    assert fm is not None and fm.feature_bit == 44
    kernel = KernelConfig(freeze_mode=True, freeze_mode_bit=44)
    g = Guest(m, kernel)
    drv = g.bind(VirtioDriver(m, fn, g.alloc, name="testdev", extra_features=kernel.driver_features()))
    assert drv.has(44)
    drv.t.write(CommonCfg.FREEZE_MODE, FreezeMode.FREEZE_S3)
    assert drv.t.read(CommonCfg.FREEZE_MODE) == FreezeMode.UNFREEZE  # not reached yet
    t0 = m.now
    set_freeze_mode(drv, FreezeMode.FREEZE_S3)
    assert m.now - t0 >= 90 * MS  # 400 MiB at 4 GiB/s
    assert dev.retain_state_on_reset
    set_freeze_mode(drv, FreezeMode.UNFREEZE)
    # the whole S3 flow: the guest writes FREEZE_S3 in .suspend, the wake reset keeps state, restore unfreezes
    g.suspend()
    assert g.pm["testdev"].notes == ["freeze_mode FREEZE_S3"]
    m.system_reset(ResetKind.WAKEUP)
    assert fm.mode == FreezeMode.FREEZE_S3 and dev.retain_state_on_reset
    g.resume()
    assert fm.mode == FreezeMode.UNFREEZE and not dev.retain_state_on_reset
    assert drv.t.get_status() == 0x0F


def test_freeze_mode_rejects_undefined_values_and_missing_feature() -> None:
    m = Machine(32 << 20)
    fn = m.plug(TestDevice(), freeze_mode=True)
    fm = fn.freeze_mode
    assert fm is not None and fm.feature_bit == FREEZE_MODE_FEATURE_DEFAULT
    drv = VirtioDriver(m, fn, Guest(m, KernelConfig()).alloc, name="testdev")
    drv.probe()  # without the freeze_mode bit
    drv.t.write(CommonCfg.FREEZE_MODE, 3)
    m.run_for(10 * MS)
    assert fm.mode == 0
    assert any("freeze_mode" in str(e.detail["rule"]) for e in m.trace.violations())
    with pytest.raises(ValueError):
        m.plug(TestDevice("t2"), freeze_mode_bit=43)

"""Linux freeze/restore semantics (drivers/virtio/virtio.c virtio_device_freeze/virtio_device_restore)."""

from __future__ import annotations

from pyvirtio.clock import MS
from pyvirtio.devices import Rng, TestDevice
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import CommonCfg
from pyvirtio.trace import Kind


def test_freeze_restore_status_sequence_and_same_features(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Restore always resets first, then ACKNOWLEDGE, DRIVER, the same features, FEATURES_OK, queues, DRIVER_OK."""
    fn = machine.plug(Rng())
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    feats = fn.device.driver_features
    drv.freeze()
    drv.restore()
    assert machine.trace.status_sequence("rng") == [0x01, 0x03, 0x0B, 0x0F, 0x00, 0x01, 0x03, 0x0B, 0x0F]
    assert fn.device.driver_features == feats
    assert drv.t.queue_desc_addr(0) != 0
    assert len(drv.read(32)) == 32


def test_restore_resets_even_without_driver_hooks(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """A driver without .freeze/.restore (virtio-gpu before Linux 7.3): the core still resets and sets DRIVER_OK,
    but nobody re-creates the queues: the queue's descriptor address reads 0 (the black-screen bug)."""

    class NoHooks(RngDriver):
        has_pm_hooks = False

    fn = machine.plug(Rng())
    drv = NoHooks(machine, fn, alloc, name="rng")
    drv.probe()
    assert drv.t.queue_desc_addr(0) != 0
    drv.freeze()
    assert drv.t.get_status() == 0x0B  # bus master off -> DRIVER_OK dropped (QEMU)
    drv.restore()
    assert drv.t.get_status() == 0x0F
    assert drv.t.queue_desc_addr(0) == 0
    assert not drv.t.queue_enabled(0)


def test_inflight_requests_are_lost_by_a_freeze(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Linux virtio-rng freeze resets the device with requests in flight: they are abandoned, not completed."""
    dev = Rng(bytes_per_us=1)
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    req = drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    drv.freeze()
    machine.run_for(10 * MS)
    assert not req.done and drv.lost == [req]
    drv.restore()
    assert len(drv.read(8)) == 8


def test_config_change_while_frozen_is_replayed_once(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """virtio_config_core_disable/enable: a change that arrives while disabled is delivered once on restore."""
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev", use_msix=False)
    drv.probe()
    drv.config_disable()  # freeze's first step
    dev.host_set_value(9)
    machine.run_for(1 * MS)
    assert drv.config_changes_delivered == 0 and drv.config_change_pending
    drv.freeze()
    drv.restore()
    assert drv.config_changes_delivered == 1


def test_restore_rewrites_features_via_common_cfg(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    fn = machine.plug(Rng())
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    drv.freeze()
    n = len(machine.trace)
    drv.restore()
    writes = [e for e in machine.trace.events[n:] if e.kind is Kind.BAR_WRITE and e.detail["bar"] == 4
              and e.detail["offset"] == CommonCfg.DRIVER_FEATURE]
    assert len(writes) == 2

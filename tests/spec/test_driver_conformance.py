"""pyvirtio's own drivers, checked against the driver statements of virtio 1.4 by the register-level monitor.

Two halves:

* every driver flow — probe and remove of rng, gpu and the test device, every virtio-gpu command, freeze and
  restore, Device Suspend and resume, every PM profile through S3, s2idle and S4 — runs with each PCI function
  wrapped in :class:`~pyvirtio.conformance.driver_monitor.DriverMonitor`, and the monitor must record nothing
  (except the one deliberately non-conforming model, Linux <= 7.2's virtio-gpu without ``.freeze``/``.restore``,
  whose known violation the monitor must see);
* every monitor rule is shown to fire on an access sequence that breaks it (so the flows above can fail), on
  :class:`~pyvirtio.guest.fake.FakeFunction`, a function with no device behind it: the monitor works around any
  function.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyvirtio.conformance.driver_monitor as monitor_module
from pyvirtio.clock import MS
from pyvirtio.conformance import DriverMonitor, Rule
from pyvirtio.conformance.driver_monitor import Phase
from pyvirtio.devices import Gpu, Rng, TestDevice
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.fake import FakeFunction, FakePlatform, acknowledge_suspend
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.guest.rng import RngDriver
from pyvirtio.guest.transport import PciTransport
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.machine import Machine
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import DEFAULT_PROFILES, Mechanism, parse_profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell
from pyvirtio.report import Outcome, SleepState
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    COMMON_CFG_WIDTH,
    GPU_CONTROLQ,
    GPU_CTRL_HDR_SIZE,
    GPU_CURSORQ,
    PCI_COMMAND,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_OFFSET,
    CommonCfg,
    DeviceId,
    Feature,
    GpuCmd,
    GpuFeature,
    PciCommand,
    Status,
    bit,
)

#: Every driver statement the monitor checks: a flow that runs clean under it conforms to all of them.
MONITORED = tuple(sorted({sid for rule in Rule for sid in rule.ids}))
ROOT = Path(__file__).resolve().parents[2]


def test_monitored_ids_are_driver_statements_that_apply() -> None:
    """The monitor's rules name applicable driver statements of the inventory, and its docstring lists them."""
    from pyvirtio.spec.normative import Side, load_inventory

    inv = load_inventory()
    for rule in Rule:
        assert rule.ids and rule.text and rule.clause, rule
        for sid in rule.ids:
            assert sid in inv and inv[sid].side is Side.DRIVER and inv[sid].applies, (rule, sid)
    doc = monitor_module.__doc__ or ""
    for sid in MONITORED:
        block, n = sid.split("#")
        assert f"``{sid}``" in doc or (block.split(":")[1] in doc and f"#{n}``" in doc), sid


def test_the_monitor_imports_only_the_spec_layer_and_the_ground() -> None:
    """pyvirtio.conformance sits beside pyvirtio.guest: it may use spec and ground modules only, so it can wrap
    any function (the import-linter layers forbid the upward imports; this forbids the sideways ones)."""
    allowed = ("pyvirtio.spec", "pyvirtio.conformance", "pyvirtio.errors", "pyvirtio.clock", "pyvirtio.trace",
               "pyvirtio.memory", "pyvirtio.dma", "pyvirtio.report", "pyvirtio.atomicio")
    for path in sorted((ROOT / "pyvirtio" / "conformance").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("pyvirtio"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"


# ---------------------------------------------------------------------------------------------------------------
# pyvirtio's drivers under the monitor
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Rig:
    machine: Machine
    alloc: GuestAllocator
    monitors: list[DriverMonitor]

    def plug(self, device: VirtioDevice, **kw: object) -> DriverMonitor:
        mon = DriverMonitor(self.machine.plug(device, **kw))  # type: ignore[arg-type]
        self.monitors.append(mon)
        return mon

    def clean(self) -> None:
        report = "\n".join(m.report() for m in self.monitors if m.violations)
        assert not report, f"driver violations:\n{report}"


@pytest.fixture
def rig() -> Rig:
    m = Machine(64 << 20, seed=3)
    return Rig(m, GuestAllocator(m.memory, 1 << 20, 48 << 20), [])


class EchoDriver(VirtioDriver):
    """A minimal driver of the test device: its one queue echoes, its config has a writable ``scratch``."""

    device_id = DeviceId.TEST

    def echo(self, data: bytes) -> bytes:
        vq = self.vqs[0]
        src, dst = self.alloc.alloc_bytes(data, 8), self.alloc.alloc(len(data), 8)
        vq.add([(src, len(data))], [(dst, len(data))], "echo")
        self.kick(0)
        used: list[tuple[object, int]] = []
        assert self.platform.run_until(lambda: bool(used.extend(vq.drain_used()) or used), 10 * MS)
        out = self.alloc.mem.read(dst, used[0][1])
        self.alloc.free(src)
        self.alloc.free(dst)
        return out


def remove(drv: VirtioDriver) -> None:
    """Linux ``virtio_dev_remove``: the driver's remove resets the device and deletes its queues; the PCI
    function is disabled."""
    drv.driver_freeze()
    drv.t.disable_device()


@pytest.mark.spec(*MONITORED)
@pytest.mark.parametrize("kind", ["rng", "gpu", "testdev"])
def test_probe_use_and_remove_conform(rig: Rig, kind: str) -> None:
    """Probe (§3.1.1 initialisation), use, remove, probe again: the monitor records no driver violation and saw
    the device go live, be reset and go live again."""
    drv: VirtioDriver
    if kind == "rng":
        drv = RngDriver(rig.machine, rig.plug(Rng()), rig.alloc, name="rng")
    elif kind == "gpu":
        drv = GpuDriver(rig.machine, rig.plug(Gpu("gpu", num_scanouts=2, width=320, height=200)), rig.alloc)
    else:
        drv = EchoDriver(rig.machine, rig.plug(TestDevice()), rig.alloc, name="testdev")
    mon = rig.monitors[0]
    for _ in range(2):
        drv.probe()
        if isinstance(drv, RngDriver):
            assert len(drv.read(64)) == 64
        elif isinstance(drv, GpuDriver):
            assert drv.get_display_info()
        else:
            assert isinstance(drv, EchoDriver)
            assert drv.echo(b"ping") == b"ping"
            drv.t.config_write(4, 4, 0xC0FFEE)
            assert drv.t.config_read(4, 4) == 0xC0FFEE
        assert mon.phase is Phase.LIVE
        remove(drv)
    assert {Phase.RESET, Phase.FEATURES_OK, Phase.LIVE} <= set(mon.phases_seen)
    rig.clean()


def _raw(drv: GpuDriver, cmd: GpuCmd) -> None:
    """Submit ``cmd`` with a zeroed body (the device may answer an error: only the driver's accesses count)."""
    size = protocol.REQUEST_SIZE.get(cmd, GPU_CTRL_HDR_SIZE) - GPU_CTRL_HDR_SIZE
    queue = GPU_CURSORQ if cmd in (GpuCmd.UPDATE_CURSOR, GpuCmd.MOVE_CURSOR) else GPU_CONTROLQ
    req = drv.submit(cmd, bytes(size), queue=queue)
    drv.wait(req, check=False)


@pytest.mark.spec(*MONITORED)
def test_every_gpu_command_conforms(rig: Rig) -> None:
    """Every virtio-gpu command (§5.7.6), through the driver's own calls where it has one and raw otherwise,
    on a device offering virgl, context init, blobs, EDID and UUIDs: no driver violation."""
    mon = rig.plug(Gpu("gpu", num_scanouts=2, width=320, height=200, virgl=True, context_init=True))
    drv = GpuDriver(rig.machine, mon, rig.alloc, want_virgl=True, want_context_init=True)
    drv.probe()
    assert drv.has(GpuFeature.VIRGL) and drv.has(GpuFeature.RESOURCE_BLOB)
    drv.get_display_info()
    drv.get_edid(0)
    fb = drv.create_resource_2d(64, 64, drv.FB_FORMAT)
    drv.transfer_to_host_2d(fb, (0, 0, 64, 64), wait=True)
    drv.set_scanout(0, fb)
    drv.resource_flush(fb, (0, 0, 64, 64), wait=True)
    drv.assign_uuid(fb)
    drv.set_cursor(0, 5, 5)
    drv.move_cursor(0, 10, 10)
    drv.hide_cursor(0)
    blob = drv.create_blob(4096)
    drv.set_scanout_blob(1, blob, 16, 16, drv.FB_FORMAT, 64)
    ctx = drv.ctx_create("test", context_init=0)
    obj3d = drv.create_resource_3d(32, 32, ctx_id=ctx)
    drv.ctx_attach_resource(ctx, obj3d)
    drv.submit_3d(ctx, b"\0" * 16)
    drv.ctx_detach_resource(ctx, obj3d)
    drv.set_scanout(0, None)
    drv.detach_backing(fb)
    drv.unref(fb)
    drv.ctx_destroy(ctx)
    for cmd in GpuCmd:
        if cmd is not GpuCmd.STATUS_FREEZING:  # the abandoned 2023 proposal: only its flavour sends it
            _raw(drv, cmd)
    drv.wait_idle()
    device = rig.machine.function("gpu").device
    assert isinstance(device, Gpu)
    expected = {protocol.command_name(c) for c in GpuCmd if c is not GpuCmd.STATUS_FREEZING}
    assert expected <= set(device.commands), expected - set(device.commands)
    rig.clean()


@pytest.mark.spec(*MONITORED)
@pytest.mark.parametrize("kind", [GpuDriverKind.BASIC_HOOKS, GpuDriverKind.FREEZING, GpuDriverKind.S4_REPLAY])
def test_freeze_and_restore_conform(rig: Rig, kind: GpuDriverKind) -> None:
    """Freeze then restore (§3.1.1 again, with the features negotiated at probe) of rng and of each GPU driver
    flavour that has ``.freeze``/``.restore``, work in flight: no driver violation."""
    gdev = PmGpu("gpu", num_scanouts=2, width=320, height=200, offer_freezing=kind is GpuDriverKind.FREEZING)
    gmon = rig.plug(gdev)
    if kind is GpuDriverKind.FREEZING:
        gmon.extension_features = bit(GpuFeature.FREEZING)  # the 2023 proposal's bit 5 (non-standard)
    gdrv = FLAVOURS[kind](rig.machine, gmon, rig.alloc, name="gpu")
    rdrv = RngDriver(rig.machine, rig.plug(Rng(bytes_per_us=4)), rig.alloc, name="rng")
    guest = Guest(rig.machine, KernelConfig())
    guest.bind(gdrv)
    guest.bind(rdrv)
    rdrv.request(4096)
    guest.freeze_all()
    guest.restore_all()
    assert len(rdrv.read(32)) == 32
    assert gdrv.get_display_info()
    for mon in rig.monitors:
        assert mon.phases_seen.count(Phase.RESETTING) == 1 and mon.phase is Phase.LIVE
    rig.clean()


@pytest.mark.spec(*MONITORED)
def test_suspend_and_resume_conform(rig: Rig) -> None:
    """Device Suspend and resume (§3.4) with requests in flight, then normal use again, for rng, the test
    device and the GPU: no driver violation, and the monitor saw SUSPENDING, SUSPENDED, RESUMING, LIVE."""
    rdrv = RngDriver(rig.machine, rig.plug(Rng(bytes_per_us=4)), rig.alloc, name="rng")
    tdrv = EchoDriver(rig.machine, rig.plug(TestDevice()), rig.alloc, name="testdev")
    gdrv = GpuDriver(rig.machine, rig.plug(Gpu("gpu", num_scanouts=1, width=320, height=200)), rig.alloc)
    for d in (rdrv, tdrv, gdrv):
        d.probe()
    reqs = [rdrv.request(4096) for _ in range(2)]
    for d in (rdrv, tdrv, gdrv):
        d.suspend_bit()
    for d in (rdrv, tdrv, gdrv):
        d.resume_bit()
    assert rig.machine.run_until(lambda: all(r.done for r in reqs), 50 * MS)
    assert tdrv.echo(b"after") == b"after"
    assert gdrv.get_display_info()
    for mon in rig.monitors:
        seen = mon.phases_seen
        assert seen.index(Phase.SUSPENDING) < seen.index(Phase.SUSPENDED) < seen.index(Phase.RESUMING), seen
        assert mon.phase is Phase.LIVE
    rig.clean()


#: The deliberately non-conforming driver model: Linux <= 7.2's virtio-gpu has no .freeze/.restore, so after a
#: wake reset it kicks a queue nobody set up again (what the baseline profile measures).
KNOWN_NON_CONFORMING = {
    ("baseline", SleepState.S3): {Rule.QUEUE_NOT_SET_UP},
    ("baseline", SleepState.S2IDLE): {Rule.QUEUE_NOT_SET_UP},
}


def _extension_features(profile_name: str, device: str) -> int:
    """The non-standard bits a profile's drivers accept on purpose (the 2023 freeze_mode and FREEZING proposals)."""
    profile = parse_profile(profile_name)
    plan = profile.plan()
    bits = plan.driver_features
    if device == "gpu" and profile.has(Mechanism.GPU_FREEZING):
        bits |= bit(GpuFeature.FREEZING)
    return bits


@pytest.fixture
def monitored_plug(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], list[DriverMonitor]]]:
    """Make every ``Machine.plug`` return its function wrapped in a monitor (the drivers are built on it)."""
    made: list[DriverMonitor] = []
    profile: list[str] = [""]
    real = Machine.plug

    def plug(self: Machine, device: VirtioDevice, **kw: object) -> DriverMonitor:
        mon = DriverMonitor(real(self, device, **kw),  # type: ignore[arg-type]
                            extension_features=_extension_features(profile[0], device.name))
        made.append(mon)
        return mon

    monkeypatch.setattr(Machine, "plug", plug)

    def start(name: str) -> list[DriverMonitor]:
        profile[0] = name
        made.clear()
        return made

    yield start


@pytest.mark.spec(*MONITORED)
@pytest.mark.parametrize("sleep", SLEEP_STATES, ids=[s.value for s in SLEEP_STATES])
@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_every_pm_profile_conforms(monitored_plug: Callable[[str], list[DriverMonitor]], profile: str,
                                   sleep: SleepState) -> None:
    """Each PM profile through S3, s2idle and S4 (build_system + run_cell, the matrix's own path; S4 includes the
    boot kernel and the image kernel on the new machine): no driver violation, except the known one of the
    non-conforming Linux <= 7.2 model, which the monitor must report."""
    monitors = monitored_plug(profile)
    cfg = ScenarioConfig(resources=2, resource_size=64 << 10)
    cell = run_cell(parse_profile(profile), sleep, cfg)
    assert cell.outcome is Outcome.OK
    assert len(monitors) == (4 if sleep is SleepState.S4 else 2)  # S4: the new machine plugs both again
    broken = set().union(*(m.rules for m in monitors))
    assert broken == KNOWN_NON_CONFORMING.get((profile, sleep), set()), "\n".join(m.report() for m in monitors)
    if parse_profile(profile).has(Mechanism.SUSPEND_BIT) and sleep is not SleepState.S4:
        assert all(Phase.SUSPENDED in m.phases_seen for m in monitors)


# ---------------------------------------------------------------------------------------------------------------
# Each rule fires on an access sequence that breaks it (any function: here one with no device behind it)
# ---------------------------------------------------------------------------------------------------------------

V1 = bit(Feature.VERSION_1)
ACK, DRV, FOK, DOK = Status.ACKNOWLEDGE, Status.DRIVER, Status.FEATURES_OK, Status.DRIVER_OK


class Raw:
    """A register-level driver written out access by access (so the scenarios below do not depend on what the
    guest transport allows): every access goes through the monitor around a :class:`FakeFunction`."""

    def __init__(self, **kw: object) -> None:
        self.fn = FakeFunction(**kw)  # type: ignore[arg-type]
        self.mon = DriverMonitor(self.fn, name="fake")
        lay = self.mon.layout
        assert lay.common is not None and lay.notify is not None
        self.common, self.notify_region = lay.common, lay.notify
        self.mon.config_write(PCI_COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)

    # registers
    def w(self, field: CommonCfg, value: int) -> None:
        self.mon.bar_write(self.common.bar, self.common.offset + field, COMMON_CFG_WIDTH[field], value)

    def r(self, field: CommonCfg) -> int:
        return self.mon.bar_read(self.common.bar, self.common.offset + field, COMMON_CFG_WIDTH[field])

    def status(self) -> int:
        return self.r(CommonCfg.DEVICE_STATUS)

    def add(self, bits: int) -> None:
        self.w(CommonCfg.DEVICE_STATUS, self.status() | bits)

    def notify(self, queue: int, value: int | None = None, size: int = 2) -> None:
        self.w(CommonCfg.QUEUE_SELECT, queue)
        off = self.r(CommonCfg.QUEUE_NOTIFY_OFF) * self.mon.layout.notify_multiplier
        self.mon.bar_write(self.notify_region.bar, self.notify_region.offset + off, size,
                           queue if value is None else value)

    def config(self, offset: int, size: int, value: int | None = None) -> int:
        dev = self.mon.layout.device
        assert dev is not None
        if value is None:
            return self.mon.bar_read(dev.bar, dev.offset + offset, size)
        self.mon.bar_write(dev.bar, dev.offset + offset, size, value)
        return value

    # steps of §3.1.1, done right unless told otherwise
    def reset(self) -> None:
        self.w(CommonCfg.DEVICE_STATUS, 0)
        assert self.status() == 0

    def offered(self) -> int:
        feats = 0
        for sel in range(2):
            self.w(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            feats |= self.r(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return feats

    def accept(self, feats: int) -> None:
        for sel in range(2):
            self.w(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.w(CommonCfg.DRIVER_FEATURE, (feats >> (32 * sel)) & 0xFFFFFFFF)

    def negotiate(self, accept: int | None = None, *, read_offer: bool = True) -> None:
        self.reset()
        self.add(ACK)
        self.add(DRV)
        offered = self.offered() if read_offer else V1
        self.accept(offered if accept is None else accept)
        self.add(FOK)
        self.status()

    def queue(self, index: int = 0, size: int = 64, vector: int = VIRTIO_MSI_NO_VECTOR, *,
              read_back: bool = True) -> None:
        base = 0x10000 * (index + 1)
        self.w(CommonCfg.QUEUE_SELECT, index)
        self.w(CommonCfg.QUEUE_SIZE, size)
        for lo, addr in ((CommonCfg.QUEUE_DESC_LO, base), (CommonCfg.QUEUE_DRIVER_LO, base + 0x1000),
                         (CommonCfg.QUEUE_DEVICE_LO, base + 0x2000)):
            self.w(lo, addr)
            self.w(CommonCfg(lo + 4), 0)
        if vector != VIRTIO_MSI_NO_VECTOR:
            self.w(CommonCfg.QUEUE_MSIX_VECTOR, vector)
            if read_back:
                self.r(CommonCfg.QUEUE_MSIX_VECTOR)
        self.w(CommonCfg.QUEUE_ENABLE, 1)

    def live(self, accept: int | None = None, queues: tuple[int, ...] = (0,)) -> None:
        self.negotiate(accept)
        for q in queues:
            self.queue(q)
        self.add(DOK)

    def suspended(self) -> None:
        self.fn.on_status = acknowledge_suspend
        self.live(V1 | bit(Feature.SUSPEND))
        self.add(Status.SUSPEND)
        assert self.status() & Status.SUSPEND


def _status_cleared(f: Raw) -> None:
    f.live()
    f.w(CommonCfg.DEVICE_STATUS, ACK | DRV | FOK)


def _status_order(f: Raw) -> None:
    f.reset()
    f.w(CommonCfg.DEVICE_STATUS, ACK | DOK)


def _reinit_after_failed(f: Raw) -> None:
    f.reset()
    f.add(ACK)
    f.add(Status.FAILED)
    f.add(DRV)


def _refused(f: Raw) -> None:
    f.fn.refuse_features_ok = True
    f.negotiate()
    assert not f.status() & FOK


def _no_failed_after_refusal(f: Raw) -> None:
    _refused(f)
    f.w(CommonCfg.DEVICE_STATUS, f.status())


def _continued_after_refusal(f: Raw) -> None:
    _refused(f)
    f.queue()


def _reset_not_awaited(f: Raw) -> None:
    f.negotiate()
    f.w(CommonCfg.DEVICE_STATUS, 0)
    f.w(CommonCfg.DEVICE_STATUS, ACK)


def _features_unread(f: Raw) -> None:
    f.negotiate(V1, read_offer=False)


def _feature_not_offered(f: Raw) -> None:
    f.negotiate(V1 | bit(Feature.EVENT_IDX))


def _feature_as_offered(f: Raw) -> None:
    f.negotiate()  # accepts whatever is offered; the fixture table offers something the driver must decline


def _version_1_declined(f: Raw) -> None:
    f.negotiate(0)


def _features_after_features_ok(f: Raw) -> None:
    f.negotiate(V1)
    f.accept(V1 | bit(Feature.INDIRECT_DESC))


def _config_write_during_negotiation(f: Raw) -> None:
    f.reset()
    f.add(ACK)
    f.add(DRV)
    f.config(0, 4, 1)


def _notify_before_driver_ok(f: Raw) -> None:
    f.negotiate()
    f.queue()
    f.notify(0)


def _queue_not_set_up(f: Raw) -> None:
    f.live(queues=(0,))
    f.notify(1)


def _queue_after_driver_ok(f: Raw) -> None:
    f.live(queues=(0,))
    f.queue(1)


def _suspend_not_allowed(f: Raw) -> None:
    f.live(V1)  # VIRTIO_F_SUSPEND offered, not accepted
    f.add(Status.SUSPEND)


def _suspend_not_verified(f: Raw) -> None:
    f.live(V1 | bit(Feature.SUSPEND))  # the fake presents what is written: SUSPEND never completes
    f.add(Status.SUSPEND)
    f.w(CommonCfg.DEVICE_STATUS, ACK | DRV | FOK | DOK | Status.SUSPEND)


def _notify_while_suspended(f: Raw) -> None:
    f.suspended()
    f.notify(0)


def _config_write_while_suspended(f: Raw) -> None:
    f.suspended()
    f.config(0, 4, 1)


def _resume_not_awaited(f: Raw) -> None:
    f.suspended()
    f.add(DOK)
    f.notify(0)


def _read_only_field_written(f: Raw) -> None:
    f.negotiate()
    f.w(CommonCfg.NUM_QUEUES, 1)


def _queue_size_not_power_of_2(f: Raw) -> None:
    f.negotiate()
    f.queue(size=48)


def _queue_enabled_unconfigured(f: Raw) -> None:
    f.negotiate()
    f.w(CommonCfg.QUEUE_SELECT, 0)
    f.w(CommonCfg.QUEUE_DESC_LO, 0x10000)
    f.w(CommonCfg.QUEUE_ENABLE, 1)


def _queue_changed_while_enabled(f: Raw) -> None:
    f.live()
    f.w(CommonCfg.QUEUE_SELECT, 0)
    f.w(CommonCfg.QUEUE_DESC_LO, 0x40000)


def _queue_enable_zero(f: Raw) -> None:
    f.negotiate()
    f.queue()
    f.w(CommonCfg.QUEUE_ENABLE, 0)


def _queue_reset_not_awaited(f: Raw) -> None:
    f.live(V1 | bit(Feature.RING_RESET))
    f.w(CommonCfg.QUEUE_SELECT, 0)
    f.w(CommonCfg.QUEUE_RESET, 1)
    f.queue()  # re-enabled without reading queue_reset back as 0


def _access_width(f: Raw) -> None:
    f.mon.bar_read(f.common.bar, f.common.offset + CommonCfg.DEVICE_STATUS, 4)


def _capability_written(f: Raw) -> None:
    cap = f.mon.layout.vendor_caps[0]
    f.mon.config_write(cap.pos + VIRTIO_PCI_CAP_OFFSET, 4, 0)


def _vector_out_of_table(f: Raw) -> None:
    f.negotiate()
    f.w(CommonCfg.CONFIG_MSIX_VECTOR, f.fn.nvectors + 3)
    assert f.r(CommonCfg.CONFIG_MSIX_VECTOR) == VIRTIO_MSI_NO_VECTOR


def _vector_not_verified(f: Raw) -> None:
    f.negotiate()
    f.queue(vector=1, read_back=False)


def _isr_read_with_msix(f: Raw) -> None:
    f.live()
    msix = f.mon.layout.msix_cap
    f.mon.config_write(msix + PCI_MSIX_FLAGS, 2, f.mon.config_read(msix + PCI_MSIX_FLAGS, 2) | PCI_MSIX_FLAGS_ENABLE)
    isr = f.mon.layout.isr
    assert isr is not None
    f.mon.bar_read(isr.bar, isr.offset, 1)


def _optional_config_field(f: Raw) -> None:
    f.negotiate()  # a GPU that does not offer BLOB_ALIGNMENT
    f.config(16, 4)


def _notify_width(f: Raw) -> None:
    f.live()
    f.notify(0, size=4)


def _notify_value(f: Raw) -> None:
    f.live(queues=(0, 1))
    f.notify(0)
    f.notify(1, value=0)


#: One misbehaving access sequence per rule, and the fake function it runs on.
SCENARIOS: dict[Rule, tuple[Callable[[Raw], None], dict[str, object]]] = {
    Rule.STATUS_CLEARED: (_status_cleared, {}),
    Rule.STATUS_ORDER: (_status_order, {}),
    Rule.REINIT_AFTER_FAILED: (_reinit_after_failed, {}),
    Rule.NO_FAILED_AFTER_REFUSAL: (_no_failed_after_refusal, {}),
    Rule.CONTINUED_AFTER_REFUSAL: (_continued_after_refusal, {}),
    Rule.RESET_NOT_AWAITED: (_reset_not_awaited, {}),
    Rule.FEATURES_UNREAD: (_features_unread, {}),
    Rule.FEATURE_NOT_OFFERED: (_feature_not_offered, {}),
    Rule.FEATURE_DEPENDENCY: (_feature_as_offered,  # CONTEXT_INIT without VIRGL
                              {"device_id": DeviceId.GPU, "features": V1 | bit(GpuFeature.CONTEXT_INIT),
                               "queue_sizes": (64, 64)}),
    Rule.FEATURE_RESERVED: (_feature_as_offered, {"features": V1 | bit(44)}),
    Rule.VERSION_1_DECLINED: (_version_1_declined, {}),
    Rule.SR_IOV_ACCEPTED: (_feature_as_offered, {"features": V1 | bit(Feature.SR_IOV)}),  # no SR-IOV capability
    Rule.FEATURES_AFTER_FEATURES_OK: (_features_after_features_ok,
                                      {"features": V1 | bit(Feature.INDIRECT_DESC)}),
    Rule.CONFIG_WRITE_DURING_NEGOTIATION: (_config_write_during_negotiation, {"device_config": bytes(8)}),
    Rule.NOTIFY_BEFORE_DRIVER_OK: (_notify_before_driver_ok, {}),
    Rule.QUEUE_NOT_SET_UP: (_queue_not_set_up, {"queue_sizes": (64, 64)}),
    Rule.QUEUE_AFTER_DRIVER_OK: (_queue_after_driver_ok, {"queue_sizes": (64, 64)}),
    Rule.SUSPEND_NOT_ALLOWED: (_suspend_not_allowed, {"features": V1 | bit(Feature.SUSPEND)}),
    Rule.SUSPEND_NOT_VERIFIED: (_suspend_not_verified, {"features": V1 | bit(Feature.SUSPEND)}),
    Rule.NOTIFY_WHILE_SUSPENDED: (_notify_while_suspended, {"features": V1 | bit(Feature.SUSPEND)}),
    Rule.CONFIG_WRITE_WHILE_SUSPENDED: (_config_write_while_suspended,
                                        {"features": V1 | bit(Feature.SUSPEND), "device_config": bytes(8)}),
    Rule.RESUME_NOT_AWAITED: (_resume_not_awaited, {"features": V1 | bit(Feature.SUSPEND)}),
    Rule.READ_ONLY_FIELD_WRITTEN: (_read_only_field_written, {}),
    Rule.QUEUE_SIZE_NOT_POWER_OF_2: (_queue_size_not_power_of_2, {}),
    Rule.QUEUE_ENABLED_UNCONFIGURED: (_queue_enabled_unconfigured, {}),
    Rule.QUEUE_CHANGED_WHILE_ENABLED: (_queue_changed_while_enabled, {}),
    Rule.QUEUE_ENABLE_ZERO: (_queue_enable_zero, {}),
    Rule.QUEUE_RESET_NOT_AWAITED: (_queue_reset_not_awaited, {"features": V1 | bit(Feature.RING_RESET)}),
    Rule.ACCESS_WIDTH: (_access_width, {}),
    Rule.CAPABILITY_WRITTEN: (_capability_written, {}),
    Rule.VECTOR_OUT_OF_TABLE: (_vector_out_of_table, {}),
    Rule.VECTOR_NOT_VERIFIED: (_vector_not_verified, {}),
    Rule.ISR_READ_WITH_MSIX: (_isr_read_with_msix, {}),
    Rule.OPTIONAL_CONFIG_FIELD: (_optional_config_field,
                                 {"device_id": DeviceId.GPU, "features": V1, "device_config": bytes(20),
                                  "queue_sizes": (64, 64)}),
    Rule.NOTIFY_WIDTH: (_notify_width, {}),
    Rule.NOTIFY_VALUE: (_notify_value, {"queue_sizes": (64, 64)}),
}


def test_every_rule_has_a_misbehaving_sequence() -> None:
    """So that no rule of the monitor is untested (and the flow tests above can fail)."""
    assert set(SCENARIOS) == set(Rule)


@pytest.mark.parametrize(
    "rule", [pytest.param(r, id=r.name, marks=pytest.mark.spec(*r.ids)) for r in Rule])
def test_rule_is_flagged(rule: Rule) -> None:
    """A driver that breaks the statement (named by the rule's ids; §clause in the rule) is flagged with exactly
    that rule, and the access it happened at is named."""
    scenario, kw = SCENARIOS[rule]
    f = Raw(**kw)
    scenario(f)
    assert f.mon.rules == {rule}, f.mon.report()
    v = f.mon.violations[0]
    assert 0 <= v.access <= f.mon.accesses and rule.name in str(v) and v.detail


def test_the_same_sequences_done_right_are_clean() -> None:
    """The conforming counterparts of the scenarios: full init with MSI-X vectors read back, queue reset awaited
    then re-enabled, SUSPEND verified, resume awaited, optional field read only when offered."""
    f = Raw(features=V1 | bit(Feature.SUSPEND) | bit(Feature.RING_RESET), queue_sizes=(64, 64),
            device_config=bytes(8))
    f.fn.on_status = acknowledge_suspend
    f.negotiate()
    f.w(CommonCfg.CONFIG_MSIX_VECTOR, 0)
    assert f.r(CommonCfg.CONFIG_MSIX_VECTOR) == 0
    f.queue(0, vector=1)
    f.queue(1, vector=2)
    f.add(DOK)
    f.config(0, 4, 7)
    f.notify(0)
    f.w(CommonCfg.QUEUE_SELECT, 1)
    f.w(CommonCfg.QUEUE_RESET, 1)
    assert f.r(CommonCfg.QUEUE_RESET) == 0
    f.queue(1, size=32, vector=2)
    f.notify(1)
    f.add(Status.SUSPEND)
    assert f.status() & Status.SUSPEND and not f.status() & DOK
    f.add(DOK)
    assert f.status() & DOK
    f.notify(1)
    f.reset()
    assert not f.mon.violations, f.mon.report()
    g = Raw(device_id=DeviceId.GPU, features=V1 | bit(GpuFeature.RESOURCE_BLOB) | bit(GpuFeature.BLOB_ALIGNMENT),
            device_config=bytes(20), queue_sizes=(64, 64))
    g.negotiate()
    g.config(16, 4)
    assert not g.mon.violations, g.mon.report()


def test_extension_features_are_exempt_from_the_reserved_and_dependency_rules_only() -> None:
    """A profile that models the 2023 proposals accepts their bits on purpose: declared as extensions they are
    not flagged as reserved; a bit not offered still is."""
    f = Raw(features=V1 | bit(44))
    f.mon.extension_features = bit(44)
    f.negotiate()
    assert not f.mon.violations, f.mon.report()
    g = Raw(features=V1)
    g.mon.extension_features = bit(44)
    g.negotiate(V1 | bit(44))
    assert g.mon.rules == {Rule.FEATURE_NOT_OFFERED}


def test_the_monitor_is_transparent_and_forwards_attributes() -> None:
    """The monitor returns what the function returns, writes what the driver writes, and exposes the wrapped
    function's other attributes (so it can stand in for it where the machine's function is expected)."""
    fn = FakeFunction()
    mon = DriverMonitor(fn)
    PciTransport(mon, FakePlatform()).enable_device()
    assert mon.config_read(0, 2) == fn.config_read(0, 2)
    assert mon.features == fn.features and mon.refuse_vectors is False
    before = len(fn.log)
    common = mon.layout.common
    assert common is not None
    mon.bar_write(common.bar, common.offset + CommonCfg.DEVICE_STATUS, 1, 0)
    assert fn.status_writes[-1] == 0 and len(fn.log) == before + 1
    with pytest.raises(AttributeError):
        mon.no_such_attribute  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------
# Properties of the monitor's state machine
# ---------------------------------------------------------------------------------------------------------------

_ACCESS = st.tuples(st.sampled_from(["cr", "cw", "br", "bw"]), st.integers(0, 4),
                    st.sampled_from([0, 0x40, 0x50, 0x64, 0x74, 0x1000, 0x3000, *range(0, 64, 2)]),
                    st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF))


@settings(max_examples=60, deadline=None)
@given(st.lists(_ACCESS, max_size=60))
def test_any_access_sequence_is_forwarded_unchanged_and_never_raises(accesses: list[tuple[str, int, int, int,
                                                                                           int]]) -> None:
    """Whatever a (hostile) driver does, the monitor raises nothing and the device behind it sees exactly what
    it would see without the monitor: same values read, same trace on two identical machines."""
    machines = [Machine(8 << 20, seed=7) for _ in range(2)]
    plain = machines[0].plug(Rng())
    watched = DriverMonitor(machines[1].plug(Rng()))
    marks = [len(m.trace.events) for m in machines]  # the monitor reads the capability list once, at construction
    for kind, bar, off, size, value in accesses:
        off -= off % size
        results = []
        for fn in (plain, watched):
            if kind == "cr":
                results.append(fn.config_read(off, size))
            elif kind == "cw":
                fn.config_write(off, size, value & ((1 << (8 * size)) - 1))
            elif kind == "br":
                results.append(fn.bar_read(bar, off, size))
            else:
                fn.bar_write(bar, off, size, value & ((1 << (8 * size)) - 1))
        assert len(set(results)) <= 1
    for m in machines:
        m.run_for(1 * MS)
    assert [(e.t, e.kind, e.src, e.detail) for e in machines[0].trace.events[marks[0]:]] == \
        [(e.t, e.kind, e.src, e.detail) for e in machines[1].trace.events[marks[1]:]]
    assert watched.accesses == len(accesses)


_OPS = st.lists(st.sampled_from(["read", "freeze-restore", "suspend-resume", "reset-probe"]), max_size=8)


@settings(max_examples=25, deadline=None)
@given(_OPS)
def test_any_sequence_of_driver_flows_stays_clean(ops: list[str]) -> None:
    """The entropy driver through any interleaving of use, freeze/restore, SUSPEND/resume and re-probe: the
    monitor's view follows it (always LIVE in between) and records no violation."""
    m = Machine(16 << 20, seed=5)
    alloc = GuestAllocator(m.memory, 1 << 20, 8 << 20)
    mon = DriverMonitor(m.plug(Rng()))
    drv = RngDriver(m, mon, alloc, name="rng")
    drv.probe()
    for op in ops:
        if op == "read":
            assert len(drv.read(16)) == 16
        elif op == "freeze-restore":
            drv.freeze()
            drv.restore()
        elif op == "suspend-resume":
            drv.suspend_bit()
            drv.resume_bit()
        else:
            remove(drv)
            drv.probe()
        assert mon.phase is Phase.LIVE
    assert not mon.violations, mon.report()

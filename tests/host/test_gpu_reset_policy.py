"""virtio-gpu reset and the retain-state policy: one implementation in Gpu.on_reset, used by PmGpu's FREEZING
command and by the freeze_mode proposal alike (reference §2.8, §2.9; QEMU ``virtio_gpu_reset``)."""

from __future__ import annotations

from pyvirtio.host.gpu import Gpu
from pyvirtio.host.gpu.device import HANDLERS
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GPU_CONTROLQ, GpuCmd, GpuFeature, GpuFormat, GpuResp, Status, bit
from pyvirtio.trace import Kind

from .loopback import LoopbackDriver

OK = int(GpuResp.OK_NODATA)


def _call(drv: LoopbackDriver, cmd: int, body: bytes = b"") -> int:
    _, resp = drv.submit(GPU_CONTROLQ, gpu_wire.HDR.pack(cmd, 0, 0, 0, 0) + body, 24)
    drv.wait_used(GPU_CONTROLQ)
    return gpu_wire.CtrlHdr.unpack(drv.ctx.memory.read(resp, 24)).type


def _desktop(dev: Gpu, want: int = 0) -> LoopbackDriver:
    """A 64x64 resource with backing, shown on scanout 0."""
    drv = LoopbackDriver(dev)
    drv.init(want)
    backing = drv.alloc.alloc(64 * 64 * 4, 4096)
    assert _call(drv, GpuCmd.RESOURCE_CREATE_2D,
                 gpu_wire.CREATE_2D_BODY.pack(1, GpuFormat.B8G8R8X8_UNORM, 64, 64)) == OK
    assert _call(drv, GpuCmd.RESOURCE_ATTACH_BACKING,
                 gpu_wire.ATTACH_BODY.pack(1, 1) + gpu_wire.MEM_ENTRY.pack(backing, 64 * 64 * 4, 0)) == OK
    assert _call(drv, GpuCmd.SET_SCANOUT, gpu_wire.SET_SCANOUT_BODY.pack(0, 0, 64, 64, 0, 1)) == OK
    assert dev.scanouts[0].enabled and dev.resources[1].scanouts == {0}
    return drv


def test_reset_destroys_every_resource_and_scanout() -> None:
    """§2.4 / QEMU virtio_gpu_reset: a reset destroys every resource and disables every scanout."""
    dev = Gpu(width=64, height=64)
    drv = _desktop(dev)
    dev.write_status(0)
    assert dev.resources == {} and dev.hostmem == 0 and not dev.scanouts[0].enabled
    ev = [e for e in drv.ctx.trace.select(Kind.DEVICE) if e.detail.get("event") == "resources_destroyed"]
    assert ev[-1].detail == {"event": "resources_destroyed", "count": 1, "virgl": 0}


def test_retain_policy_keeps_resources_and_unbinds_scanouts() -> None:
    """With retain_state_on_reset (FREEZE_S3 / FREEZING) a reset keeps the resources and their host memory, and
    unbinds every scanout on both sides (QEMU's base reset still disables them): the driver replays its modeset."""
    dev = Gpu(width=64, height=64)
    _desktop(dev)
    mem = dev.hostmem
    assert dev.state_bytes() == mem > 0
    dev.retain_state_on_reset = True
    dev.write_status(0)
    assert set(dev.resources) == {1} and dev.hostmem == mem
    assert not dev.scanouts[0].enabled and dev.resources[1].scanouts == set()
    assert dev.quiesced() and dev.status == 0


def test_pmgpu_adds_status_freezing_to_a_copy_of_the_table() -> None:
    """PmGpu extends Gpu's command table with STATUS_FREEZING (0x0400) without changing Gpu's."""
    assert GpuCmd.STATUS_FREEZING not in HANDLERS and Gpu.handlers is HANDLERS
    assert set(PmGpu.handlers) == set(HANDLERS) | {GpuCmd.STATUS_FREEZING}


def test_status_freezing_sets_the_policy_that_on_reset_honours() -> None:
    """2023 FREEZING: STATUS_FREEZING(1) makes the next reset keep the resources; (0) restores normal resets."""
    dev = PmGpu(width=64, height=64, offer_freezing=True)
    drv = _desktop(dev, bit(GpuFeature.FREEZING))
    assert dev.negotiated(GpuFeature.FREEZING)
    assert _call(drv, GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(1)) == OK
    assert dev.freezing and dev.retain_state_on_reset
    dev.write_status(0)
    assert set(dev.resources) == {1}
    drv.init(bit(GpuFeature.FREEZING))
    assert _call(drv, GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(0)) == OK
    assert not dev.retain_state_on_reset
    dev.write_status(0)
    assert dev.resources == {}


def test_status_freezing_is_an_unknown_command_unless_offered() -> None:
    """Without offer_freezing, 0x0400 is an unknown command (§5.7.6.7 ERR_UNSPEC); offered but not negotiated,
    it is refused too (ERR_UNSPEC) and the policy stays off."""
    plain = PmGpu(width=64, height=64)
    drv = LoopbackDriver(plain)
    drv.init()
    assert _call(drv, GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(1)) == GpuResp.ERR_UNSPEC
    assert any("unknown" in str(e.detail["rule"]) for e in drv.ctx.trace.violations())
    offered = PmGpu(width=64, height=64, offer_freezing=True)
    drv = LoopbackDriver(offered)
    drv.init()  # FREEZING not accepted
    assert _call(drv, GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(1)) == GpuResp.ERR_UNSPEC
    assert not offered.retain_state_on_reset and offered.status & Status.DRIVER_OK

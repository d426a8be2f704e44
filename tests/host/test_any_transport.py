"""The device models run behind any transport: Rng and Gpu driven through their queues by a context that is not
a PCI function and a driver that is not the guest model (issue 8 item 2; the seam vhost-user will use)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu import Gpu
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.rng import EntropySource, Rng
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import (
    GPU_CONTROLQ,
    GPU_CURSORQ,
    GPU_MEM_ENTRY_SIZE,
    RNG_REQUESTQ,
    Feature,
    GpuCmd,
    GpuFeature,
    GpuFormat,
    GpuResp,
    Status,
    bit,
)
from pyvirtio.spec.gpu_formats import to_rgba

from .loopback import LoopbackContext, LoopbackDriver

HOST = Path(__file__).resolve().parents[2] / "pyvirtio" / "host"
#: The device core and the device models: what must not know which transport carries them.
DEVICE_MODULES = [HOST / "device.py", HOST / "context.py", HOST / "lifecycle.py", HOST / "rng.py",
                  HOST / "testdev.py", *sorted((HOST / "gpu").glob("*.py"))]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_device_modules_import_no_transport() -> None:
    """The device core and models reach the outside only through DeviceContext: no import of the PCI function,
    the machine, or the guest half."""
    assert len(DEVICE_MODULES) > 8
    for path in DEVICE_MODULES:
        bad = {m for m in _imports(path)
               if m.startswith(("pyvirtio.host.pci", "pyvirtio.machine", "pyvirtio.guest", "pyvirtio.pm"))}
        assert not bad, f"{path.name} imports {bad}"


def test_loopback_context_is_all_a_device_gets() -> None:
    """A device attached to a non-PCI context sees exactly that context."""
    ctx = LoopbackContext()
    dev = Rng()
    dev.attach(ctx)
    assert dev.ctx is ctx and all(q.mem is ctx.memory for q in dev.queues)


def test_rng_serves_entropy_without_pci() -> None:
    """virtio 1.4 §5.4.6: the device fills the device-writable buffer with random bytes; used length says how
    many. The used-buffer notification goes to the context (§2.7.10), not to an interrupt controller."""
    drv = LoopbackDriver(Rng(seed=7))
    feats = drv.init()
    assert feats & bit(Feature.SUSPEND) and feats & bit(Feature.VERSION_1)
    _, addr = drv.submit(RNG_REQUESTQ, b"", 48, token="r1")
    token, n = drv.wait_used(RNG_REQUESTQ)
    assert (token, n) == ("r1", 48)
    assert drv.ctx.memory.read(addr, 48) == EntropySource(7).read(48)
    assert drv.ctx.queue_notifications == [RNG_REQUESTQ]


def test_rng_suspend_and_resume_without_pci() -> None:
    """Device Suspend over a non-PCI context: in-flight requests complete before SUSPEND shows; resume takes it
    back; nothing in the lifecycle depends on the transport."""
    drv = LoopbackDriver(Rng(seed=1, bytes_per_us=1))
    drv.init()
    dev = drv.dev
    drv.submit(RNG_REQUESTQ, b"", 4096)
    drv.run_until(lambda: dev.inflight() == 1)
    dev.write_status(dev.status | Status.SUSPEND)
    assert dev.lifecycle is DeviceLifecycle.SUSPENDING
    assert drv.run_until(lambda: dev.lifecycle is DeviceLifecycle.SUSPENDED)
    assert dev.inflight() == 0 and drv.vqs[RNG_REQUESTQ].get_used() is not None
    assert dev.status & Status.SUSPEND and not dev.status & Status.DRIVER_OK
    dev.write_status(dev.status | Status.DRIVER_OK)
    assert drv.run_until(lambda: dev.lifecycle is DeviceLifecycle.LIVE)
    drv.submit(RNG_REQUESTQ, b"", 8)
    assert drv.wait_used(RNG_REQUESTQ)[1] == 8


def _cmd(cmd: int, body: bytes = b"") -> bytes:
    return gpu_wire.HDR.pack(cmd, 0, 0, 0, 0) + body


def _gpu_call(drv: LoopbackDriver, request: bytes, resp_len: int = 24) -> tuple[int, bytes]:
    _, resp = drv.submit(GPU_CONTROLQ, request, resp_len)
    _, n = drv.wait_used(GPU_CONTROLQ)
    raw = drv.ctx.memory.read(resp, n)
    return gpu_wire.CtrlHdr.unpack(raw).type, raw[24:]


def test_gpu_draws_a_scanout_without_pci() -> None:
    """virtio 1.4 §5.7.6.8 through a non-PCI context: GET_DISPLAY_INFO, RESOURCE_CREATE_2D, ATTACH_BACKING,
    TRANSFER_TO_HOST_2D, SET_SCANOUT and RESOURCE_FLUSH show the guest's pixels; UPDATE_CURSOR on the cursor
    queue binds the cursor (§5.7.6.10); a display hot-plug is a config notification to the context (§5.7.4)."""
    drv = LoopbackDriver(Gpu(width=64, height=48))
    feats = drv.init(bit(GpuFeature.EDID))
    assert feats & bit(GpuFeature.EDID)
    dev = drv.dev
    assert isinstance(dev, Gpu)
    resp, info = _gpu_call(drv, _cmd(GpuCmd.GET_DISPLAY_INFO), 24 + 16 * 24)
    assert resp == GpuResp.OK_DISPLAY_INFO and gpu_wire.DISPLAY_ONE.unpack_from(info)[2:5] == (64, 48, 1)

    w, h, fmt = 64, 48, GpuFormat.B8G8R8A8_UNORM
    pixels = np.random.default_rng(3).integers(0, 256, (h, w, 4), dtype=np.uint8)
    backing = drv.alloc.alloc_bytes(pixels.tobytes(), 4096)
    ok = int(GpuResp.OK_NODATA)
    assert _gpu_call(drv, _cmd(GpuCmd.RESOURCE_CREATE_2D, gpu_wire.CREATE_2D_BODY.pack(1, fmt, w, h)))[0] == ok
    attach = gpu_wire.ATTACH_BODY.pack(1, 1) + gpu_wire.MEM_ENTRY.pack(backing, w * h * 4, 0)
    assert len(attach) == 8 + GPU_MEM_ENTRY_SIZE
    assert _gpu_call(drv, _cmd(GpuCmd.RESOURCE_ATTACH_BACKING, attach))[0] == ok
    xfer = gpu_wire.TRANSFER_2D_BODY.pack(0, 0, w, h, 0, 1, 0)
    assert _gpu_call(drv, _cmd(GpuCmd.TRANSFER_TO_HOST_2D, xfer))[0] == ok
    assert _gpu_call(drv, _cmd(GpuCmd.SET_SCANOUT, gpu_wire.SET_SCANOUT_BODY.pack(0, 0, w, h, 0, 1)))[0] == ok
    assert _gpu_call(drv, _cmd(GpuCmd.RESOURCE_FLUSH, gpu_wire.FLUSH_BODY.pack(0, 0, w, h, 1, 0)))[0] == ok
    shown = dev.scanout_image(0)
    assert shown is not None
    assert np.array_equal(shown[..., :3], to_rgba(pixels, fmt)[..., :3])
    assert dev.scanouts[0].flushes == 1

    cursor = drv.alloc.alloc_bytes(bytes(64 * 64 * 4), 4096)
    assert _gpu_call(drv, _cmd(GpuCmd.RESOURCE_CREATE_2D, gpu_wire.CREATE_2D_BODY.pack(2, fmt, 64, 64)))[0] == ok
    attach = gpu_wire.ATTACH_BODY.pack(2, 1) + gpu_wire.MEM_ENTRY.pack(cursor, 64 * 64 * 4, 0)
    assert _gpu_call(drv, _cmd(GpuCmd.RESOURCE_ATTACH_BACKING, attach))[0] == ok
    drv.submit(GPU_CURSORQ, _cmd(GpuCmd.UPDATE_CURSOR, gpu_wire.CURSOR_BODY.pack(0, 5, 6, 0, 2, 1, 1, 0)), 0)
    assert drv.wait_used(GPU_CURSORQ)[1] == 0
    c = dev.scanouts[0].cursor
    assert (c.resource_id, c.x, c.y) == (2, 5, 6)

    n0 = drv.ctx.config_notifications
    dev.hotplug(0, True, 80, 60)
    assert drv.ctx.config_notifications == n0 + 1 and dev.events_read == 1


def test_device_core_runs_on_the_context_clock() -> None:
    """The device schedules every step on ``ctx.scheduler``: a device whose context has its own clock works on
    that clock's time, whatever the clock is."""
    ctx = LoopbackContext(seed=5)
    ctx.scheduler.now = 10**12  # any epoch: a real-time scheduler starts somewhere else than 0
    drv = LoopbackDriver(Rng(), ctx)
    drv.init()
    drv.submit(RNG_REQUESTQ, b"", 16)
    drv.wait_used(RNG_REQUESTQ)
    assert ctx.scheduler.now > 10**12
    assert all(e.t >= 10**12 for e in ctx.trace)
    assert isinstance(drv.dev, VirtioDevice) and drv.dev.now == ctx.scheduler.now

"""The guest driver (Linux drivers/gpu/drm/virtio semantics) and its object list."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pyvirtio.errors import DriverTimeout
from pyvirtio.guest.gpu.driver import (
    BackingRange,
    CursorBinding,
    GpuCommandError,
    GpuDriver,
    GpuObject,
    ObjectKind,
    ScanoutBinding,
)
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind
from pyvirtio.host.gpu.device import Gpu, Pending
from pyvirtio.spec.constants import GpuBlobMem, GpuFormat

from .helpers import Rig, make_rig


@pytest.fixture
def chains(rig: Rig) -> Iterator[list[tuple[int, list[int], list[int]]]]:
    """Record (command, readable segment lengths, writable segment lengths) of every control chain."""
    seen: list[tuple[int, list[int], list[int]]] = []
    orig = Gpu._prepare

    def spy(self: Gpu, chain):  # type: ignore[no-untyped-def]
        p: Pending = orig(self, chain)
        seen.append((p.hdr.type if p.hdr else -1, [n for _, n in chain.readable], [n for _, n in chain.writable]))
        return p

    Gpu._prepare = spy  # type: ignore[method-assign]
    yield seen
    Gpu._prepare = orig  # type: ignore[method-assign]


def test_probe_queries_display_and_edid_then_sets_up_framebuffers(rig: Rig) -> None:
    """§5.7.5: the driver SHOULD query display info (and EDID when negotiated) and use it for the initial setup."""
    drv, dev = rig.drv, rig.dev
    assert drv.num_scanouts == 2 and drv.num_capsets == 0 and drv.blob_alignment == 4096
    assert [(m.width, m.height, m.enabled) for m in drv.display_info[:2]] == [(320, 200, True)] * 2
    assert set(drv.edids) == {0, 1} and all(sum(e) % 256 == 0 for e in drv.edids.values())
    assert dev.commands["GET_DISPLAY_INFO"] == 1 and dev.commands["GET_EDID"] == 2
    for sid, fb in drv.framebuffers.items():
        res = dev.resources[fb.id]
        assert (fb.kind, fb.format, fb.width, fb.height) == (ObjectKind.TWO_D, GpuFormat.B8G8R8X8_UNORM, 320, 200)
        assert res.format == GpuFormat.B8G8R8X8_UNORM
        assert [(r.addr, r.length) for r in fb.backing] == [(e.addr, e.length) for e in res.backing or []]
        assert fb.scanouts == {sid} and res.scanouts == {sid} and fb.attached
        assert fb.scanout_bindings == {sid: ScanoutBinding((0, 0, 320, 200))}
    assert not drv.errors


def test_chain_framing_like_linux(rig: Rig, chains: list[tuple[int, list[int], list[int]]]) -> None:
    """virtio_gpu_queue_ctrl_buffer: [request] readable, [response] writable; mem entries / 3D streams as a second
    readable segment; cursor commands carry no response buffer."""
    drv = rig.drv
    drv.get_display_info()
    obj = drv.create_resource_2d(16, 16)
    drv.set_cursor(0, 1, 1)
    by_cmd = {c: (r, w) for c, r, w in chains}
    assert by_cmd[0x100] == ([24], [408])
    assert by_cmd[0x101] == ([40], [24])
    assert by_cmd[0x106] == ([32, 16 * len(obj.backing)], [24])
    assert 0x300 not in by_cmd  # cursor commands went to the cursor queue
    assert rig.dev.scanouts[0].cursor.resource_id == drv.cursors[0].id


def test_object_list_records_every_object(rig: Rig) -> None:
    drv = rig.drv
    fbs = {fb.id for fb in drv.framebuffers.values()}
    assert set(drv.objects.ids()) == fbs
    cur = drv.set_cursor(1, 5, 5, hot=(2, 3))
    assert cur.kind is ObjectKind.CURSOR and (cur.width, cur.height) == (64, 64)
    assert cur.cursor_scanouts == {1} and cur.cursor_bindings == {1: CursorBinding(5, 5, 2, 3)}
    drv.move_cursor(1, 7, 8)
    assert cur.cursor_bindings == {1: CursorBinding(7, 8, 2, 3)}
    assert cur.format == GpuFormat.B8G8R8A8_UNORM
    blob = drv.show_blob(0, np.zeros((32, 32, 4), np.uint8))
    assert blob.kind is ObjectKind.BLOB and blob.blob is not None
    assert (blob.blob.blob_mem, blob.blob.size) == (GpuBlobMem.GUEST, 4096)
    assert blob.scanouts == {0}
    assert blob.scanout_bindings == {0: ScanoutBinding((0, 0, 32, 32), (32, 32, GpuFormat.B8G8R8X8_UNORM, 128, 0))}
    assert not drv.framebuffers[0].scanouts  # the scanout moved to the blob
    u = drv.assign_uuid(blob)
    assert drv.objects[blob.id].uuid == u == rig.dev.resources[blob.id].uuid
    extra = drv.create_resource_2d(100, 10, GpuFormat.R8G8B8A8_UNORM)
    assert extra.size == 100 * 10 * 4 and all(isinstance(r, BackingRange) for r in extra.backing)
    assert drv.objects.ids() == [*sorted(fbs), cur.id, blob.id, extra.id]
    assert all(o.restorable for o in drv.objects)
    before = rig.alloc.allocated_bytes
    drv.unref(extra)
    assert extra.id not in drv.objects and extra.id not in rig.dev.resources
    assert rig.alloc.allocated_bytes == before - 100 * 10 * 4  # backing freed once the device answered


def test_virgl_objects_are_listed_but_not_restorable(virgl: Rig) -> None:
    drv = virgl.drv
    cid = drv.ctx_create("ctx")
    r3d = drv.create_resource_3d(64, 64, ctx_id=cid)
    drv.ctx_attach_resource(cid, r3d)
    host_blob = drv.create_blob(8192, blob_mem=GpuBlobMem.HOST3D, blob_id=1, ctx_id=cid)
    plain = drv.create_resource_2d(16, 16)
    drv.submit_3d(cid, b"\x00" * 64)
    assert r3d.kind is ObjectKind.VIRGL and host_blob.kind is ObjectKind.VIRGL
    assert r3d.ctx_ids == {cid} and host_blob.ctx_ids == {cid} and host_blob.backing == []
    assert [o.id for o in drv.objects.restorable()] == [plain.id]
    assert virgl.dev.resources[r3d.id].virgl and virgl.dev.resources[host_blob.id].virgl
    assert not virgl.dev.resources[plain.id].virgl
    assert virgl.dev.contexts[cid].submits == 1
    drv.ctx_destroy(cid)
    assert not r3d.ctx_ids and cid not in virgl.dev.contexts


def test_error_response_raises_and_is_recorded(rig: Rig) -> None:
    fb = rig.drv.framebuffers[0]
    with pytest.raises(GpuCommandError, match="INVALID_SCANOUT_ID"):
        rig.drv.set_scanout(7, fb)
    assert rig.drv.errors[-1] == (0x103, 0x1202)


def test_draw_with_a_callable(rig: Rig) -> None:
    def gradient(w: int, h: int) -> np.ndarray:
        img = np.zeros((h, w, 4), np.uint8)
        img[..., 0] = np.arange(w, dtype=np.uint16)[None, :] % 256
        img[..., 3] = 255
        return img

    rig.drv.draw(1, gradient)
    assert np.array_equal(rig.dev.scanout_image(1), gradient(320, 200))


def test_pixels_in_guest_memory_are_b8g8r8x8(rig: Rig) -> None:
    """The fbdev format: bytes B, G, R, X in guest memory (checked at the backing, not through the device)."""
    img = np.zeros((200, 320, 4), np.uint8)
    img[0, 0] = (10, 20, 30, 255)
    rig.drv.draw(0, img)
    fb = rig.drv.framebuffers[0]
    assert rig.alloc.mem.read(fb.backing[0].addr, 3) == bytes([30, 20, 10])


def test_no_pm_hooks_like_linux_7_2(rig: Rig) -> None:
    """Linux <= 7.2 virtio-gpu has no .freeze/.restore: the core freezes without touching the driver's queues."""
    assert GpuDriver.has_pm_hooks is False and FLAVOURS[GpuDriverKind.NO_HOOKS] is GpuDriver
    vqs = list(rig.drv.vqs)
    rig.drv.freeze()
    assert rig.drv.vqs == vqs  # stale queues: the known black screen after resume
    assert all(cls.has_pm_hooks for kind, cls in FLAVOURS.items() if kind is not GpuDriverKind.NO_HOOKS)
    assert set(FLAVOURS) == set(GpuDriverKind)


def test_config_change_in_probe_is_replayed(rig: Rig) -> None:
    """A display change that arrives while config delivery is disabled is handled when it is enabled again."""
    rig.drv.config_disable()
    rig.dev.resize(0, 400, 300)
    rig.machine.run_for(1_000_000)
    assert rig.drv.display_events_handled == 0 and rig.drv.config_change_pending
    rig.drv.config_enable()
    rig.machine.run_until(lambda: not rig.drv.pending)
    assert rig.drv.display_events_handled == 1 and rig.drv.display_info[0].width == 400


def test_without_edid_feature_no_get_edid() -> None:
    r = make_rig(want_edid=False)
    assert r.dev.commands["GET_EDID"] == 0 and r.drv.edids == {}


class ReplayDriver(GpuDriver):
    """What a Linux 7.3-style S4 driver does with the object list: re-create, then replay the modeset."""

    has_pm_hooks = True

    def driver_restore(self) -> None:
        super().driver_restore()
        self.device_ready()
        for obj in self.objects.restorable():
            self.recreate(obj)
        self.replay_modeset()


def desktop(rig: Rig) -> list[np.ndarray | None]:
    rng = np.random.default_rng(3)
    rig.drv.draw(0, rng.integers(0, 256, (200, 320, 4), dtype=np.uint8))
    rig.drv.show_blob(1, rng.integers(0, 256, (200, 320, 4), dtype=np.uint8))
    rig.drv.set_cursor(0, 100, 50, hot=(3, 3))
    return [rig.dev.scanout_image(i) for i in range(2)]


def test_object_list_is_enough_to_restore_after_a_reset() -> None:
    """The object list carries what a restore needs: after freeze (reset: QEMU destroys everything) and restore,
    re-creating the restorable objects and replaying the modeset gives back the same screens."""
    rig = make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200}, driver_cls=ReplayDriver)
    before = desktop(rig)
    ids = sorted(rig.dev.resources)
    rig.drv.freeze()
    assert rig.dev.resources == {} and rig.dev.scanout_image(0) is None
    rig.drv.restore()
    assert sorted(rig.dev.resources) == ids
    after = [rig.dev.scanout_image(i) for i in range(2)]
    assert all(a is not None and b is not None and np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert rig.drv.probe_alive()


def test_without_pm_hooks_the_screen_stays_black_after_restore(rig: Rig) -> None:
    """Linux <= 7.2: the core resets and sets DRIVER_OK, the driver never re-creates queues or resources."""
    desktop(rig)
    rig.drv.freeze()
    rig.drv.t.reset()  # the S3 wake-up reset (QEMU pc_machine_wakeup)
    rig.drv.restore()
    assert rig.dev.resources == {} and rig.dev.scanout_image(0) is None
    with pytest.raises(DriverTimeout):
        rig.drv.draw(0, np.zeros((200, 320, 4), np.uint8), timeout=50_000_000)


def test_freeze_reclaims_requests_in_flight() -> None:
    rig = make_rig(dev_kw={"width": 320, "height": 200}, driver_cls=ReplayDriver)
    fb = rig.drv.framebuffers[0]
    req = rig.drv.transfer_to_host_2d(fb, (0, 0, 320, 200))
    used = rig.alloc.allocated_bytes
    rig.drv.freeze()
    assert req.lost and req in rig.drv.lost and rig.drv.pending == 0
    assert rig.alloc.allocated_bytes < used
    with pytest.raises(ValueError, match="cannot be re-created"):
        rig.drv.recreate(GpuObject(99, ObjectKind.VIRGL))

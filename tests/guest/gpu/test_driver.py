"""The guest driver (Linux drivers/gpu/drm/virtio semantics) and its object list."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from host.gpu.helpers import Rig, make_rig

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
from pyvirtio.guest.gpu.flavours import FLAVOURS, FreezingGpuDriver, GpuDriverKind, S4ReplayGpuDriver
from pyvirtio.guest.kernel import PmEvent
from pyvirtio.host.gpu.device import Gpu, Pending
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.spec.constants import GpuBlobMem, GpuCfg, GpuFeature, GpuFormat


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
    """Every object is listed with what re-creating it needs, and its bindings are the one record of what each
    scanout shows (SET_SCANOUT / SET_SCANOUT_BLOB, §5.7.6.8) and of each cursor (UPDATE_CURSOR, §5.7.6.10)."""
    drv = rig.drv
    fb0 = drv.framebuffers[0]
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
    assert not fb0.scanouts and drv.framebuffers[0] is blob  # the scanout moved to the blob
    assert drv.cursors == {1: cur} and drv.cursor_positions == {1: (7, 8)}
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


def desktop(rig: Rig) -> list[np.ndarray | None]:
    """Scanout 0: the fbdev framebuffer drawn; scanout 1: a guest blob; a cursor with a hotspot on scanout 0."""
    rng = np.random.default_rng(3)
    mode = rig.drv.display_info[0]
    rig.drv.draw(0, rng.integers(0, 256, (mode.height, mode.width, 4), dtype=np.uint8))
    rig.drv.show_blob(1, rng.integers(0, 256, (mode.height, mode.width, 4), dtype=np.uint8))
    rig.drv.set_cursor(0, 100, 50, hot=(3, 3))
    return [rig.dev.scanout_image(i) for i in range(2)]


def same_screens(rig: Rig, before: list[np.ndarray | None]) -> bool:
    after = [rig.dev.scanout_image(i) for i in range(len(before))]
    return all(a is not None and b is not None and np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def cursor_state(rig: Rig) -> tuple[int, int, int, int, int, bytes]:
    c = rig.dev.scanouts[0].cursor
    return c.resource_id, c.x, c.y, c.hot_x, c.hot_y, c.image.tobytes()


def test_s4_replay_flavour_restores_every_binding_after_a_reset() -> None:
    """Linux 7.3 restore list (the production s4-replay flavour): after the hibernation freeze (objects unreferenced,
    reset) and restore, re-creating the restorable objects and replaying the modeset from the object bindings gives
    back the same screens: the fbdev framebuffer on 0, the blob on 1 (SET_SCANOUT_BLOB, §5.7.6.8), the cursor with
    its hotspot (UPDATE_CURSOR, §5.7.6.10)."""
    rig = make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200},
                   driver_cls=FLAVOURS[GpuDriverKind.S4_REPLAY])
    before = desktop(rig)
    ids = sorted(rig.dev.resources)
    cursor = cursor_state(rig)
    drv = rig.drv
    assert isinstance(drv, S4ReplayGpuDriver)
    drv.pm_notifier(PmEvent.HIBERNATION_PREPARE)
    drv.freeze()
    assert rig.dev.resources == {} and rig.dev.scanout_image(0) is None
    drv.restore()
    drv.pm_notifier(PmEvent.POST_HIBERNATION)
    assert sorted(rig.dev.resources) == ids and drv.restored_objects == len(ids)
    assert rig.dev.scanouts[1].resource_id == drv.framebuffers[1].id and drv.framebuffers[1].blob is not None
    assert same_screens(rig, before)
    assert cursor_state(rig) == cursor and cursor[:5] == (drv.cursors[0].id, 100, 50, 3, 3)
    assert drv.probe_alive() and not drv.errors


def test_basic_hooks_flavour_replays_the_modeset_but_the_reset_lost_the_objects() -> None:
    """2023 series (basic-hooks): the queues come back and the modeset is replayed from the bindings, but the
    reset destroyed every resource (QEMU virtio_gpu_reset) and nothing re-creates them: the replay's SET_SCANOUT
    is answered ERR_INVALID_RESOURCE_ID (§5.7.6.8) and the screens stay dark, the driver carries on."""
    rig = make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200},
                   driver_cls=FLAVOURS[GpuDriverKind.BASIC_HOOKS])
    desktop(rig)
    rig.drv.freeze()
    rig.drv.restore()
    assert rig.dev.resources == {} and rig.dev.scanout_image(0) is None and rig.dev.scanout_image(1) is None
    assert (0x103, 0x1203) in rig.drv.errors and (0x10D, 0x1203) in rig.drv.errors  # SET_SCANOUT(_BLOB)
    assert rig.drv.probe_alive()


def test_freezing_flavour_keeps_resources_and_replays_the_blob() -> None:
    """2023 FREEZING proposal: STATUS_FREEZING 1 before the reset keeps the resources on the device, which still
    disables every scanout; the modeset replay from the bindings shows the framebuffer, the blob and the cursor
    again. Bit 5 means FREEZING for this driver: it reads no blob_alignment config field."""
    # 256x128: a blob size the device accepts although it reads bit 5 as BLOB_ALIGNMENT when checking sizes
    rig = make_rig(dev_kw={"num_scanouts": 2, "width": 256, "height": 128, "offer_freezing": True},
                   driver_cls=FLAVOURS[GpuDriverKind.FREEZING], dev_cls=PmGpu)
    drv = rig.drv
    assert isinstance(drv, FreezingGpuDriver)
    assert drv.has(GpuFeature.FREEZING) and not drv.has_blob_alignment and drv.blob_alignment == 1
    before = desktop(rig)
    ids = sorted(rig.dev.resources)
    drv.freeze()
    assert sorted(rig.dev.resources) == ids and rig.dev.scanout_image(1) is None
    drv.restore()
    assert same_screens(rig, before) and not drv.errors and not rig.violations()


def test_freezing_flavour_setup_is_the_base_setup_without_blob_alignment() -> None:
    """FreezingGpuDriver.setup is GpuDriver.setup: the same config reads (§5.7.4), minus blob_alignment."""
    reads: dict[str, list[int]] = {}
    for kind, dev_cls, dev_kw in ((GpuDriverKind.NO_HOOKS, Gpu, {}),
                                  (GpuDriverKind.FREEZING, PmGpu, {"offer_freezing": True})):
        rig = make_rig(dev_kw=dev_kw, driver_cls=FLAVOURS[kind], dev_cls=dev_cls, probe=False)
        seen: list[int] = []
        orig = rig.drv.t.config_read

        def spy(offset: int, size: int, orig: Callable[[int, int], int] = orig, seen: list[int] = seen) -> int:
            seen.append(offset)
            return orig(offset, size)

        rig.drv.t.config_read = spy  # type: ignore[method-assign]
        rig.drv.probe()
        reads[kind.value] = sorted(set(seen))
    assert GpuCfg.BLOB_ALIGNMENT in reads["no-hooks"]
    assert reads["freezing"] == [r for r in reads["no-hooks"] if r != GpuCfg.BLOB_ALIGNMENT]


def test_without_pm_hooks_the_screen_stays_black_after_restore(rig: Rig) -> None:
    """Linux <= 7.2: the core resets and sets DRIVER_OK, the driver never re-creates queues or resources."""
    desktop(rig)
    rig.drv.freeze()
    rig.drv.t.reset()  # the S3 wake-up reset (QEMU pc_machine_wakeup)
    rig.drv.restore()
    assert rig.dev.resources == {} and rig.dev.scanout_image(0) is None
    with pytest.raises(DriverTimeout):
        rig.drv.draw(0, np.zeros((200, 320, 4), np.uint8), timeout=50_000_000)


def test_freeze_recipe_reclaims_requests_in_flight(rig: Rig) -> None:
    """The driver's ``.freeze`` recipe after the reset: requests the device never answered are taken back
    (virtqueue_detach_unused_buf), their guest memory freed, marked lost; the object list is untouched."""
    fb = rig.drv.framebuffers[0]
    req = rig.drv.transfer_to_host_2d(fb, (0, 0, 320, 200))
    used = rig.alloc.allocated_bytes
    objects = [o.to_dict() for o in rig.drv.objects]
    rig.drv.driver_freeze()
    assert req.lost and req in rig.drv.lost and rig.drv.pending == 0 and rig.drv.vqs == []
    assert rig.alloc.allocated_bytes < used
    assert [o.to_dict() for o in rig.drv.objects] == objects
    with pytest.raises(ValueError, match="cannot be re-created"):
        rig.drv.recreate(GpuObject(99, ObjectKind.VIRGL))


def test_hidden_cursor_object_is_reused(rig: Rig) -> None:
    """UPDATE_CURSOR with resource 0 hides the cursor (§5.7.6.10); the next set_cursor uses the same object."""
    cur = rig.drv.set_cursor(0, 1, 2)
    rig.drv.hide_cursor(0)
    assert rig.drv.cursors == {} and rig.drv.cursor_position(0) == (0, 0) and not rig.dev.scanouts[0].cursor.visible
    assert rig.drv.set_cursor(1, 3, 4) is cur and rig.drv.cursors == {1: cur}


def test_draw_on_a_blob_scanout_flushes_without_transfer() -> None:
    """Drawing on a scanout that shows a guest blob writes its guest memory and flushes (RESOURCE_FLUSH,
    §5.7.6.8); TRANSFER_TO_HOST_2D is for resources with host storage, not blobs."""
    rig = make_rig(dev_kw={"width": 64, "height": 32})
    blob = rig.drv.show_blob(0, np.zeros((32, 64, 4), np.uint8))
    img = np.full((32, 64, 4), (1, 2, 3, 255), np.uint8)
    rig.drv.draw(0, img)
    assert rig.drv.framebuffers[0] is blob and np.array_equal(rig.dev.scanout_image(0), img)
    assert not rig.drv.errors

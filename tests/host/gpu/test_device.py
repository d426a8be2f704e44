"""Device behaviour over virtual time: fences, in-flight work and SUSPEND, display events, reset, host memory."""

from __future__ import annotations

import pytest

from pyvirtio.clock import US
from pyvirtio.host.gpu import Gpu
from pyvirtio.spec.constants import GpuFormat, Status
from pyvirtio.trace import Kind

from .helpers import (
    B8G8R8X8,
    ERR_OOM,
    ERR_RESOURCE,
    OK_NODATA,
    RESOURCE_UNREF,
    Rig,
    create_2d,
    make_rig,
    resp_type,
    rid_cmd,
    transfer,
)


@pytest.mark.spec("dev:gpu/fencing#1")
def test_fenced_response_only_when_done_5_7_6_5(rig: Rig) -> None:
    """§5.7.6.5 / §5.7.6.7 MUST: a fenced command is returned only after its processing finished. A transfer
    costs bytes / bandwidth of virtual time, during which the request is in flight."""
    fb = rig.drv.framebuffers[0]
    t0 = rig.machine.now
    req = rig.drv.transfer_to_host_2d(fb, (0, 0, 320, 200))
    assert req.fence_id is not None
    rig.machine.run_for(rig.dev.latency + 1 * US)  # the device has popped it
    assert not req.done and rig.dev.inflight() == 1 and not rig.dev.quiesced()
    rig.drv.wait(req)
    cost = (320 * 200 * 4 * US) // rig.dev.bytes_per_us
    assert rig.machine.now - t0 >= cost
    assert req.resp_flags & 1 and req.resp_fence_id == req.fence_id
    assert rig.drv.last_fence == req.fence_id
    assert rig.dev.inflight() == 0 and rig.dev.quiesced()


def test_fences_complete_in_order(rig: Rig) -> None:
    """Commands run in order, so completing fence N means every fence < N completed (§5.7.6.7 timelines)."""
    fb = rig.drv.framebuffers[0]
    done: list[int] = []
    reqs = [rig.drv.transfer_to_host_2d(fb, (0, 0, 320, h)) for h in (200, 10, 100)]
    for r in reqs:
        r.on_done = lambda q: done.append(q.resp_fence_id)
    rig.drv.wait_fence(reqs[-1].fence_id or 0)
    assert done == [r.fence_id for r in reqs]


@pytest.mark.spec("dev:suspend#8")
def test_suspend_waits_for_inflight_commands(rig: Rig) -> None:
    """Device Suspend (§3.4.2, SHOULD): in-flight requests complete (used, notified) before SUSPEND shows."""
    fb = rig.drv.framebuffers[0]
    req = rig.drv.transfer_to_host_2d(fb, (0, 0, 320, 200))
    rig.machine.run_until(lambda: rig.dev.inflight() == 1)
    rig.drv.suspend_bit()
    assert req.done
    st = rig.drv.t.get_status()
    assert st & Status.SUSPEND and not st & Status.DRIVER_OK
    assert rig.dev.quiesced()
    rig.drv.resume_bit()
    # a request the device had not consumed yet stays in the ring across SUSPEND and runs after resume
    req = rig.drv.transfer_to_host_2d(fb, (0, 0, 320, 200))
    rig.drv.suspend_bit()
    assert not req.done and rig.dev.inflight() == 0
    rig.drv.resume_bit()
    rig.drv.wait(req)
    assert rig.drv.probe_alive()


def test_hotplug_sets_event_display_and_driver_requeries_5_7_4_2(rig: Rig) -> None:
    """§5.7.4.2: EVENT_DISPLAY in events_read + config notification; the driver SHOULD re-issue GET_DISPLAY_INFO
    (and GET_EDID), then clears the event with events_clear."""
    irqs = len(rig.machine.interrupts)
    rig.dev.resize(1, 640, 480)
    assert rig.dev.events_read == 1
    rig.drv.wait_idle()
    rig.machine.run_until(lambda: rig.drv.display_events_handled == 1 and not rig.drv.pending)
    assert len(rig.machine.interrupts) > irqs
    assert rig.drv.display_events_handled == 1
    assert rig.dev.events_read == 0  # cleared through events_clear
    m = rig.drv.display_info[1]
    assert (m.width, m.height, m.enabled) == (640, 480, True)
    edid = rig.drv.edids[1]
    assert (edid[56] | (edid[58] >> 4) << 8, edid[59] | (edid[61] >> 4) << 8) == (640, 480)
    rig.dev.hotplug(1, False)
    rig.machine.run_until(lambda: rig.drv.display_events_handled == 2 and not rig.drv.pending)
    assert not rig.drv.display_info[1].enabled


@pytest.mark.spec("dev:suspend#3", "dev:suspend#4", "dev:suspend#5")
def test_hotplug_while_suspended_is_deferred(rig: Rig) -> None:
    """§3.4.2: while suspended the device MUST NOT change its config space nor send a config notification; the
    change is applied and MUST be notified on resume."""
    rig.drv.suspend_bit()
    irqs = len(rig.machine.interrupts)
    rig.dev.resize(0, 800, 600)
    rig.machine.run_for(1000 * US)
    assert rig.dev.events_read == 0 and rig.dev.displays[0].width == 320
    assert len(rig.machine.interrupts) == irqs
    rig.drv.resume_bit()
    rig.machine.run_until(lambda: rig.drv.display_events_handled == 1 and not rig.drv.pending)
    assert rig.drv.display_info[0].width == 800


def test_reset_destroys_all_resources_like_qemu(rig: Rig) -> None:
    """QEMU virtio_gpu_reset: every resource destroyed, scanouts and cursor disabled; traced with the count."""
    rig.drv.set_cursor(0, 10, 10)
    n = len(rig.dev.resources)
    assert n == 3 and rig.dev.scanout_image(0) is not None
    rig.drv.t.reset()
    assert rig.dev.resources == {} and rig.dev.hostmem == 0
    assert all(not s.enabled and not s.cursor.visible for s in rig.dev.scanouts)
    assert rig.dev.scanout_image(0) is None
    ev = [e for e in rig.machine.trace.select(Kind.DEVICE, "gpu") if e.detail.get("event") == "resources_destroyed"]
    assert ev[-1].detail["count"] == n
    # the guest's objects are gone on the host: Linux <= 7.2 keeps drawing into nothing
    rig.drv.probe()  # a fresh driver instance would re-probe; the old ids are unknown now
    assert rig.dev.resources.keys() == {fb.id for fb in rig.drv.framebuffers.values()}


def test_host_memory_limit_out_of_memory() -> None:
    dev = make_rig(dev_kw={"host_memory_limit": 64 * 64 * 4}, create_framebuffers=False)
    assert resp_type(dev.drv.call(create_2d(1, B8G8R8X8, 64, 64))) == OK_NODATA
    assert resp_type(dev.drv.call(create_2d(2, B8G8R8X8, 1, 1))) == ERR_OOM
    assert 2 not in dev.dev.resources
    dev.drv.call(rid_cmd(RESOURCE_UNREF, 1))
    assert resp_type(dev.drv.call(create_2d(2, B8G8R8X8, 1, 1))) == OK_NODATA


def test_unref_disables_the_scanout_showing_it(rig: Rig) -> None:
    fb = rig.drv.framebuffers[1]
    rig.drv.unref(fb)
    assert rig.dev.scanout_image(1) is None and fb.id not in rig.dev.resources
    assert resp_type(rig.drv.call(transfer(fb.id, 0, 0, 1, 1, 0))) == ERR_RESOURCE


@pytest.mark.spec("dev:features#1")
def test_constructor_feature_options() -> None:
    """Bit 5 is BLOB_ALIGNMENT (spec) or the abandoned FREEZING (2023), never both; §2.2.2 the device MUST NOT
    offer a feature that requires one it does not offer (CONTEXT_INIT needs VIRGL, BLOB_ALIGNMENT needs
    RESOURCE_BLOB: refused)."""
    g = Gpu(offer_freezing=True)
    assert g.offered & (1 << 5) and not g.offer_blob_alignment and g.config_size() == 16
    with pytest.raises(ValueError, match="bit 5"):
        Gpu(offer_freezing=True, offer_blob_alignment=True)
    with pytest.raises(ValueError, match="VIRGL"):
        Gpu(context_init=True)
    with pytest.raises(ValueError, match="RESOURCE_BLOB"):
        Gpu(resource_blob=False, offer_blob_alignment=True)
    assert not Gpu(resource_blob=False).offered & (1 << 5)
    for n in (0, 17):
        with pytest.raises(ValueError):
            Gpu(num_scanouts=n)
    with pytest.raises(ValueError):
        Gpu(width=4096)  # EDID detailed timings hold 12 bits
    g = Gpu(num_scanouts=3, enabled_scanouts=1)
    assert [d.enabled for d in g.displays] == [True, False, False]


def test_only_enabled_displays_get_framebuffers() -> None:
    r = make_rig(dev_kw={"num_scanouts": 3, "enabled_scanouts": 2, "width": 64, "height": 32})
    assert sorted(r.drv.framebuffers) == [0, 1]
    assert r.dev.scanout_image(2) is None
    r = make_rig(dev_kw={"num_scanouts": 1, "enabled_scanouts": 0})
    assert r.drv.framebuffers[0].width == 1024  # §5.7.5 MAY fall back to 1024x768 at display 0
    assert GpuFormat(r.drv.framebuffers[0].format) is GpuFormat.B8G8R8X8_UNORM


@pytest.mark.spec("dev:gpu/init#1", "dev:gpu/init#2")
@pytest.mark.parametrize("edid", [True, False])
def test_display_info_and_edid_drive_the_first_modeset(edid: bool) -> None:
    """§5.7.5 (in the device requirements, addressed to the driver): the driver SHOULD query GET_DISPLAY_INFO
    and use it for the initial scanout set-up, and with EDID negotiated SHOULD also fetch each EDID. The device
    answers both from the host's displays: after probing a 3-head device whose displays have different modes
    (the third disconnected), the device saw GET_DISPLAY_INFO and — only with EDID — one GET_EDID per scanout;
    each enabled scanout shows a framebuffer of exactly its display's mode, whose EDID preferred mode matches."""
    r = make_rig(dev_kw={"num_scanouts": 3, "enabled_scanouts": 2, "width": 320, "height": 200, "edid": edid},
                 probe=False)
    r.dev.displays[1].width, r.dev.displays[1].height = 640, 480
    r.drv.probe()
    assert r.dev.commands["GET_DISPLAY_INFO"] >= 1
    assert r.dev.commands["GET_EDID"] == (3 if edid else 0)
    sizes = [(r.dev.scanout_width(i), r.dev.scanout_height(i)) for i in range(3)]
    assert sizes == [(320, 200), (640, 480), (0, 0)]
    for i, (w, h) in enumerate(sizes[:2]):
        if edid:
            e = r.drv.edids[i]
            assert (e[56] | (e[58] >> 4) << 8, e[59] | (e[61] >> 4) << 8) == (w, h)
    assert not r.dev.status & Status.DEVICE_NEEDS_RESET

"""pyvirtio's Gpu served over vhost-user, with its display socket (QEMU docs/interop/vhost-user-gpu.rst), driven by
the Python front-end on virtual time: negotiation, scanouts and updates equal to the model's own composition,
cursor, coalescing under a slow display, fault injection, a hostile display peer, the dump."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.cli import main
from pyvirtio.host.gpu import edid
from pyvirtio.host.gpu.display import Rect
from pyvirtio.spec.constants import Feature, GpuCmd, GpuFeature, GpuFormat, GpuResp, bit
from pyvirtio.spec.gpu_formats import to_rgba
from pyvirtio.vhost_user import SERVABLE
from pyvirtio.vhost_user.gpu_display import DumpTrigger, GpuDisplay, GpuDisplayFactory, clip, union
from pyvirtio.vhost_user.gpu_protocol import (
    CURSOR_BYTES,
    HEADER,
    GpuRequest,
    ReplyParser,
    parse_display_info,
    parse_edid,
)
from pyvirtio.vhost_user.messages import Request, pack_state
from pyvirtio.vhost_user.served_gpu import ServedGpu, gpu_command

from .frontend import Frontend
from .gpu_peer import DisplayPeer, GpuDriver, pattern

W, H = 64, 48


def make(faults: tuple[str, ...] = (), dump: Path | None = None, trigger: DumpTrigger | None = None,
         mem: int = 8 << 20) -> Frontend:
    spec = SERVABLE["gpu"]
    if dump is not None or trigger is not None:
        spec = dataclasses.replace(spec, extension=GpuDisplayFactory(dump, trigger))
    fe = Frontend(spec, faults=faults, mem_size=mem)
    start(fe)
    return fe


def start(fe: Frontend) -> None:
    """What QEMU does for vhost-user-gpu-pci: both rings, VERSION_1 and EDID."""
    fe.init()
    fe.set_memory()
    fe.set_features(bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(GpuFeature.EDID))
    fe.setup_ring(0, 64)
    fe.setup_ring(1, 16)


@pytest.fixture
def fe() -> Iterator[Frontend]:
    f = make()
    yield f
    f.close()


def gpu(fe: Frontend) -> ServedGpu:
    dev = fe.server.device
    assert isinstance(dev, ServedGpu)
    return dev


def ext(fe: Frontend) -> GpuDisplay:
    e = fe.session.extension
    assert isinstance(e, GpuDisplay)
    return e


def shown(peer: DisplayPeer, w: int, h: int) -> np.ndarray:
    """The front-end's picture: every UPDATE painted, in order, onto a w x h x8r8g8b8 surface, as RGB."""
    surf = np.zeros((h, w, 4), dtype=np.uint8)
    for m in peer.updates():
        sid, x, y, uw, uh = (m.u32(i) for i in range(5))
        assert sid == 0
        surf[y:y + uh, x:x + uw] = np.frombuffer(m.payload[20:], dtype=np.uint8).reshape(uh, uw, 4)
    return surf[..., [2, 1, 0]]


def test_negotiation_display_info_and_pyvirtios_edid(fe: Frontend) -> None:
    """virtio 1.4 §5.7.6.8: GET_DISPLAY_INFO answers the front-end's mode; GET_EDID answers pyvirtio's own EDID
    for it (QEMU's EDID, asked with GET_EDID on the display socket, is only reported)."""
    peer = DisplayPeer(fe, mode=(1024, 768))
    names = [m.name for m in peer.read()]
    assert names[:5] == ["GET_PROTOCOL_FEATURES", "SCANOUT", "SET_PROTOCOL_FEATURES", "GET_DISPLAY_INFO",
                         "GET_EDID"], names
    set_pf = next(m for m in peer.msgs if m.request == GpuRequest.SET_PROTOCOL_FEATURES)
    assert int.from_bytes(set_pf.payload, "little") == 0x1  # EDID only, never DMABUF2
    g = GpuDriver(fe)
    info = g.display_info()
    assert int.from_bytes(info[:4], "little") == GpuResp.OK_DISPLAY_INFO
    assert [int.from_bytes(info[24 + 4 * i:28 + 4 * i], "little") for i in range(5)] == [0, 0, 1024, 768, 1]
    assert g.get_edid() == edid.generate(1024, 768, serial=0)
    rec = fe.server.monitor.record.frontend["gpu_display"]
    assert rec["display_info"][0] == {"scanout": 0, "x": 0, "y": 0, "width": 1024, "height": 768, "enabled": True}
    assert rec["frontend_edid"]["0"]["size"] == 128 and rec["protocol_features"] == "0x3 offered, 0x1 enabled"
    assert "driver-ok" in [e["what"] for e in rec["events"]]


def test_scanout_and_flush_show_exactly_what_the_model_composes(fe: Frontend) -> None:
    """§5.7.6.8 SET_SCANOUT + RESOURCE_FLUSH: the front-end gets SCANOUT (size) then UPDATEs, and its picture is
    the model's scanout_image pixel for pixel, also after a partial transfer and flush."""
    peer = DisplayPeer(fe)
    peer.read()
    g = GpuDriver(fe)
    pix = pattern(W, H)
    addr = g.image(1, pix)
    g.set_scanout(0, 1, 0, 0, W, H)
    msgs = peer.read()
    assert [m.name for m in msgs] == ["SCANOUT", "UPDATE"]
    assert [msgs[0].u32(i) for i in range(3)] == [0, W, H]
    model = gpu(fe).scanout_image(0)
    assert model is not None
    assert np.array_equal(shown(peer, W, H), model[..., :3])
    # change a band, transfer and flush only it
    band = pattern(W, 8, seed=2)
    pix[10:18] = band
    fe.mem.write(addr + 10 * W * 4, band.tobytes())
    g.transfer(1, 0, 10, W, 8)
    g.flush(1, 0, 10, W, 8)
    last = peer.read()[-1]
    assert last.name == "UPDATE" and [last.u32(i) for i in range(5)] == [0, 0, 10, W, 8]
    model = gpu(fe).scanout_image(0)
    assert model is not None
    assert np.array_equal(shown(peer, W, H), model[..., :3])
    assert np.array_equal(model[..., :3], to_rgba(pix, GpuFormat.B8G8R8X8_UNORM)[..., :3])


def test_a_scanout_of_part_of_a_resource_in_another_format(fe: Frontend) -> None:
    """The scanned-out rectangle of a larger resource, in a format that is not x8r8g8b8, converted like the
    model's composition; a flush outside the rectangle sends nothing."""
    peer = DisplayPeer(fe)
    g = GpuDriver(fe)
    pix = pattern(W, H, seed=3)
    g.image(2, pix, GpuFormat.R8G8B8A8_UNORM)
    g.set_scanout(0, 2, 16, 8, 32, 24)
    peer.read()
    model = gpu(fe).scanout_image(0)
    assert model is not None and model.shape == (24, 32, 4)
    assert np.array_equal(shown(peer, 32, 24), model[..., :3])
    n = len(peer.updates())
    g.flush(2, 0, 40, 8, 8)  # below the scanned-out rectangle
    peer.read()
    assert len(peer.updates()) == n


def test_unref_and_reset_disable_the_scanout(fe: Frontend) -> None:
    """RESOURCE_UNREF of the scanned-out resource, then the front-end stopping every ring (the guest reset the
    device: the gpu's stop policy resets the model): SCANOUT 0x0 each time it changes."""
    peer = DisplayPeer(fe)
    g = GpuDriver(fe)
    g.image(1, pattern(W, H))
    g.set_scanout(0, 1, 0, 0, W, H)
    g.unref(1)
    sc = [m for m in peer.read() if m.name == "SCANOUT"]
    assert [(m.u32(1), m.u32(2)) for m in sc] == [(0, 0), (W, H), (0, 0)]
    g.image(3, pattern(W, H))
    g.set_scanout(0, 3, 0, 0, W, H)
    peer.read()
    fe.stop_ring(0)
    fe.stop_ring(1)
    assert gpu(fe).scanouts[0].enabled is False
    assert [(m.u32(1), m.u32(2)) for m in peer.read() if m.name == "SCANOUT"] == [(0, 0)]
    events = [e["what"] for e in fe.server.monitor.record.frontend["gpu_display"]["events"]]
    assert events.count("queue_stopped") == 2 and events.count("queue_started") == 2


def test_cursor_messages(fe: Frontend) -> None:
    """§5.7.6.10: UPDATE_CURSOR -> CURSOR_UPDATE with the 64x64 image as a8r8g8b8, hot spot and position;
    MOVE_CURSOR -> CURSOR_POS; UPDATE_CURSOR of resource 0 -> CURSOR_POS_HIDE."""
    peer = DisplayPeer(fe)
    g = GpuDriver(fe)
    cur = pattern(64, 64, seed=5)
    g.image(7, cur, GpuFormat.B8G8R8A8_UNORM)
    g.cursor(GpuCmd.UPDATE_CURSOR, 0, 100, 200, rid=7, hot=(5, 9))
    g.cursor(GpuCmd.MOVE_CURSOR, 0, 110, 210)
    g.cursor(GpuCmd.UPDATE_CURSOR, 0, 110, 210, rid=0)
    msgs = [m for m in peer.read() if m.name.startswith("CURSOR")]
    assert [m.name for m in msgs] == ["CURSOR_UPDATE", "CURSOR_POS", "CURSOR_POS_HIDE"]
    up = msgs[0]
    assert [up.u32(i) for i in range(5)] == [0, 100, 200, 5, 9]
    assert len(up.payload) == 20 + CURSOR_BYTES
    assert up.payload[20:] == cur.tobytes()  # B8G8R8A8 bytes are a8r8g8b8 little-endian
    assert [msgs[1].u32(i) for i in range(3)] == [0, 110, 210]


def test_a_slow_display_gets_the_newest_pixels_and_never_a_backlog() -> None:
    """While the front-end does not read, flushes only accumulate damage (at most one frame waits); when it
    reads again the last UPDATE carries the newest pixels."""
    fe = make(mem=16 << 20)
    try:
        peer = DisplayPeer(fe, answer=True)
        peer.read()
        g = GpuDriver(fe)
        w, h = 512, 512  # 1 MiB a frame: more than the socket buffers
        addr = g.image(1, pattern(w, h))
        g.set_scanout(0, 1, 0, 0, w, h)
        frames = [pattern(w, h, seed=10 + i) for i in range(12)]
        queued = []
        for f in frames:
            fe.mem.write(addr, f.tobytes())
            g.transfer(1, 0, 0, w, h)
            g.flush(1, 0, 0, w, h)
            ch = ext(fe).channel
            assert ch is not None
            queued.append(ch.queued)
        assert max(queued) <= w * h * 4 + 4096, queued
        peer.read()
        assert len(peer.updates()) < len(frames)
        model = gpu(fe).scanout_image(0)
        assert model is not None
        assert np.array_equal(shown(peer, w, h), model[..., :3])
    finally:
        fe.close()


def test_error_fault_answers_err_unspec_and_is_no_violation() -> None:
    """--fault error=RESOURCE_FLUSH: every flush gets VIRTIO_GPU_RESP_ERR_UNSPEC (§5.7.6.7) and shows nothing;
    the monitor records the fault (first firing) and no driver violation."""
    fe = make(faults=("error=resource_flush",))
    try:
        peer = DisplayPeer(fe)
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))
        g.set_scanout(0, 1, 0, 0, W, H)
        peer.read()
        n = len(peer.updates())
        a = g.flush(1, 0, 0, W, H)
        b = g.flush(1, 0, 0, W, H)
        assert g.resp_type(a) == g.resp_type(b) == GpuResp.ERR_UNSPEC
        peer.read()
        assert len(peer.updates()) == n
        rec = fe.server.monitor.record
        assert rec.violations == 0
        assert [f.what for f in rec.faults] == ["armed", "error"]
        assert gpu(fe).injected_errors == 2
    finally:
        fe.close()


def test_display_socket_closed_then_a_new_one_announces_again(fe: Frontend) -> None:
    """QEMU closes the display socket when the guest clears DRIVER_OK and sends a new one at the next DRIVER_OK:
    the new display gets SCANOUT and a whole UPDATE of what the model shows before anything else."""
    peer = DisplayPeer(fe)
    g = GpuDriver(fe)
    g.image(1, pattern(W, H))
    g.set_scanout(0, 1, 0, 0, W, H)
    peer.read()
    peer.close()
    fe.pump()
    assert ext(fe).channel is None
    peer2 = DisplayPeer(fe)
    msgs = [m for m in peer2.read() if m.name in ("SCANOUT", "UPDATE")]
    assert [m.name for m in msgs] == ["SCANOUT", "UPDATE"] and msgs[0].u32(1) == W
    model = gpu(fe).scanout_image(0)
    assert model is not None and np.array_equal(shown(peer2, W, H), model[..., :3])
    events = [e["what"] for e in fe.server.monitor.record.frontend["gpu_display"]["events"]]
    assert events.count("driver-ok") == 2 and "display-closed" in events


def test_hostile_display_peer_is_a_protocol_error_not_a_crash(fe: Frontend) -> None:
    """A display peer that sends requests, unexpected replies, a short display info, then a huge message: each
    is logged and recorded; the broken stream closes only the display socket; the vhost-user connection goes
    on (a GET_VRING_BASE is still answered)."""
    peer = DisplayPeer(fe, answer=False)
    peer.read()
    peer.reply(GpuRequest.SCANOUT, b"x" * 12, flags=0)  # a request, not a reply
    peer.reply(GpuRequest.GET_EDID, b"")  # not the reply awaited
    peer.reply(GpuRequest.GET_PROTOCOL_FEATURES, b"\x01")  # too short
    peer.reply(GpuRequest.GET_DISPLAY_INFO, b"\x00" * 10)  # too short
    fe.pump()
    peer.sock.sendall(HEADER.pack(GpuRequest.GET_EDID, 4, 1 << 30))
    fe.pump()
    errors = [p.text for p in fe.server.monitor.record.protocol_errors]
    assert any("only replies" in e for e in errors), errors
    assert any("unexpected reply GET_EDID" in e for e in errors), errors
    assert any("GET_PROTOCOL_FEATURES reply of 1 bytes" in e for e in errors), errors
    assert any("display info of 10 bytes" in e for e in errors), errors
    assert any("payload" in e for e in errors), errors
    assert ext(fe).channel is None
    assert fe.stop_ring(1) >= 0


def test_set_socket_needs_a_unix_stream_socket(fe: Frontend) -> None:
    """GPU_SET_SOCKET with an eventfd: the protocol's error (REPLY_ACK non-zero), the descriptor closed."""
    efd = os.eventfd(0)
    try:
        assert fe.ack(Request.GPU_SET_SOCKET, b"", [efd]) != 0
    finally:
        os.close(efd)
    dgram, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert fe.ack(Request.GPU_SET_SOCKET, b"", [dgram.fileno()]) != 0
    finally:
        dgram.close()
        other.close()
    assert ext(fe).channel is None


def test_set_socket_before_set_owner_is_refused() -> None:
    """Device messages come after SET_OWNER (the extension never sees one before)."""
    fe = Frontend(SERVABLE["gpu"], mem_size=8 << 20)
    try:
        a, b = socket.socketpair()
        assert fe.ack(Request.GPU_SET_SOCKET, b"", [b.fileno()]) != 0
        a.close()
        b.close()
    finally:
        fe.close()


def test_dump_on_request_and_at_the_end(tmp_path: Path) -> None:
    """The dump (PNG of scanout_image(0) and the JSON sidecar) is written on request and when the connection
    ends, before the model is reset; the report keeps the queues and scanouts as they were then."""
    trigger = DumpTrigger()
    path = tmp_path / "scan.png"
    fe = make(dump=path, trigger=trigger)
    try:
        DisplayPeer(fe).read()
        g = GpuDriver(fe)
        pix = pattern(W, H)
        g.image(1, pix)
        g.set_scanout(0, 1, 0, 0, W, H)
        trigger.request()
        fe.pump()
        info = json.loads(Path(f"{path}.json").read_text())
        assert info["seq"] == 1 and info["scanouts"][0]["enabled"] is True
        assert info["edid"][0] == edid.generate(1280, 800, serial=0).hex()
        from PIL import Image
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), to_rgba(pix, GpuFormat.B8G8R8X8_UNORM)[..., :3])
    finally:
        fe.close()
    info = json.loads(Path(f"{path}.json").read_text())
    assert info["seq"] == 2
    final = fe.server.records[0].frontend["gpu_display"]["final"]
    assert final["scanouts"][0]["enabled"] is True and final["queues"][0]["ready"] is True


def test_vring_stop_and_restart_keep_the_display_protocol_going(fe: Frontend) -> None:
    """A restart of a stopped ring is a queue_started event with its indices (the report's timeline)."""
    peer = DisplayPeer(fe)
    g = GpuDriver(fe)
    g.image(1, pattern(W, H))
    base = fe.stop_ring(0)
    fe.restart_ring(0, base)
    fe.run()
    starts = [e for e in fe.server.monitor.record.frontend["gpu_display"]["events"] if e["what"] == "queue_started"]
    assert starts[-1]["queue"] == 0 and starts[-1]["next_avail"] == base
    g.set_scanout(0, 1, 0, 0, W, H)
    names = [m.name for m in peer.read()]
    assert names.index("SCANOUT") < names.index("UPDATE")
    assert fe.ack(Request.SET_VRING_ENABLE, pack_state(0, 1)) == 0


def test_gpu_command_names() -> None:
    assert gpu_command("RESOURCE_FLUSH") is GpuCmd.RESOURCE_FLUSH
    assert gpu_command("virtio_gpu_cmd_get_edid") is GpuCmd.GET_EDID
    assert gpu_command("0x105") is GpuCmd.TRANSFER_TO_HOST_2D
    for bad in ("UPDATE_CURSOR", "nope", "0x9999", ""):
        assert isinstance(gpu_command(bad), str)


def test_cli_refuses_a_bad_error_command(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["serve", "gpu", "--socket", str(tmp_path / "s"), "--fault", "error=MOVE_CURSOR"])
    assert r.exit_code == 2 and "not a virtio-gpu control command" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", "gpu", "--socket", str(tmp_path / "s"), "--fault", "error=1+1"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_rects() -> None:
    assert union(None, Rect(1, 2, 3, 4)) == Rect(1, 2, 3, 4)
    assert union(Rect(0, 0, 2, 2), Rect(5, 5, 1, 1)) == Rect(0, 0, 6, 6)
    assert clip(Rect(0, 0, 10, 10), Rect(5, 5, 10, 10)) == Rect(0, 0, 5, 5)
    assert clip(Rect(0, 0, 5, 5), Rect(5, 5, 10, 10)) is None


def test_reply_parsers() -> None:
    p = ReplyParser()
    msg = HEADER.pack(3, 4, 2) + b"ab"
    assert [r.payload for r in p.feed(msg[:5])] == []
    assert [r.payload for r in p.feed(msg[5:] + msg)] == [b"ab", b"ab"]
    assert isinstance(parse_display_info(b"\x00" * 10), str)
    assert isinstance(parse_edid(b"\x00" * 10), str)
    assert parse_edid(b"\x00" * 24 + (2000).to_bytes(4, "little") + b"\x00" * 1028) == "EDID size 2000 beyond 1024"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_reply_parser_never_raises(chunks: list[bytes]) -> None:
    """Any byte stream from the display peer is cut into messages or declared broken; never an exception."""
    p = ReplyParser()
    for c in chunks:
        for r in p.feed(c):
            assert len(r.payload) <= 4096
    assert p.pending < HEADER.size + 4096


def test_generic_faults_apply_to_the_gpu() -> None:
    """--fault needs-reset-after=K: after K completed requests the gpu sets DEVICE_NEEDS_RESET (§2.1.2) and
    answers nothing more (the error eventfds are signalled); the display keeps what it had."""
    fe = make(faults=("needs-reset-after=4",))
    try:
        peer = DisplayPeer(fe)
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))  # create, attach, transfer: 3 requests
        g.set_scanout(0, 1, 0, 0, W, H)  # the 4th
        peer.read()
        a = g.flush(1, 0, 0, W, H)
        assert g.resp_type(a) == 0  # never answered
        assert [f.what for f in fe.server.monitor.record.faults] == ["armed", "needs-reset-after"]
        assert fe.errors(0) >= 1
        assert len(peer.updates()) == 1
    finally:
        fe.close()


def test_every_ring_stopped_dumps_the_last_live_state(tmp_path: Path) -> None:
    """QEMU stops both rings when the guest clears DRIVER_OK and when it quits; the gpu's stop policy then resets
    the model, so the dump (and the report's ``final``) is written just before, with what it showed."""
    path = tmp_path / "scan.png"
    fe = make(dump=path)
    try:
        DisplayPeer(fe).read()
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))
        g.set_scanout(0, 1, 0, 0, W, H)
        fe.stop_ring(1)
        fe.stop_ring(0)
        assert gpu(fe).scanouts[0].enabled is False  # reset by the stop policy
        info = json.loads(Path(f"{path}.json").read_text())
        assert info["scanouts"][0]["enabled"] is True and path.exists()
        final = fe.server.monitor.record.frontend["gpu_display"]["final"]
        assert final["when"] == "every ring stopped" and final["scanouts"][0]["enabled"] is True
    finally:
        fe.close()

"""virtio-gpu's own vhost-user messages: ``GPU_SET_SOCKET`` and the display socket, driven from the served model's
scanouts (QEMU ``docs/interop/vhost-user-gpu.rst``), so the front-end's console shows what pyvirtio composed.

Contract. :class:`GpuDisplay` is the :class:`~pyvirtio.vhost_user.catalog.Extension` of the served
:class:`~pyvirtio.vhost_user.served_gpu.ServedGpu`, one per vhost-user connection:

* ``GPU_SET_SOCKET`` (QEMU sends it each time the guest sets DRIVER_OK) opens a
  :class:`~pyvirtio.vhost_user.gpu_channel.DisplayChannel` (replacing the previous one) and negotiates: the
  back-end asks ``GET_PROTOCOL_FEATURES``, enables EDID if offered (``SET_PROTOCOL_FEATURES``), asks
  ``GET_DISPLAY_INFO`` — applied to the model's displays, which then answer the guest's GET_DISPLAY_INFO and
  GET_EDID with the front-end's modes and pyvirtio's own EDID (:mod:`pyvirtio.host.gpu.edid`) — and, with EDID,
  ``GET_EDID`` of each scanout, kept in the report only (the guest gets pyvirtio's EDID, not QEMU's). Nothing
  waits for a reply: the model keeps QEMU's default mode until the information arrives;
* the extension follows the model through its trace: SET_SCANOUT / SET_SCANOUT_BLOB / RESOURCE_UNREF / a reset
  change what a scanout shows (a ``SCANOUT`` message with its size, or 0x0 when disabled, then a full
  ``UPDATE``); RESOURCE_FLUSH damages the flushed rectangle of every scanout showing it (an ``UPDATE`` of it);
  UPDATE_CURSOR / MOVE_CURSOR become ``CURSOR_UPDATE`` / ``CURSOR_POS`` / ``CURSOR_POS_HIDE``. What the front-end
  was told is state; the messages are produced from it whenever the socket is idle, so damage accumulates while
  the front-end reads a frame and the next ``UPDATE`` carries the newest pixels (x8r8g8b8 rows of the scanned-out
  rectangle, taken from the model's host copy, or guest memory for a blob, exactly what
  :meth:`~pyvirtio.host.gpu.device.Gpu.scanout_image` composes, the cursor excepted: it travels apart);
* on each new display socket every scanout is announced again as the model has it (``SCANOUT`` with its size
  and a whole ``UPDATE``, or 0x0): QEMU forgets its scanouts whenever the guest clears DRIVER_OK, and an
  ``UPDATE`` never precedes its scanout's ``SCANOUT``;
* ``--fault error=CMD`` sets the model's :attr:`~pyvirtio.vhost_user.served_gpu.ServedGpu.fail_command`; the first
  injected error is recorded as a fault event, all of them counted;
* the report (``frontend.gpu_display`` of the connection's record) holds the negotiation, the front-end's display
  information and EDID, message and byte counts, and a timeline of what the front-end did to the device as the
  back-end saw it: ``driver-ok`` (a ``GPU_SET_SOCKET``), ``display-closed`` (the front-end closed the socket: the
  guest cleared DRIVER_OK or reset the device), ``queue_started`` (a ring went live, with its addresses and
  indices), ``queue_stopped``; and ``commands``, the control commands the model executed in order (name and
  response, consecutive repeats folded into one entry with a count ``n``) with the rings' starts and stops among
  them, so the order of a sequence (e.g. objects re-created before the first SET_SCANOUT) can be read back;
* :meth:`GpuDisplay.dump` writes what the model's scanout 0 shows (:meth:`~pyvirtio.host.gpu.device.Gpu.
  scanout_image`, PNG), each scanout's cursor image (``PATH.cursor<N>.png``, RGBA) and a JSON sidecar (every
  scanout's state and cursor, the EDID each display answers, the
  display record so far with the model's queues now, a sequence number), atomically: on request
  (:class:`DumpTrigger`, ``SIGUSR1``), and with the model's last live state — when every ring has stopped (the
  stop policy resets the model right after: QEMU stops both rings when the guest clears DRIVER_OK and when it
  quits) or when the connection ends with a ring still running; the report's ``final`` is that state too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.host.gpu import edid
from pyvirtio.host.gpu.base import check_mode
from pyvirtio.host.gpu.display import Rect, resource_pixels, write_png
from pyvirtio.spec.constants import GpuFormat
from pyvirtio.spec.gpu_formats import is_valid, to_rgba
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.vhost_user.extension import ExtensionHost, Readers
from pyvirtio.vhost_user.gpu_channel import DisplayChannel
from pyvirtio.vhost_user.gpu_protocol import (
    OFFERED_FEATURES,
    U64,
    DisplayMode,
    GpuProtocolFeature,
    GpuRequest,
    cursor_pos,
    cursor_update,
    encode,
    parse_display_info,
    parse_edid,
    scanout,
    update_header,
)
from pyvirtio.vhost_user.messages import Message, Request
from pyvirtio.vhost_user.served_gpu import ServedGpu, gpu_command

#: Timeline entries kept per connection (all are counted).
MAX_EVENTS = 400
#: Entries of the folded command sequence kept per connection (all are counted).
MAX_COMMANDS = 1000
#: Formats whose bytes are already x8r8g8b8 in little-endian memory (B, G, R, X/A): sent as they are.
_BGRX = (GpuFormat.B8G8R8X8_UNORM, GpuFormat.B8G8R8A8_UNORM)
_SCANOUT_CHANGERS = frozenset({"SET_SCANOUT", "SET_SCANOUT_BLOB", "RESOURCE_UNREF", "RESOURCE_DETACH_BACKING"})
_ShowKey = tuple[int, Rect, object]


def union(a: Rect | None, b: Rect) -> Rect:
    """The bounding box of ``a`` and ``b`` (``b`` when ``a`` is None)."""
    if a is None:
        return b
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.width, b.x + b.width), max(a.y + a.height, b.y + b.height)
    return Rect(x0, y0, x1 - x0, y1 - y0)


def clip(r: Rect, within: Rect) -> Rect | None:
    """``r`` ∩ ``within`` translated to ``within``'s origin (None when empty)."""
    x0, y0 = max(r.x, within.x), max(r.y, within.y)
    x1, y1 = min(r.x + r.width, within.x + within.width), min(r.y + r.height, within.y + within.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return Rect(x0 - within.x, y0 - within.y, x1 - x0, y1 - y0)


def scanout_pixels(gpu: ServedGpu, sid: int, r: Rect) -> bytes:
    """The x8r8g8b8 rows of rectangle ``r`` (scanout coordinates) of what scanout ``sid`` shows, cursor excepted:
    the pixels :meth:`~pyvirtio.host.gpu.device.Gpu.scanout_image` composes there."""
    s = gpu.scanouts[sid]
    res = gpu.resources.get(s.resource_id) if s.enabled else None
    if res is None or r.width <= 0 or r.height <= 0:
        return bytes(max(0, r.width) * max(0, r.height) * 4)
    src = Rect(s.rect.x + r.x, s.rect.y + r.y, r.width, r.height)
    fb = s.blob_fb
    if fb is not None:
        fb = replace(fb, offset=fb.offset + r.x * 4 + r.y * fb.stride)
    fmt = fb.format if fb is not None else res.format
    raw = resource_pixels(res, src, gpu.ctx.memory, fb)
    if fmt in _BGRX:
        return np.ascontiguousarray(raw).tobytes()
    rgba = to_rgba(raw, fmt, opaque=True) if is_valid(fmt) else np.zeros(raw.shape, dtype=np.uint8)
    return np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]).tobytes()


def cursor_argb(image: np.ndarray[Any, Any]) -> bytes:
    """A 64x64 RGBA cursor image as a8r8g8b8 (bytes B, G, R, A)."""
    return np.ascontiguousarray(image[..., [2, 1, 0, 3]], dtype=np.uint8).tobytes()


@dataclass
class ScanoutState:
    """What the front-end was told about one scanout, and what is still to tell it."""

    shown: _ShowKey | None = None  # (resource, rect, blob framebuffer) the model shows; None: disabled
    announced: bool = False  # a SCANOUT for ``shown`` went out on the current socket
    size: tuple[int, int] = (0, 0)  # the size the last SCANOUT gave
    damage: Rect | None = None  # scanout coordinates still to send
    flushes: int = 0  # the model's flush count when last looked at
    shape: bytes | None = None  # the CURSOR_UPDATE still to send
    cursor: bytes | None = None  # the CURSOR_POS / CURSOR_POS_HIDE still to send (after the shape)


@dataclass
class DisplayRecord:
    """The display protocol's part of a connection's report."""

    sockets: int = 0
    protocol_features: str | None = None
    display_info: list[dict[str, int | bool]] = field(default_factory=list)
    frontend_edid: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    update_bytes: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    events_total: int = 0
    dumps: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    cursor: dict[str, Any] = field(default_factory=dict)  # the last cursor message sent, and the last shape
    commands: list[dict[str, Any]] = field(default_factory=list)  # folded: consecutive repeats counted in "n"
    commands_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"sockets": self.sockets, "protocol_features": self.protocol_features,
                "display_info": self.display_info, "frontend_edid": {str(k): v for k, v in self.frontend_edid.items()},
                "messages": dict(sorted(self.messages.items())), "update_bytes": self.update_bytes,
                "events": self.events, "events_total": self.events_total, "dumps": self.dumps, "final": self.final,
                "cursor": self.cursor, "commands": self.commands, "commands_total": self.commands_total}


class GpuDisplay:
    """The gpu's extension for one connection (see the module contract)."""

    requests = frozenset({Request.GPU_SET_SOCKET})

    def __init__(self, host: ExtensionHost, dump_path: Path | None = None, trigger: DumpTrigger | None = None
                 ) -> None:
        if not isinstance(host.device, ServedGpu):
            raise TypeError("the gpu display needs a ServedGpu model")
        self.host = host
        self.gpu: ServedGpu = host.device
        self.channel: DisplayChannel | None = None
        self.protocol = 0
        self.states = [ScanoutState() for _ in self.gpu.scanouts]
        self.record = DisplayRecord()
        self.dump_path = dump_path
        self.trigger = trigger
        self._error_seen = False
        self._t0 = host.device.ctx.scheduler.now
        self._closed = False
        host.trace.listeners.append(self._on_event)
        self._publish()
        if host.plan.error_command is not None:
            cmd = gpu_command(host.plan.error_command)
            if isinstance(cmd, str):
                host.log(cmd + "; fault not armed")
                host.monitor.fault("error", f"not armed: {cmd}")
            else:
                self.gpu.fail_command = int(cmd)
        if trigger is not None:
            trigger.attach(host.readers, self.dump)

    # -- the extension protocol -------------------------------------------------------------------------------

    def handle(self, msg: Message) -> str | None:
        """``GPU_SET_SOCKET``: take the display socket (the only request this extension serves)."""
        if msg.request != Request.GPU_SET_SOCKET or len(msg.fds) != 1:
            for fd in msg.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return "GPU_SET_SOCKET wants exactly one descriptor"
        fd = msg.fds[0]
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.close(fd)
            return f"GPU_SET_SOCKET: not a socket ({e.strerror or e})"
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            return "GPU_SET_SOCKET: the descriptor is not a UNIX stream socket"
        if self.channel is not None:
            self.channel.close("replaced by a new GPU_SET_SOCKET")
        self.record.sockets += 1
        self._event("driver-ok", socket=self.record.sockets)
        self.protocol = 0
        for st in self.states:  # a new display: every scanout is announced again, as the model has it
            st.announced, st.size, st.damage, st.shape, st.cursor = False, (0, 0), None, None, None
        self._scanouts_changed(repaint=False)
        self.channel = DisplayChannel(sock, self.host.readers, on_reply=self._on_reply, on_closed=self._on_closed,
                                      on_drained=self._pump, on_problem=self._problem)
        self.channel.request(GpuRequest.GET_PROTOCOL_FEATURES)
        self._count("GET_PROTOCOL_FEATURES")
        self._publish()
        self._pump()
        return None

    def close(self) -> None:
        """The connection ended: write the dump (before the model is reset), close the socket, detach."""
        if self._closed:
            return
        self._closed = True
        if any(q.ready for q in self.gpu.queues) or not self.record.final:
            self._last_state("the connection ended")
        if self.channel is not None:
            self.channel.close("the vhost-user connection ended")
        with contextlib.suppress(ValueError):
            self.host.trace.listeners.remove(self._on_event)
        if self.trigger is not None:
            self.trigger.detach(self.host.readers)
        self.gpu.fail_command = None
        self._publish()

    # -- the front-end's replies ------------------------------------------------------------------------------

    def _on_reply(self, req: GpuRequest, payload: bytes) -> None:
        ch = self.channel
        if ch is None:
            return
        if req is GpuRequest.GET_PROTOCOL_FEATURES:
            if len(payload) != U64.size:
                self._problem(f"display socket: GET_PROTOCOL_FEATURES reply of {len(payload)} bytes")
                offered = 0
            else:
                offered = U64.unpack(payload)[0]
            self.protocol = offered & OFFERED_FEATURES
            self.record.protocol_features = f"{offered:#x} offered, {self.protocol:#x} enabled"
            ch.send(encode(GpuRequest.SET_PROTOCOL_FEATURES, U64.pack(self.protocol)))
            self._count("SET_PROTOCOL_FEATURES")
            ch.request(GpuRequest.GET_DISPLAY_INFO)
            self._count("GET_DISPLAY_INFO")
            if self.protocol & (1 << GpuProtocolFeature.EDID):
                for sid in range(len(self.states)):
                    ch.request(GpuRequest.GET_EDID, sid.to_bytes(4, "little"))
                    self._count("GET_EDID")
        elif req is GpuRequest.GET_DISPLAY_INFO:
            modes = parse_display_info(payload)
            if isinstance(modes, str):
                self._problem(f"display socket: {modes}")
            else:
                self._apply_modes(modes)
        elif req is GpuRequest.GET_EDID:
            edid = parse_edid(payload)
            if isinstance(edid, str):
                self._problem(f"display socket: {edid}")
            else:
                sid = len(self.record.frontend_edid)
                self.record.frontend_edid[sid] = {"size": len(edid), "md5": hashlib.md5(edid).hexdigest(),
                                                  "hex": edid[:256].hex()}
        self._publish()
        self._pump()

    def _apply_modes(self, modes: list[DisplayMode]) -> None:
        self.record.display_info = [{"scanout": m.scanout, "x": m.x, "y": m.y, "width": m.width,
                                     "height": m.height, "enabled": m.enabled}
                                    for m in modes if m.scanout < len(self.gpu.displays)]
        changed = False
        for m in modes[:len(self.gpu.displays)]:
            d = self.gpu.displays[m.scanout]
            enabled = m.enabled
            if enabled:
                try:
                    check_mode(m.width, m.height)
                except ValueError as e:
                    self._problem(f"display socket: scanout {m.scanout}: {e}; left as it was")
                    continue
            new = (enabled, m.width, m.height, m.x, m.y) if enabled else (False, d.width, d.height, d.x, d.y)
            if new != (d.enabled, d.width, d.height, d.x, d.y):
                d.enabled, d.width, d.height, d.x, d.y = new
                changed = True
        if changed and self.gpu.commands["GET_DISPLAY_INFO"]:
            self.host.monitor.note("display", "the guest read the display information before the front-end's "
                                              "arrived: it saw the default mode")

    def _on_closed(self, why: str) -> None:
        self._event("display-closed", why=why)
        self.channel = None
        self._publish()

    # -- following the model ----------------------------------------------------------------------------------

    def _on_event(self, ev: TraceEvent) -> None:
        if ev.kind is Kind.DEVICE:
            what = ev.detail.get("event")
            if what == "gpu_cmd":
                cmd = str(ev.detail.get("cmd"))
                self._command(cmd, resp=str(ev.detail.get("resp")))
                if cmd == "RESOURCE_FLUSH":
                    self._flushed()
                elif cmd in _SCANOUT_CHANGERS:
                    self._scanouts_changed(repaint=cmd.startswith("SET_SCANOUT"))
            elif what == "gpu_cursor":
                self._cursor(int(str(ev.detail.get("scanout", 0))), ev.detail.get("cmd") == "MOVE_CURSOR")
            elif what == "resources_destroyed":
                self._scanouts_changed(repaint=False)
            elif what in ("queue_started", "queue_stopped"):
                self._event(str(what), **{k: v for k, v in ev.detail.items() if k != "event"})
                self._command(str(what), queue=ev.detail.get("queue"))
                if what == "queue_stopped" and not any(q.ready for q in self.gpu.queues):
                    self._last_state("every ring stopped")  # the stop policy may reset the model next
                return
            elif what == "injected_error" and not self._error_seen:
                self._error_seen = True
                self.host.monitor.fault("error", f"{ev.detail.get('cmd')} answered ERR_UNSPEC (the first; all "
                                                 "are counted in injected_errors)")
            else:
                return
        elif ev.kind is Kind.RESET:
            self._scanouts_changed(repaint=False)
        else:
            return
        self._pump()

    def _key(self, sid: int) -> _ShowKey | None:
        s = self.gpu.scanouts[sid]
        return (s.resource_id, s.rect, s.blob_fb) if s.enabled else None

    def _flushed(self) -> None:
        for sid, (st, s) in enumerate(zip(self.states, self.gpu.scanouts, strict=True)):
            if s.flushes == st.flushes:
                continue
            st.flushes = s.flushes
            if self._key(sid) != st.shown:
                self._scanouts_changed(repaint=False)
            elif s.enabled and s.last_flush is not None:
                r = clip(s.last_flush, s.rect)
                if r is not None:
                    st.damage = union(st.damage, r)

    def _scanouts_changed(self, repaint: bool) -> None:
        """Compare what each scanout shows with what the front-end was told: a change is announced again
        (``SCANOUT``) and repainted whole; ``repaint`` repaints every enabled scanout anyway (SET_SCANOUT)."""
        for sid, (st, s) in enumerate(zip(self.states, self.gpu.scanouts, strict=True)):
            key = self._key(sid)
            st.flushes = s.flushes
            if key != st.shown:
                st.shown, st.announced = key, False
            if key is None:
                st.damage = None
            elif not st.announced or repaint:
                st.damage = Rect(0, 0, s.rect.width, s.rect.height)

    def _cursor(self, sid: int, move: bool) -> None:
        """UPDATE_CURSOR: the shape (always sent again: the same resource may hold a new image) or hide;
        MOVE_CURSOR: the position, folded into a shape still waiting to go out."""
        if not 0 <= sid < len(self.states):
            return
        c = self.gpu.scanouts[sid].cursor
        st = self.states[sid]
        if c.visible and (not move or st.shape is not None):
            st.shape, st.cursor = cursor_update(sid, c.x, c.y, c.hot_x, c.hot_y, cursor_argb(c.image)), None
        else:
            if not move:
                st.shape = None
            st.cursor = cursor_pos(sid, c.x, c.y, c.visible)

    # -- producing messages -----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send what is due, from the state, while the socket is idle: announcements, cursors, then one
        ``UPDATE`` per damaged scanout (an ``UPDATE`` never precedes its scanout's ``SCANOUT``)."""
        ch = self.channel
        if ch is None:
            return
        for sid, (st, s) in enumerate(zip(self.states, self.gpu.scanouts, strict=True)):
            if not ch.idle:
                return
            if not st.announced:
                st.size = (s.rect.width, s.rect.height) if st.shown is not None else (0, 0)
                ch.send(scanout(sid, *st.size))
                self._count("SCANOUT")
                self._event("scanout", scanout=sid, width=st.size[0], height=st.size[1])
                st.announced = True
                st.damage = Rect(0, 0, *st.size) if st.shown is not None else None
            for msg in (st.shape, st.cursor):
                if msg is not None:
                    ch.send(msg)
                    self._sent_cursor(msg)
            st.shape = st.cursor = None
            if st.damage is not None and st.shown is not None:
                r = clip(st.damage, Rect(0, 0, *st.size))
                st.damage = None
                if r is not None:
                    pixels = scanout_pixels(self.gpu, sid, r)
                    ch.send(update_header(sid, r.x, r.y, r.width, r.height), pixels)
                    self._count("UPDATE")
                    self.record.update_bytes += len(pixels)

    # -- the report, the dump ---------------------------------------------------------------------------------

    def _sent_cursor(self, msg: bytes) -> None:
        req = GpuRequest(int.from_bytes(msg[:4], "little"))
        self._count(req.name)
        sid, x, y = (int.from_bytes(msg[12 + 4 * i:16 + 4 * i], "little") for i in range(3))
        shape = self.record.cursor.get("shape")
        if req is GpuRequest.CURSOR_UPDATE:
            shape = {"hot_x": int.from_bytes(msg[24:28], "little"), "hot_y": int.from_bytes(msg[28:32], "little"),
                     "argb_md5": hashlib.md5(msg[32:]).hexdigest()}
        self.record.cursor = {"message": req.name, "scanout": sid, "x": x, "y": y, "shape": shape}

    def _count(self, name: str) -> None:
        self.record.messages[name] = self.record.messages.get(name, 0) + 1

    def _event(self, what: str, **detail: Any) -> None:
        self.record.events_total += 1
        if len(self.record.events) < MAX_EVENTS:
            t = (self.gpu.ctx.scheduler.now - self._t0) / 1e9
            self.record.events.append({"t_s": round(t, 6), "what": what, **detail})

    def _command(self, what: str, **detail: Any) -> None:
        """Append to the folded command sequence (a repeat of the last entry only counts)."""
        rec = self.record
        rec.commands_total += 1
        last = rec.commands[-1] if rec.commands else None
        if last is not None and last["what"] == what and all(last.get(k) == v for k, v in detail.items()):
            last["n"] += 1
        elif len(rec.commands) < MAX_COMMANDS:
            t = (self.gpu.ctx.scheduler.now - self._t0) / 1e9
            rec.commands.append({"t_s": round(t, 6), "what": what, **detail, "n": 1})

    def _problem(self, text: str) -> None:
        self.host.log(text)
        self.host.monitor.protocol_error("GPU_SET_SOCKET", text)

    def _publish(self) -> None:
        self.host.monitor.record.frontend["gpu_display"] = self.record.to_dict()

    def _last_state(self, when: str) -> None:
        self.record.final = {"when": when, **self.snapshot()}
        if self.dump_path is not None:
            self.dump()

    def snapshot(self) -> dict[str, Any]:
        """The model's queues and scanouts now (the report keeps the one taken when the connection ends, before
        the model is reset)."""
        queues = [{"queue": i, "ready": q.ready, "desc": q.desc_table, "next_avail": q.next_avail,
                   "next_used": q.next_used} for i, q in enumerate(self.gpu.queues)]
        scanouts = [{"scanout": i, "enabled": s.enabled, "resource_id": s.resource_id, "width": s.rect.width,
                     "height": s.rect.height, "flushes": s.flushes} for i, s in enumerate(self.gpu.scanouts)]
        return {"lifecycle": self.gpu.lifecycle.value, "queues": queues, "scanouts": scanouts,
                "resources": len(self.gpu.resources)}

    def dump(self) -> None:
        """Write what scanout 0 shows (PNG) and every scanout's state (JSON sidecar), atomically."""
        if self.dump_path is None:
            return
        self.record.dumps += 1
        path = self.dump_path
        info: dict[str, Any] = {"seq": self.record.dumps, "scanouts": [], "edid": [],
                                "display": self.record.to_dict() | {"now": self.snapshot()}}
        try:
            for sid, s in enumerate(self.gpu.scanouts):
                c = s.cursor
                info["scanouts"].append({
                    "scanout": sid, "enabled": s.enabled, "resource_id": s.resource_id, "x": s.rect.x,
                    "y": s.rect.y, "width": s.rect.width, "height": s.rect.height, "flushes": s.flushes,
                    "cursor": {"visible": c.visible, "resource_id": c.resource_id, "x": c.x, "y": c.y,
                               "hot_x": c.hot_x, "hot_y": c.hot_y,
                               "argb_md5": hashlib.md5(cursor_argb(c.image)).hexdigest()}})
                d = self.gpu.displays[sid]
                info["edid"].append(edid.generate(d.width, d.height, serial=sid).hex() if d.enabled else None)
            for sid, s in enumerate(self.gpu.scanouts):
                write_png(s.cursor.image, Path(f"{path}.cursor{sid}.png"))
            img = self.gpu.scanout_image(0)
            if img is not None:
                write_png(img, path)
                info["png"] = str(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                info["png"] = None
            write_text_atomic(Path(f"{path}.json"), json.dumps(info, indent=1) + "\n")
        except Exception as e:  # a dump must never take the server down
            self.host.log(f"cannot write the scanout dump {path}: {e!r}")
        self._publish()


class DumpTrigger:
    """Dumps on request: ``SIGUSR1`` (installed by :meth:`install`, main thread only) wakes the event loop and the
    current connection's :meth:`GpuDisplay.dump` runs there, between two device steps.

    The wake-up is :func:`signal.set_wakeup_fd` on a socket pair the loop watches: the C-level handler writes it
    whatever thread the kernel delivered the signal to (numpy's BLAS threads may take it), so the loop wakes even
    when no descriptor of the connection is busy. (It wakes the loop for every signal, e.g. SIGTERM, which then
    reaches the loop's own handler at once.)"""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._dump: Callable[[], None] | None = None
        self._requested = False

    def install(self, signum: int = signal.SIGUSR1) -> None:
        """Make ``signum`` request a dump."""

        def handler(num: int, frame: FrameType | None) -> None:
            del num, frame
            self._requested = True

        signal.signal(signum, handler)
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)

    def request(self) -> None:
        """Ask for a dump (as the signal does)."""
        self._requested = True
        with contextlib.suppress(OSError):
            self._w.send(b"d")

    def attach(self, readers: Readers, dump: Callable[[], None]) -> None:
        """The current connection dumps with ``dump()`` when asked."""
        self._dump = dump
        readers.add_reader(self._r.fileno(), self._fire)

    def detach(self, readers: Readers) -> None:
        """The connection ended."""
        readers.remove_reader(self._r.fileno())
        self._dump = None

    def _fire(self) -> None:
        with contextlib.suppress(OSError):
            while self._r.recv(64):
                pass
        if self._requested and self._dump is not None:
            self._requested = False
            self._dump()


@dataclass
class GpuDisplayFactory:
    """Makes each connection's :class:`GpuDisplay` (the catalog's ``extension``), with the dump options."""

    dump_path: Path | None = None
    trigger: DumpTrigger | None = None

    def __call__(self, host: ExtensionHost) -> GpuDisplay:
        """A :class:`GpuDisplay` for the connection ``host`` describes."""
        return GpuDisplay(host, self.dump_path, self.trigger)


__all__ = ["MAX_COMMANDS", "MAX_EVENTS", "DisplayRecord", "DumpTrigger", "GpuDisplay", "GpuDisplayFactory",
           "ScanoutState", "clip", "cursor_argb", "scanout_pixels", "union"]

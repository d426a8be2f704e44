"""Test helpers for virtio-gpu: raw chains with hand-packed requests (reference §4.2-§4.4 offsets).

Requests are packed here with ``struct`` from the reference tables, not with ``pyvirtio.spec.gpu_wire``.
A :class:`RawGpuDriver` is the project's driver (for probe and queue setup) that also accepts raw chains.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.gpu.driver import GpuDriver, GpuRequest
from pyvirtio.host.gpu import Gpu
from pyvirtio.machine import Machine

# reference §4.3 codes, typed in by hand
GET_DISPLAY_INFO, RESOURCE_CREATE_2D, RESOURCE_UNREF, SET_SCANOUT = 0x100, 0x101, 0x102, 0x103
RESOURCE_FLUSH, TRANSFER_TO_HOST_2D, ATTACH_BACKING, DETACH_BACKING = 0x104, 0x105, 0x106, 0x107
GET_CAPSET_INFO, GET_CAPSET, GET_EDID, ASSIGN_UUID = 0x108, 0x109, 0x10A, 0x10B
CREATE_BLOB, SET_SCANOUT_BLOB = 0x10C, 0x10D
CTX_CREATE, CTX_DESTROY, CTX_ATTACH, CTX_DETACH, CREATE_3D = 0x200, 0x201, 0x202, 0x203, 0x204
TRANSFER_TO_HOST_3D, TRANSFER_FROM_HOST_3D, SUBMIT_3D, MAP_BLOB, UNMAP_BLOB = 0x205, 0x206, 0x207, 0x208, 0x209
UPDATE_CURSOR, MOVE_CURSOR = 0x300, 0x301
OK_NODATA, OK_DISPLAY_INFO, OK_CAPSET_INFO, OK_CAPSET, OK_EDID, OK_UUID, OK_MAP_INFO = range(0x1100, 0x1107)
ERR_UNSPEC, ERR_OOM, ERR_SCANOUT, ERR_RESOURCE, ERR_CONTEXT, ERR_PARAM = range(0x1200, 0x1206)
ALL_RESPONSES = frozenset(range(0x1100, 0x1107)) | frozenset(range(0x1200, 0x1206))
FLAG_FENCE, FLAG_INFO_RING_IDX = 1, 2
# formats (§4.4)
B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8 = 1, 2, 3, 4
R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8 = 67, 68, 121, 134
ALL_FORMATS = (B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8)
BLOB_MEM_GUEST, BLOB_MEM_HOST3D = 1, 2

HEAP = (1 << 20, 40 << 20)


def hdr(cmd: int, flags: int = 0, fence_id: int = 0, ctx_id: int = 0, ring_idx: int = 0) -> bytes:
    """§4.2: le32 type @0, le32 flags @4, le64 fence_id @8, le32 ctx_id @16, u8 ring_idx @20, pad to 24."""
    b = bytearray(24)
    struct.pack_into("<I", b, 0, cmd)
    struct.pack_into("<I", b, 4, flags)
    struct.pack_into("<Q", b, 8, fence_id)
    struct.pack_into("<I", b, 16, ctx_id)
    b[20] = ring_idx
    return bytes(b)


def req(cmd: int, size: int, fields: dict[int, tuple[str, int]], **h: int) -> bytes:
    """A ``size``-byte request: header, then each ``offset: (struct format, value)`` packed at its offset."""
    b = bytearray(size)
    b[:24] = hdr(cmd, **h)
    for off, (fmt, v) in fields.items():
        struct.pack_into("<" + fmt, b, off, v)
    return bytes(b)


def create_2d(rid: int, fmt: int, w: int, h: int, **hh: int) -> bytes:
    return req(RESOURCE_CREATE_2D, 40, {24: ("I", rid), 28: ("I", fmt), 32: ("I", w), 36: ("I", h)}, **hh)


def rect_at(off: int, x: int, y: int, w: int, h: int) -> dict[int, tuple[str, int]]:
    return {off: ("I", x), off + 4: ("I", y), off + 8: ("I", w), off + 12: ("I", h)}


def set_scanout(sid: int, rid: int, x: int, y: int, w: int, h: int) -> bytes:
    return req(SET_SCANOUT, 48, {**rect_at(24, x, y, w, h), 40: ("I", sid), 44: ("I", rid)})


def flush(rid: int, x: int, y: int, w: int, h: int, **hh: int) -> bytes:
    return req(RESOURCE_FLUSH, 48, {**rect_at(24, x, y, w, h), 40: ("I", rid)}, **hh)


def transfer(rid: int, x: int, y: int, w: int, h: int, offset: int, **hh: int) -> bytes:
    return req(TRANSFER_TO_HOST_2D, 56, {**rect_at(24, x, y, w, h), 40: ("Q", offset), 48: ("I", rid)}, **hh)


def mem_entries(entries: list[tuple[int, int]]) -> bytes:
    """§4.4 virtio_gpu_mem_entry: le64 addr @0, le32 length @8, le32 padding @12."""
    return b"".join(struct.pack("<QII", a, n, 0) for a, n in entries)


def attach(rid: int, entries: list[tuple[int, int]], nr: int | None = None) -> bytes:
    n = len(entries) if nr is None else nr
    return req(ATTACH_BACKING, 32, {24: ("I", rid), 28: ("I", n)}) + mem_entries(entries)


def rid_cmd(cmd: int, rid: int, **hh: int) -> bytes:
    return req(cmd, 32, {24: ("I", rid)}, **hh)


def create_blob(rid: int, blob_mem: int, flags: int, entries: list[tuple[int, int]], blob_id: int, size: int,
                **hh: int) -> bytes:
    f = {24: ("I", rid), 28: ("I", blob_mem), 32: ("I", flags), 36: ("I", len(entries)), 40: ("Q", blob_id),
         48: ("Q", size)}
    return req(CREATE_BLOB, 56, f, **hh) + mem_entries(entries)


def set_scanout_blob(sid: int, rid: int, rect: tuple[int, int, int, int], w: int, h: int, fmt: int,
                     stride: int, offset: int) -> bytes:
    f = {**rect_at(24, *rect), 40: ("I", sid), 44: ("I", rid), 48: ("I", w), 52: ("I", h), 56: ("I", fmt),
         64: ("I", stride), 80: ("I", offset)}
    return req(SET_SCANOUT_BLOB, 96, f)


def cursor(cmd: int, sid: int, x: int, y: int, rid: int, hot_x: int, hot_y: int) -> bytes:
    f = {24: ("I", sid), 28: ("I", x), 32: ("I", y), 40: ("I", rid), 44: ("I", hot_x), 48: ("I", hot_y)}
    return req(cmd, 56, f)


def resp_type(resp: bytes) -> int:
    return int(struct.unpack_from("<I", resp, 0)[0])


@dataclass(eq=False)
class RawReq:
    segments: list[tuple[int, int]]
    writable: list[tuple[int, int]]
    done: bool = False
    used: int = 0


class RawGpuDriver(GpuDriver):
    """The project's driver, plus raw chains whose bytes the test packs itself."""

    def vq_callback(self, index: int) -> None:
        if index >= len(self.vqs):
            return
        for token, length in self.vqs[index].drain_used():
            if isinstance(token, RawReq):
                token.done, token.used = True, length
            else:
                assert isinstance(token, GpuRequest)
                self._complete(token, length)

    def raw(self, readable: list[bytes], writable: list[int], queue: int = 0, *, wait: bool = True) -> RawReq:
        """Send a chain of the given readable segments (bytes) and writable segment sizes."""
        mem = self.alloc.mem
        out = []
        for data in readable:
            a = self.alloc.alloc(max(1, len(data)), 8)
            mem.write(a, data)
            out.append((a, len(data)))
        ins = []
        for n in writable:
            a = self.alloc.alloc(max(1, n), 8)
            mem.fill(a, max(1, n), 0xEE)
            ins.append((a, n))
        r = RawReq(out, ins)
        self.vqs[queue].add(out, ins, r)
        self.kick(queue)
        if wait:
            assert self.platform.run_until(lambda: r.done, 1000 * MS), "no answer"
        return r

    def response(self, r: RawReq) -> bytes:
        """The bytes the device wrote (``used`` of them) across the writable segments."""
        data = b"".join(self.alloc.mem.read(a, n) for a, n in r.writable)
        return data[: r.used]

    def call(self, request: bytes, resp_len: int = 24, queue: int = 0, extra: bytes | None = None) -> bytes:
        segs = [request] + ([extra] if extra is not None else [])
        return self.response(self.raw(segs, [resp_len] if resp_len else [], queue))


@dataclass
class Rig:
    machine: Machine
    dev: Gpu
    drv: RawGpuDriver
    alloc: GuestAllocator

    def violations(self) -> list[str]:
        return [str(e.detail.get("rule")) for e in self.machine.trace.violations(self.dev.name)]


def make_rig(*, memory: int = 64 << 20, probe: bool = True, dev_kw: dict[str, Any] | None = None,
             driver_cls: type[GpuDriver] | None = None, dev_cls: type[Gpu] = Gpu, **drv_kw: Any) -> Rig:
    """A machine with a ``dev_cls`` device and a (probed) ``driver_cls`` driver that also takes raw chains."""
    m = Machine(memory, seed=7)
    dev = dev_cls(**(dev_kw or {}))
    fn = m.plug(dev)
    alloc = GuestAllocator(m.memory, HEAP[0], min(HEAP[1], memory - HEAP[0] - (1 << 20)))
    cls = RawGpuDriver if driver_cls is None else type("Raw" + driver_cls.__name__, (RawGpuDriver, driver_cls), {})
    drv = cls(m, fn, alloc, **drv_kw)
    if probe:
        drv.probe()
    return Rig(m, dev, drv, alloc)

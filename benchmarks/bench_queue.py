"""Split-virtqueue throughput: chains per second through add -> pop -> push -> get_used.

Printed beside a baseline measured in the same run: the minimal Python work per chain (unpack one 16-byte
descriptor, pack one 8-byte used element on a bytearray). Wall-clock time; no assertions.
"""

from __future__ import annotations

import struct
import time

from pyvirtio.dma import GuestAllocator
from pyvirtio.memory import GuestMemory
from pyvirtio.virtqueue.device import DeviceQueue
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

N = 20_000
SIZE = 256


def ours(segments: int) -> float:
    mem = GuestMemory(16 << 20)
    alloc = GuestAllocator(mem, 1 << 20, 8 << 20)
    layout = RingLayout.contiguous(0x10000, SIZE)
    drv = DriverQueue(mem, layout)
    dev = DeviceQueue(mem, SIZE)
    dev.set_size(SIZE)
    dev.desc_table, dev.avail_ring, dev.used_ring = layout.desc, layout.avail, layout.used
    dev.activate()
    bufs = [(alloc.alloc(64), 64) for _ in range(segments)]
    out, in_ = bufs[:-1], bufs[-1:]
    t0 = time.perf_counter()
    for _ in range(N):
        drv.add(out, in_, 1)
        chain = dev.pop()
        assert chain is not None
        dev.push(chain.head, 64)
        drv.get_used()
    return N / (time.perf_counter() - t0)


def baseline() -> float:
    desc = struct.Struct("<QIHH")
    used = struct.Struct("<II")
    ring = bytearray(16 * SIZE + 8 * SIZE)
    t0 = time.perf_counter()
    for i in range(N):
        j = i % SIZE
        _addr, n, _flags, _next = desc.unpack_from(ring, 16 * j)
        used.pack_into(ring, 16 * SIZE + 8 * j, j, n)
    return N / (time.perf_counter() - t0)


def main() -> None:
    base = baseline()
    print(f"baseline (struct unpack+pack per chain): {base:12,.0f} chains/s")
    for segs in (1, 4):
        r = ours(segs)
        print(f"pyvirtio, {segs} descriptor(s) per chain:   {r:12,.0f} chains/s  ratio {r / base:.3f}")


if __name__ == "__main__":
    main()

"""Where the time of a virtio-gpu frame goes: TRANSFER_TO_HOST_2D + RESOURCE_FLUSH through the whole model,
profiled (cProfile, own time per function grouped by layer) and scaled to the frame's measured CPU time.

Two frames are profiled: a 16x16 one (the fixed part: two commands through driver, ring, PCI notify, device,
MSI-X interrupt, scheduler) and a full 1920x1080 one (the fixed part plus the copy). cProfile inflates Python
calls much more than the copy, so each group's share is taken from the profile of the fixed part and scaled to
its measured (unprofiled) time; the copy is the full frame's time minus the fixed part.

Run: ``python benchmarks/profile_gpu.py [--frames 300]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.host.gpu import Gpu
from pyvirtio.machine import Machine

#: (group, path fragments), first match wins
GROUPS = (
    ("gpu commands (host/gpu)", ("host/gpu/",)),
    ("device core (host/device.py)", ("host/device.py",)),
    ("PCI transport + MSI-X (host/pci)", ("host/pci/",)),
    ("split ring (virtqueue)", ("virtqueue/",)),
    ("guest driver + requests (guest)", ("guest/",)),
    ("scheduler, machine, trace", ("clock.py", "machine.py", "trace.py")),
    ("guest memory, DMA allocator", ("memory.py", "dma.py")),
    ("wire structs (spec)", ("spec/",)),
    ("numpy", ("numpy",)),
    ("enum flags (stdlib)", ("enum.py",)),
)


def group_of(filename: str) -> str:
    for name, parts in GROUPS:
        if any(p in filename for p in parts):
            return name
    return "other (builtins, stdlib)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    width, height = 1920, 1080
    size = width * height * 4
    heap = 2 * size + (16 << 20)
    machine = Machine(heap + (2 << 20), seed=0, trace_registers=False)
    dev = Gpu("gpu", width=width, height=height)
    drv = GpuDriver(machine, machine.plug(dev), GuestAllocator(machine.memory, 1 << 20, heap), name="gpu")
    drv.probe()
    fb = drv.framebuffers[0]

    def frames(rect: tuple[int, int, int, int], n: int) -> float:
        t0 = time.thread_time()
        for _ in range(n):
            drv.transfer_to_host_2d(fb, rect)
            drv.wait(drv.resource_flush(fb, rect))
        return (time.thread_time() - t0) / n

    tiny, full = (0, 0, 16, 16), (0, 0, width, height)
    frames(full, 10)
    fixed = min(frames(tiny, args.frames) for _ in range(3))
    whole = min(frames(full, args.frames // 5) for _ in range(3))
    prof = cProfile.Profile()
    prof.enable()
    frames(tiny, args.frames)
    prof.disable()
    own: dict[str, float] = defaultdict(float)
    calls = 0
    for (filename, _, _), (_, ncalls, tottime, _, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        own[group_of(filename)] += tottime
        calls += ncalls
    total = sum(own.values())
    print(f"1920x1080 frame: {whole * 1e6:.0f} us CPU = copy {max(whole - fixed, 0) * 1e6:.0f} us + fixed part "
          f"{fixed * 1e6:.0f} us ({calls / args.frames:.0f} Python calls per frame)")
    print(f"{'fixed part by layer':40} {'share':>6} {'us/frame':>9}")
    for name, t in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"{name:40} {t / total:6.1%} {t / total * fixed * 1e6:9.1f}")


if __name__ == "__main__":
    main()

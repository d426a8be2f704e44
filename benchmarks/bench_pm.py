"""Power-management latency and S4 image throughput.

1. Suspend and resume latency (virtual ms, deterministic) of one S3 cycle as total GPU resource memory grows from
   1 MiB to 1 GiB: `no-soft-reset` and `suspend-bit` must stay flat; `freeze-mode` grows (the device must make
   its state survive the reset) and is shown for contrast.
2. S4 replay time per resource (`s4-replay`, virtual time of the restore divided by the objects re-created).
3. S4 image write and read throughput (wall clock) as a ratio to a plain copy of the same bytes to the same disk
   in the same run.

Run: ``python benchmarks/bench_pm.py [--max-mib 1024] [--image-mib 256]``. No assertions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pyvirtio.memory import GuestMemory
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.image import read_image, write_image
from pyvirtio.pm.profiles import parse_profile
from pyvirtio.pm.scenario import run_cell
from pyvirtio.report import SleepState

MIB = 1 << 20
RESOURCES = 16


def latency(max_mib: int) -> Table:
    t = Table(title="S3 latency vs total resource memory (virtual ms)")
    t.add_column("total")
    profiles = ("no-soft-reset", "suspend-bit", "freeze-mode")
    for p in profiles:
        t.add_column(f"{p} suspend")
        t.add_column(f"{p} resume")
    total = 1
    while total <= max_mib:
        cfg = ScenarioConfig(resources=RESOURCES, resource_size=total * MIB // RESOURCES, inflight=0)
        row = [f"{total} MiB"]
        for p in profiles:
            c = run_cell(parse_profile(p), SleepState.S3, cfg)
            row += [f"{c.suspend_ms:.3f}", f"{c.resume_ms:.3f}"]
        t.add_row(*row)
        total *= 4
    return t


def replay() -> Table:
    t = Table(title="S4 replay (s4-replay): restore time per re-created object (virtual)")
    for col in ("objects", "resume ms", "us per object"):
        t.add_column(col)
    for n in (4, 16, 64):
        c = run_cell(parse_profile("s4-replay"), SleepState.S4, ScenarioConfig(resources=n, resource_size=64 << 10,
                                                                      inflight=0))
        objects = n + 2 + 1  # extra resources + framebuffers + cursor
        assert c.resume_ms is not None
        t.add_row(str(objects), f"{c.resume_ms:.3f}", f"{c.resume_ms * 1000 / objects:.1f}")
    return t


def image_throughput(mib: int) -> Table:
    mem = GuestMemory(mib * MIB)
    view = mem.view(0, mib * MIB)
    view[::4096] = b"\x5a" * len(view[::4096])  # touch every page
    raw = bytes(view)
    view.release()
    t = Table(title=f"S4 image throughput, {mib} MiB of guest RAM (wall clock, same disk, same run)")
    for col in ("operation", "MiB/s", "plain copy MiB/s", "ratio"):
        t.add_column(col)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        plain = Path(tmp) / "plain"
        t0 = time.perf_counter()
        with open(plain, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        plain_w = mib / (time.perf_counter() - t0)
        img = Path(tmp) / "image"
        t0 = time.perf_counter()
        write_image(img, {"bench": True}, mem)
        ours_w = mib / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain.read_bytes()
        plain_r = mib / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_image(img)
        ours_r = mib / (time.perf_counter() - t0)
    t.add_row("write (atomic, fsync, CRC-32)", f"{ours_w:.0f}", f"{plain_w:.0f}", f"{ours_w / plain_w:.2f}")
    t.add_row("read (verify CRC-32)", f"{ours_r:.0f}", f"{plain_r:.0f}", f"{ours_r / plain_r:.2f}")
    mem.close()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-mib", type=int, default=1024, help="largest total resource memory (MiB)")
    ap.add_argument("--image-mib", type=int, default=256, help="guest RAM written into the S4 image (MiB)")
    args = ap.parse_args()
    console = Console(width=160)
    console.print(latency(args.max_mib))
    console.print(replay())
    console.print(image_throughput(args.image_mib))


if __name__ == "__main__":
    main()

"""Power-management latency and S4 image throughput.

1. Suspend and resume latency (virtual ms, deterministic) of one S3 cycle as total GPU resource memory grows from
   1 MiB to 1 GiB: `no-soft-reset` and `suspend-bit` must stay flat; `freeze-mode` grows (the device must make
   its state survive the reset) and is shown for contrast.
2. S4 replay time per resource (`s4-replay`, virtual time of the restore divided by the objects re-created).
3. S4 image write and read + verify throughput (wall clock) as a ratio to a plain copy of the same bytes to the
   same disk in the same run, and the restore (a copy-on-write mapping).

Run: ``python benchmarks/bench_pm.py [--max-mib 1024] [--image-mib 256]``. No assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyvirtio.memory import GuestMemory
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.image import load_memory, read_image, write_image
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


def image_ratios(mib: int, repeats: int = 3) -> dict[str, float]:
    """S4 image write and read + verify of ``mib`` MiB of guest RAM (every page written, so nothing is a hole)
    beside plain copies of the same bytes to and from the same disk, best of ``repeats`` interleaved runs (wall
    clock: this is I/O). Plain write: one ``write`` of the bytes and an fsync. Plain read: ``read_bytes`` (a new
    bytes object, as a reader that keeps the data does) and, stricter, ``readinto`` a reused 1 MiB buffer (the
    cheapest read that still copies). Restore: :func:`load_memory` of the read image (a copy-on-write mapping)."""
    mem = GuestMemory(mib * MIB)
    view = mem.view(0, mib * MIB)
    view[::4096] = b"\x5a" * len(view[::4096])  # touch every page
    raw = bytes(view)
    view.release()
    best: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)

    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        plain, img = Path(tmp) / "plain", Path(tmp) / "image"
        buf = bytearray(MIB)

        def plain_write() -> None:
            with open(plain, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())

        def plain_readinto() -> None:
            with open(plain, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

        for _ in range(repeats):
            plain.unlink(missing_ok=True)
            img.unlink(missing_ok=True)
            timed("plain write", plain_write)
            timed("write", lambda: write_image(img, {"bench": True}, mem))
            timed("plain read", plain.read_bytes)
            timed("plain readinto", plain_readinto)
            timed("read", lambda: read_image(img))
            image = read_image(img)
            fresh = GuestMemory(mib * MIB)
            timed("restore", lambda: load_memory(image, fresh))  # noqa: B023
            fresh.close()
    mem.close()
    rate = {k: mib / v for k, v in best.items()}
    return {"mib": mib, "write_mib_s": rate["write"], "plain_write_mib_s": rate["plain write"],
            "write_ratio": rate["write"] / rate["plain write"], "read_mib_s": rate["read"],
            "plain_read_mib_s": rate["plain read"], "read_ratio": rate["read"] / rate["plain read"],
            "plain_readinto_mib_s": rate["plain readinto"],
            "read_ratio_readinto": rate["read"] / rate["plain readinto"], "restore_ms": best["restore"] * 1000}


def image_throughput(mib: int) -> Table:
    r = image_ratios(mib)
    t = Table(title=f"S4 image throughput, {mib} MiB of guest RAM (wall clock, same disk, same run)")
    for col in ("operation", "MiB/s", "plain copy MiB/s", "ratio"):
        t.add_column(col)
    t.add_row("write (atomic, fsync, XXH3 per chunk)", f"{r['write_mib_s']:.0f}", f"{r['plain_write_mib_s']:.0f}",
              f"{r['write_ratio']:.2f}")
    t.add_row("read + verify (vs read_bytes)", f"{r['read_mib_s']:.0f}", f"{r['plain_read_mib_s']:.0f}",
              f"{r['read_ratio']:.2f}")
    t.add_row("read + verify (vs readinto a reused buffer)", f"{r['read_mib_s']:.0f}",
              f"{r['plain_readinto_mib_s']:.0f}", f"{r['read_ratio_readinto']:.2f}")
    t.add_row("restore (map copy-on-write)", f"{r['restore_ms']:.2f} ms", "", "")
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

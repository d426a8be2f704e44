"""One S4 cell of the PM matrix at GiB scale: wall time and peak memory, each in a fresh process.

``pm run --profile suspend-bit+s4-replay --sleep S4 --resources N --resource-size S`` as the CLI runs it (the
guest creates N zeroed resources of S bytes: "clean"), and the worst case where the guest also writes every
pixel of every resource and transfers it to the host before hibernating ("dirty": every page of the resources
is touched in guest RAM and in the host's copy, and the image carries all of it).

Each cell runs in a child process so that its peak resident set size (:func:`peak_rss`) is that cell's. The
memory bound is peak RSS / (guest bytes written + host resource bytes); the host resource bytes are what
RESOURCE_CREATE_2D reserved (framebuffers, cursor and the N resources), the guest bytes written are the pixels
the guest wrote (the desktop, plus the N resources when dirty). The interpreter with numpy, matplotlib and the
model loaded is about 60 MB of it (so small cells are far above the ratio the bound is about).

Run: ``python benchmarks/bench_s4.py [--resources 64] [--resource-size 16M] [--scanouts 2] [--dirty]``. No
assertions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROFILE = "suspend-bit+s4-replay"


def _dirty_populate() -> None:
    """Make the scenario's populate (what the guest does before sleeping) also write a pattern into every extra
    resource and transfer it to the host."""
    import numpy as np

    from pyvirtio.pm import gpu_probe, system

    def populate(drv: Any, cfg: Any) -> None:
        for i in range(cfg.scanouts):
            drv.draw(i, gpu_probe.test_pattern(cfg.width, cfg.height, i))
        width = 256 if cfg.resource_size <= 16 << 20 else 4096  # as gpu_probe.populate
        height = max(1, cfg.resource_size // (width * 4))
        for k in range(cfg.resources):
            obj = drv.create_resource_2d(width, height)
            img = np.empty((height, width, 4), np.uint8)
            img[...] = np.random.default_rng(k).integers(0, 256, (1, width, 4), dtype=np.uint8)
            drv.write_pixels(obj, img)
            drv.transfer_to_host_2d(obj, (0, 0, width, height), wait=True)
        drv.set_cursor(0, cfg.width // 2, cfg.height // 2)

    system.populate = populate  # type: ignore[attr-defined]


def child(resources: int, size: int, dirty: bool, scanouts: int = 2, width: int = 320,
          height: int = 200) -> dict[str, Any]:
    """Run the cell here; returns its wall time, peak RSS and the bytes the bound is computed from."""
    if dirty:
        _dirty_populate()
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.profiles import parse_profile
    from pyvirtio.pm.scenario import run_cell

    cfg = ScenarioConfig(resources=resources, resource_size=size, scanouts=scanouts, width=width, height=height)
    t0 = time.perf_counter()
    cell = run_cell(parse_profile(PROFILE), "S4", cfg)
    wall = time.perf_counter() - t0
    res_width = 256 if size <= 16 << 20 else 4096  # as gpu_probe.populate
    res_bytes = resources * (size // (res_width * 4)) * res_width * 4
    fb = cfg.scanouts * cfg.width * cfg.height * 4 + 64 * 64 * 4
    guest_written = fb + (res_bytes if dirty else 0)
    host = fb + res_bytes
    return {"resources": resources, "resource_size": size, "scanouts": scanouts, "scanout_size": f"{width}x{height}",
            "dirty": dirty, "wall_s": wall,
            "outcome": cell.outcome.value, "display_restored": cell.display_restored,
            "peak_rss": peak_rss(),
            "guest_ram": cfg.memory_size(), "guest_written": guest_written, "host_resource_bytes": host}


def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM of /proc/self/status (the high-water mark of this
    program's memory; ``getrusage``'s ru_maxrss would also count the parent's memory at fork, which Linux carries
    across exec), else ``getrusage``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(resources: int, size: int, dirty: bool, scanouts: int = 2, width: int = 320,
            height: int = 200) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter (its own peak RSS); the process's wall time is added."""
    t0 = time.perf_counter()
    args = ["--resources", str(resources), "--resource-size", str(size), "--scanouts", str(scanouts),
            "--width", str(width), "--height", str(height)] + (["--dirty"] if dirty else [])
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True,
                         text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    result["rss_bound_ratio"] = result["peak_rss"] / (result["guest_written"] + result["host_resource_bytes"])
    return result


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * mult[text[-1].upper()] if text[-1].upper() in mult else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=64)
    ap.add_argument("--resource-size", type=parse_size, default=16 << 20)
    ap.add_argument("--scanouts", type=int, default=2)
    ap.add_argument("--width", type=int, default=320, help="of each scanout")
    ap.add_argument("--height", type=int, default=200, help="of each scanout")
    ap.add_argument("--dirty", action="store_true", help="the guest writes every resource and transfers it")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.resources, args.resource_size, args.dirty, args.scanouts, args.width,
                               args.height)))
        return
    print(json.dumps(measure(args.resources, args.resource_size, args.dirty, args.scanouts, args.width, args.height),
                     indent=1))


if __name__ == "__main__":
    main()

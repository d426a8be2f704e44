"""Full-screen frames/s a real guest writes to /dev/fb0 through pyvirtio's Gpu served over vhost-user, beside
QEMU's built-in virtio-gpu-pci, with the same guest and the same ``dd`` loop.

Two VMs of the real-VM harness, one after the other, on the QEMU 10.0 + Linux 6.12 stack (q35, the gpu behind the
stack's pcie-root-port): one with QEMU's ``virtio-gpu-pci``, one with ``vhost-user-gpu-pci`` connected to
``pyvirtio serve gpu``. In each, the guest writes ``--frames`` whole 1280x800 XRGB frames into /dev/fb0 (one
``dd`` of 4,096,000 bytes per frame, alternating two pictures, from guest RAM); the host times the loop until
the last frame is on the screen (``screendump`` polled; the serial console's round trip subtracted) and counts
what the device did meanwhile: RESOURCE_FLUSH commands (QEMU's ``virtio_gpu_cmd_res_flush`` trace events; the
served model's flush count) and, for the served gpu, the UPDATE messages (pixels) sent to QEMU's display.
``--repeats`` loops per VM, best kept. Prints frames/s for both and served/built-in (target >= 0.5).

Linux's fbdev emulation turns each write into damage that a worker flushes (TRANSFER_TO_HOST_2D of the damaged
rectangle, then RESOURCE_FLUSH) while ``dd`` goes on: a slow device gets fewer, larger flushes (damage merges),
so the flush and update rates show the device path's throughput, frames/s the guest's end to end.

Run: ``python benchmarks/bench_serve_gpu.py [--frames 60] [--repeats 2] [--profile FILE]`` (``--profile``: the
back-end runs under cProfile and the top functions are printed). Wall-clock only.
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyvirtio.vm import image
from pyvirtio.vm.private_stack import provision_stack
from pyvirtio.vm.served import BackendProcess, ServedGpuVm, serve_command
from pyvirtio.vm.stacks import QEMU10_LINUX612

FRAME_BYTES = image.FRAME_WIDTH * image.FRAME_HEIGHT * 4


@dataclass
class Loop:
    """One loop of ``frames`` frames."""

    frames: int
    seconds: float
    flushes: int
    updates: int | None  # served only

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def _builtin_flushes(trace: Path) -> int:
    try:
        return len(re.findall(r"virtio_gpu_cmd_res_flush", trace.read_text(errors="replace")))
    except OSError:
        return 0


Counts = Callable[[], tuple[int, int | None]]  # the device's (flushes, updates sent) so far


def loop(vm: ServedGpuVm, frames: int, count: Counts) -> Loop:
    """Write ``frames`` frames; seconds until the last is on the screen, and the device's counts meanwhile."""
    last = "a" if frames % 2 else "b"
    before = count()
    secs = vm.fb_loop(frames)
    t0 = time.monotonic()
    shown, _ = vm.wait_screen(image.make_frame(last), 60.0, "bench")
    if not shown:
        raise SystemExit("the last frame never reached the screen")
    secs += time.monotonic() - t0
    after = count()
    return Loop(frames, secs, after[0] - before[0],
                None if after[1] is None or before[1] is None else after[1] - before[1])


def run_builtin(assets: object, tmp: Path, frames: int, repeats: int) -> list[Loop]:
    vm = ServedGpuVm(assets, tmp / "b.sock", tmp / "builtin", builtin=True)  # type: ignore[arg-type]
    try:
        vm.start()
        vm.draw("a")
        vm.wait_screen(image.make_frame("a"), 30.0)
        trace = vm.vm.files.trace_log
        return [loop(vm, frames, lambda: (_builtin_flushes(trace), None)) for _ in range(repeats)]
    finally:
        vm.stop()


def run_served(assets: object, tmp: Path, frames: int, repeats: int, profile: Path | None) -> list[Loop]:
    sock = tmp / "s.sock"
    dump = tmp / "served-model.png"
    argv = serve_command("gpu", sock, report=tmp / "served-report.json", extra=["--dump-scanout", str(dump)])
    if profile is not None:
        argv[argv.index("-c") + 1] = ("import cProfile; from pyvirtio.cli import run; "
                                      f"cProfile.run('run()', {str(profile)!r})")
    backend = BackendProcess(argv, sock, tmp)
    backend.start()
    vm = ServedGpuVm(assets, sock, tmp / "served")  # type: ignore[arg-type]

    def count() -> tuple[int, int | None]:
        info = backend.request_dump(dump)
        return info["scanouts"][0]["flushes"], info["display"]["messages"].get("UPDATE", 0)

    try:
        vm.start()
        vm.draw("a")
        vm.wait_screen(image.make_frame("a"), 30.0)
        return [loop(vm, frames, count) for _ in range(repeats)]
    finally:
        vm.stop()
        backend.wait(30)
        backend.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the back-end into this file")
    ap.add_argument("--keep", action="store_true", help="keep the VMs' logs and disks (their directory is printed)")
    args = ap.parse_args()
    assets = provision_stack(stack=QEMU10_LINUX612.name)
    tmp = Path(tempfile.mkdtemp(prefix="pvgb-", dir="/tmp"))
    t0 = time.monotonic()
    try:
        builtin = max(run_builtin(assets, tmp, args.frames, args.repeats), key=lambda r: r.fps)
        served = max(run_served(assets, tmp, args.frames, args.repeats, args.profile), key=lambda r: r.fps)
    finally:
        if args.keep:
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{QEMU10_LINUX612.name} q35: {args.frames} frames of 1280x800 into /dev/fb0, best of {args.repeats} "
          f"({time.monotonic() - t0:.0f} s in all)")
    print(f"  QEMU virtio-gpu-pci (built-in):   {builtin.fps:6.2f} frames/s   "
          f"{builtin.flushes / builtin.seconds:6.2f} flushes/s")
    print(f"  pyvirtio serve gpu (vhost-user):  {served.fps:6.2f} frames/s   "
          f"{served.flushes / served.seconds:6.2f} flushes/s   "
          f"{(served.updates or 0) / served.seconds:6.2f} updates/s to QEMU's display")
    print(f"  ratio served / built-in:          {served.fps / builtin.fps:6.2f}  (target >= 0.5)")
    print(json.dumps({"builtin": builtin.__dict__, "served": served.__dict__}))
    if args.profile is not None and args.profile.exists():
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()

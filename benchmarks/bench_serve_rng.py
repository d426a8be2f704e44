"""Entropy bytes/s read by a real guest from pyvirtio's Rng served over vhost-user, beside QEMU's built-in
virtio-rng-pci, in the same guest with the same ``dd``.

One VM of the real-VM harness (``--stack``, ``--machine``) has both devices: QEMU's ``virtio-rng-pci`` (backed by
``/dev/urandom``) and ``vhost-user-rng-pci`` connected to ``pyvirtio serve rng``. The guest binds one virtio-rng at a
time (the other is unbound), reads ``--size`` bytes from /dev/hwrng with ``dd bs=4096``, and the host times the
command (minus an empty command's round trip over the serial console). The two alternate ``--repeats`` times;
the best of each is kept (both see the same machine load). Prints both rates and served/built-in (target >= 0.5).

Linux's virtio-rng keeps one 64-byte request in flight at a time, so this measures the per-request round trip:
guest kick -> QEMU -> the back-end's event loop and the device model -> used ring -> call eventfd -> QEMU ->
interrupt.

Run: ``python benchmarks/bench_serve_rng.py [--stack S] [--machine pc|q35] [--size 1M] [--repeats 3]``
(a provisioned stack: ``pyvirtio vm provision``). Wall-clock only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyvirtio.vm.private_stack import provision_stack
from pyvirtio.vm.served import BackendProcess, ServedVm, serve_command
from pyvirtio.vm.stacks import DEFAULT_STACK, STACK_NAMES


def measure(vm: ServedVm, served: bool, size: int) -> float:
    """Bytes/s of one ``dd`` of ``size`` bytes from /dev/hwrng with one of the two devices bound."""
    if served:
        vm.use_served_rng()
    else:
        vm.use_builtin_rng()
    rt = min(vm.round_trip() for _ in range(3))
    secs, _, _ = vm.dd_hwrng(size, timeout=600)
    return size / max(secs - rt, 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stack", choices=STACK_NAMES, default=DEFAULT_STACK)
    ap.add_argument("--machine", choices=("pc", "q35"), default="q35")
    ap.add_argument("--size", type=lambda s: int(s[:-1]) << 20 if s.endswith("M") else int(s), default=1 << 20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    assets = provision_stack(stack=args.stack)
    tmp = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    sock = Path("/tmp") / f"pv-bench-{tmp.name[-8:]}.sock"
    backend = BackendProcess(serve_command("rng", sock, seed=0), sock, tmp)
    backend.start()
    vm = ServedVm(assets, args.machine, sock, tmp / "logs")
    t0 = time.monotonic()
    try:
        vm.start()
        best_builtin = best_served = 0.0
        for _ in range(args.repeats):
            best_builtin = max(best_builtin, measure(vm, False, args.size))
            best_served = max(best_served, measure(vm, True, args.size))
    finally:
        vm.stop()
        backend.wait(30)
        backend.stop()
    print(f"{args.stack} {args.machine}: dd of {args.size >> 10} KiB from /dev/hwrng, best of {args.repeats} "
          f"({time.monotonic() - t0:.0f} s in all)")
    print(f"  QEMU virtio-rng-pci (built-in):        {best_builtin / 1e6:8.3f} MB/s")
    print(f"  pyvirtio serve rng (vhost-user-rng):   {best_served / 1e6:8.3f} MB/s")
    print(f"  ratio served / built-in:               {best_served / best_builtin:8.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()

"""Split-virtqueue throughput: chains per second through DriverQueue.add -> DeviceQueue.pop -> DeviceQueue.push
-> DriverQueue.get_used, for chains of 1 and 4 descriptors (direct and indirect), one at a time and in batches of
64 (the batch forms ``pop_many``/``push_many``/``drain_used``).

Each result is printed beside a baseline measured in the same run over the same number of chains: the minimal
Python work per chain (``struct`` unpack of one 16-byte descriptor + pack of one 8-byte used element on a
bytearray); the goal is stated against it. For chains of several descriptors the ratio to the same loop over every
descriptor the device reads (4, or 5 with an indirect table) is printed too, for information. CPU time of this
thread (``time.thread_time``: what other processes on a shared machine do counts less than in wall time), best of
``REPEAT`` interleaved runs. The machine's speed swings by tens of percent within seconds when it is shared, so
the speed-up over another tree is the median of ``REPEAT`` ratios, each between the two trees' runs made back to
back; no assertions on timing.

Each run of a case is a fresh child process (so is every run on another tree). ``--against REV`` also runs the
one-at-a-time cases on the tree of git revision REV (``git archive``), interleaved with this tree's: the speed-up
in the same run.

Run: ``python benchmarks/bench_queue.py [--against 0d0b508]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("PYVIRTIO_ROOT", str(ROOT)))

from pyvirtio.dma import GuestAllocator  # noqa: E402
from pyvirtio.memory import GuestMemory  # noqa: E402
from pyvirtio.virtqueue import DeviceQueue, DriverQueue, RingLayout  # noqa: E402

N = 30_000  # chains per measurement
REPEAT = 5  # runs per case (best taken); the baseline takes the best of REPEAT around each run
SIZE = 256  # queue size
SEG = 64  # bytes per segment
#: (name, descriptors, batch, indirect)
CASES = (
    ("1 descriptor, one at a time", 1, 1, False),
    ("4 descriptors, one at a time", 4, 1, False),
    ("4 descriptors, indirect, one at a time", 4, 1, True),
    ("1 descriptor, batches of 64", 1, 64, False),
    ("4 descriptors, batches of 64", 4, 64, False),
)


def make_pair(indirect: bool) -> tuple[GuestMemory, GuestAllocator, DriverQueue, DeviceQueue]:
    mem = GuestMemory(16 << 20)
    alloc = GuestAllocator(mem, 1 << 20, 8 << 20)
    layout = RingLayout.contiguous(0x10000, SIZE)
    drv = DriverQueue(mem, layout, indirect=indirect, alloc=alloc)
    dev = DeviceQueue(mem, SIZE)
    dev.desc_table, dev.avail_ring, dev.used_ring = layout.desc, layout.avail, layout.used
    dev.indirect = indirect
    dev.activate()
    return mem, alloc, drv, dev


def chains(ndesc: int, *, batch: int, indirect: bool = False) -> float:
    """CPU seconds for N chains of ``ndesc`` descriptors (the last one device-writable), ``batch`` at a time."""
    mem, alloc, drv, dev = make_pair(indirect)
    segs = [(alloc.alloc(SEG), SEG) for _ in range(ndesc)]
    out, in_ = segs[:-1], segs[-1:]
    add, pop, push, get_used = drv.add, dev.pop, dev.push, drv.get_used
    rounds = N // batch
    t0 = time.thread_time()
    if batch == 1:
        for _ in range(rounds):
            add(out, in_, 1)
            chain = pop()
            push(chain.head, SEG)  # type: ignore[union-attr]
            get_used()
    else:  # the batch forms: one avail.idx read per batch on the device, one used.idx write
        pop_many, push_many, drain_used = dev.pop_many, dev.push_many, drv.drain_used
        for _ in range(rounds):
            for _ in range(batch):
                add(out, in_, 1)
            push_many([(c.head, SEG) for c in pop_many()])
            drain_used()
    t = time.thread_time() - t0
    assert drv.num_free == drv.num_max and dev.pop() is None
    mem.close()
    return t * N / (rounds * batch)


def baseline() -> float:
    """CPU seconds for N x (unpack one virtq_desc + pack one virtq_used_elem) on a bytearray."""
    desc = struct.Struct("<QIHH")
    used = struct.Struct("<II")
    ring = bytearray(16 * SIZE + 8 * SIZE)
    unpack_from, pack_into = desc.unpack_from, used.pack_into
    used_base = 16 * SIZE
    t0 = time.thread_time()
    for i in range(N):
        j = i & (SIZE - 1)
        _addr, n, _flags, _next = unpack_from(ring, 16 * j)
        pack_into(ring, used_base + 8 * j, j, n)
    return time.thread_time() - t0


def baseline_descs(ndesc: int) -> float:
    """CPU seconds for N x (unpack ``ndesc`` consecutive virtq_desc + pack one virtq_used_elem): the bare struct
    work over every descriptor a chain has (a 4-descriptor chain: 4; an indirect one: its ring descriptor and its
    4 table entries). Information beside :func:`baseline`, which the goal is stated against."""
    desc = struct.Struct("<QIHH")
    used = struct.Struct("<II")
    ring = bytearray(16 * (SIZE + ndesc) + 8 * SIZE)
    unpack_from, pack_into = desc.unpack_from, used.pack_into
    used_base = 16 * (SIZE + ndesc)
    offsets = tuple(16 * k for k in range(1, ndesc))
    t0 = time.thread_time()
    for i in range(N):
        j = i & (SIZE - 1)
        o = 16 * j
        _addr, n, _flags, _next = unpack_from(ring, o)
        for k in offsets:
            _addr, n, _flags, _next = unpack_from(ring, o + k)
        pack_into(ring, used_base + 8 * j, j, n)
    return time.thread_time() - t0


def best(fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(REPEAT))


def _old_tree(rev: str, where: Path) -> Path:
    """``pyvirtio`` of git revision ``rev`` unpacked under ``where``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pyvirtio"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def _case_in(tree: Path | None, ndesc: int, batch: int, indirect: bool) -> float:
    """One run of a case, in this process (``tree`` None) or in a fresh child process on ``tree`` (this tree's
    cases run in a child too: whatever ran before in this process, its heap and collector state, does not weigh on
    one side of a comparison only)."""
    if tree is None:
        return chains(ndesc, batch=batch, indirect=indirect)
    env = {**os.environ, "PYVIRTIO_ROOT": str(tree), "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([ndesc, batch, indirect])], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def results(against: str | None = None, repeat: int = REPEAT) -> list[dict[str, Any]]:
    """One dict per case: chains/s and the struct-loop baseline's loops/s (the best run of each) and their ratio,
    and with ``against`` the chains/s of that revision in the same run (its best run) and the speed-up: the
    median over the repeats of the ratio between the two trees' runs made back to back."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        old = _old_tree(against, Path(tmp)) if against else None
        for name, ndesc, batch, indirect in CASES:
            seen = ndesc + 1 if indirect else ndesc  # descriptors the device reads per chain
            runs: list[tuple[float, float, float, float]] = []  # (case, baseline, descriptors baseline, other tree)
            for k in range(repeat):
                # back to back: a baseline, the case and (with --against) the other tree's case in alternating
                # order, whose two runs (one fresh process each, the same length) see the same machine
                t_base = best(baseline)
                t_descs = best(partial(baseline_descs, seen)) if seen > 1 else float("nan")
                if old is not None and batch == 1 and k % 2:
                    t_old = _case_in(old, ndesc, batch, indirect)
                    t = _case_in(ROOT, ndesc, batch, indirect)
                else:
                    t = _case_in(ROOT, ndesc, batch, indirect)
                    t_old = _case_in(old, ndesc, batch, indirect) if old is not None and batch == 1 else float("nan")
                t_base = min(t_base, best(baseline))
                runs.append((t, t_base, t_descs, t_old))
            # against the struct loop: the best run of each side (the loop's runs are short and many, a case's
            # run is one; a ratio per group would count a slow moment against the case only)
            t, t_base = min(r[0] for r in runs), min(r[1] for r in runs)
            row: dict[str, Any] = {"case": name, "chains_per_s": N / t, "baseline_per_s": N / t_base,
                                   "slower_than_baseline": t / t_base, "descriptors": seen}
            if seen > 1:
                t_descs = min(r[2] for r in runs)
                row.update(descs_baseline_per_s=N / t_descs, slower_than_descs_baseline=t / t_descs)
            if old is not None and batch == 1:
                row.update(against=against, against_chains_per_s=N / min(r[3] for r in runs),
                           speedup=statistics.median(r[3] / r[0] for r in runs))
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REV", help="also run the one-at-a-time cases on git revision REV")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        ndesc, batch, indirect = json.loads(args.child)
        print(chains(ndesc, batch=batch, indirect=indirect))
        return
    print(f"split virtqueue, size {SIZE}, {N:,} chains per run, best of {REPEAT} (CPU time)")
    print(f"{'case':40} {'chains/s':>12} {'us/chain':>9} {'baseline/s':>12} {'vs baseline':>12} {'speed-up':>9}"
          f" {'vs struct loop over its descriptors':>36}")
    for r in results(args.against):
        up = f"{r['speedup']:8.2f}x" if "speedup" in r else ""
        per = (f"{r['slower_than_descs_baseline']:.1f}x ({r['descriptors']} descriptors)"
               if "slower_than_descs_baseline" in r else "")
        print(f"{r['case']:40} {r['chains_per_s']:12,.0f} {1e6 / r['chains_per_s']:9.2f} {r['baseline_per_s']:12,.0f}"
              f" {r['slower_than_baseline']:11.1f}x {up:>9} {per:>36}")


if __name__ == "__main__":
    main()

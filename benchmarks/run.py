"""Every benchmark of issue 13 in one command: one table of figures and ratios (each ratio against a baseline
measured in the same run), then the same as JSON, with a description of the machine.

Goals (issue 13): (1) bounded memory: peak RSS of the 1 GiB S4 cell <= 1.3x (guest bytes written + host resource
bytes), a 4 GiB S4 cell runs; (2) the 1 GiB S4 cell in <= 5 s; (3) S4 image write >= 0.8x and read + verify
>= 0.9x a plain copy of the same bytes; (4) the queue path <= ~15x the struct loop (>= 3x the chains/s of the
code before, with ``--against``); (5) 1080p frames >= 0.8x a numpy copy; (6) ``pm matrix --jobs 2`` gives the
same report as ``--jobs 1``, faster. ``--scale`` adds how the S4 cell's cost grows with resources, resource
size and scanouts, and the matrix's with cells.

Benchmarks never assert: a goal not met is a "no" in the table. The machine is shared (2 cores here): CPU-bound
figures use this thread's CPU time and the best of interleaved repeats; I/O and whole-process figures use wall
time.

Run: ``python benchmarks/run.py [--quick] [--scale] [--big] [--against REV] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_gpu  # noqa: E402
import bench_matrix  # noqa: E402
import bench_pm  # noqa: E402
import bench_queue  # noqa: E402
import bench_s4  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import xxhash

    return {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "os": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
            "xxhash": xxhash.VERSION, "load_avg_at_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


class Results:
    """Rows of the table: goal, what, value, baseline (same run), ratio, target, met."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}

    def add(self, goal: str, what: str, value: str, baseline: str = "", ratio: float | None = None,
            target: str = "", met: bool | None = None) -> None:
        self.rows.append({"goal": goal, "what": what, "value": value, "baseline": baseline,
                          "ratio": None if ratio is None else round(ratio, 3), "target": target, "met": met})

    def table(self, desc: dict[str, Any]) -> Table:
        t = Table(title=f"pyvirtio benchmarks: {desc['cpu']}, {desc['cpus']} CPUs, {desc['ram_gib']} GiB, "
                        f"Python {desc['python']}, load {desc['load_avg_at_start'][0]:.2f} at start")
        for col in ("goal", "measurement", "value", "baseline (same run)", "ratio", "target", "met"):
            t.add_column(col, overflow="fold")
        for r in self.rows:
            met = "" if r["met"] is None else ("[green]yes[/]" if r["met"] else "[red]no[/]")
            t.add_row(r["goal"], r["what"], r["value"], r["baseline"],
                      "" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"], met)
        return t


def _gb(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def s4_cells(res: Results, quick: bool, big: bool) -> None:
    size = 16 * MIB
    n = 16 if quick else 64
    for dirty in (False, True):
        r = bench_s4.measure(n, size, dirty)
        res.details[f"s4_{n}x16M_{'dirty' if dirty else 'clean'}"] = r
        label = f"S4 cell {_gb(n * size)} of resources{', all written' if dirty else ''}"
        res.add("1 memory", f"{label}: peak RSS", _gb(r["peak_rss"]),
                f"{_gb(r['guest_written'])} written + {_gb(r['host_resource_bytes'])} host",
                r["rss_bound_ratio"], "<= 1.30", r["rss_bound_ratio"] <= 1.3)
        res.add("2 S4 time", f"{label}: cell wall time (process)", f"{r['wall_s']:.2f} s ({r['process_s']:.1f} s)",
                "22.5 s before (issue 13)", None, "<= 5 s", r["wall_s"] <= 5)
    for dirty in (False, True) if big else (False,):
        if quick:
            break
        r = bench_s4.measure(256, size, dirty)
        res.details[f"s4_256x16M_{'dirty' if dirty else 'clean'}"] = r
        res.add("1 memory", f"S4 cell 4 GiB of resources{', all written' if dirty else ''}: runs, peak RSS",
                f"{r['outcome']}, {_gb(r['peak_rss'])}, {r['wall_s']:.1f} s",
                f"{_gb(r['guest_written'])} written + {_gb(r['host_resource_bytes'])} host", r["rss_bound_ratio"],
                "runs", r["outcome"] == "ok")


def image(res: Results, quick: bool) -> None:
    r = bench_pm.image_ratios(64 if quick else 256)
    res.details["image"] = r
    res.add("3 S4 image", f"write {r['mib']} MiB (atomic, fsync, XXH3)", f"{r['write_mib_s']:.0f} MiB/s",
            f"{r['plain_write_mib_s']:.0f} MiB/s write+fsync", r["write_ratio"], ">= 0.80", r["write_ratio"] >= 0.8)
    res.add("3 S4 image", "read + verify", f"{r['read_mib_s']:.0f} MiB/s",
            f"{r['plain_read_mib_s']:.0f} MiB/s read_bytes", r["read_ratio"], ">= 0.90", r["read_ratio"] >= 0.9)
    res.add("3 S4 image", "read + verify (stricter baseline)", f"{r['read_mib_s']:.0f} MiB/s",
            f"{r['plain_readinto_mib_s']:.0f} MiB/s readinto", r["read_ratio_readinto"], ">= 0.90",
            r["read_ratio_readinto"] >= 0.9)
    res.add("2 S4 time", "restore of the image (copy-on-write map)", f"{r['restore_ms']:.2f} ms")


def queue(res: Results, quick: bool, against: str | None) -> None:
    rows = bench_queue.results(against, repeat=3 if quick else 5)
    res.details["queue"] = rows
    for r in rows:
        res.add("4 queue", f"{r['case']}: chains/s", f"{r['chains_per_s']:,.0f}",
                f"{r['baseline_per_s']:,.0f} struct loop", r["slower_than_baseline"], "<= 15x slower",
                r["slower_than_baseline"] <= 15)
        if "slower_than_descs_baseline" in r:  # information: the same loop over every descriptor the chain has
            res.add("4 queue", f"{r['case']}: chains/s (struct loop over its {r['descriptors']} descriptors)",
                    f"{r['chains_per_s']:,.0f}", f"{r['descs_baseline_per_s']:,.0f} struct loop, {r['descriptors']}"
                    " descriptors", r["slower_than_descs_baseline"])
        if "speedup" in r:
            res.add("4 queue", f"{r['case']}: speed-up over {against}", f"{r['chains_per_s']:,.0f}",
                    f"{r['against_chains_per_s']:,.0f} at {against}", r["speedup"], ">= 3x", r["speedup"] >= 3)


def gpu(res: Results, quick: bool) -> None:
    rows = bench_gpu.results(frames=15 if quick else 30, repeats=5 if quick else 11)
    res.details["gpu"] = rows
    for r in rows:
        target = ">= 0.80" if r["frame"] == "1920x1080" else ""
        res.add("5 GPU frames", f"{r['frame']} transfer + flush: frames/s (fixed part {r['fixed_us']:.0f} us)",
                f"{r['gpu_fps']:.0f}", f"{r['copies_per_s']:.0f} numpy copies/s", r["ratio"], target,
                r["ratio"] >= 0.8 if target else None)


def matrix(res: Results, quick: bool) -> None:
    r = bench_matrix.jobs_speedup(2, repeats=1 if quick else 3)
    res.details["matrix"] = r
    res.add("6 pm matrix", f"{r['cells']} cells, --jobs 2 vs --jobs 1 (wall, whole command)",
            f"{r['jobsN_s']:.1f} s, report {'identical' if r['identical'] else 'DIFFERENT'}",
            f"{r['jobs1_s']:.1f} s --jobs 1", r["speedup"], "> 1, identical", r["identical"] and r["speedup"] > 1)


def scale(console: Console, out: dict[str, Any]) -> None:
    """How the S4 cell's cost grows with each knob (all resources written: the costly case), and the matrix's
    with cells."""
    knobs: list[tuple[str, list[dict[str, Any]]]] = [
        ("resources (x 4 MiB)", [bench_s4.measure(n, 4 * MIB, True) for n in (16, 64, 256)]),
        ("resource size (x 16)", [bench_s4.measure(16, s, True) for s in (1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB)]),
        ("scanouts (1920x1080)", [bench_s4.measure(4, 256 << 10, True, scanouts=k, width=1920, height=1080)
                                  for k in (1, 4, 8, 15)]),
    ]
    t = Table(title="Scale: one S4 cell (suspend-bit+s4-replay, every resource written), fresh process each")
    for col in ("knob", "resources", "resource size", "scanouts", "guest RAM", "cell s", "process s", "peak RSS",
                "RSS / (written + host)", "written + host"):
        t.add_column(col)
    for knob, rows in knobs:
        for r in rows:
            t.add_row(knob, str(r["resources"]), _gb(r["resource_size"]), str(r["scanouts"]), _gb(r["guest_ram"]),
                      f"{r['wall_s']:.2f}", f"{r['process_s']:.2f}", _gb(r["peak_rss"]), f"{r['rss_bound_ratio']:.2f}",
                      _gb(r["guest_written"] + r["host_resource_bytes"]))
    console.print(t)
    cells = bench_matrix.cells_scale()
    m = Table(title="Scale: pm matrix --jobs 1, whole command")
    m.add_column("cells")
    m.add_column("wall s")
    for r in cells:
        m.add_row(str(r["cells"]), f"{r['wall_s']:.1f}")
    console.print(m)
    out["scale"] = {k: v for k, v in knobs} | {"matrix_cells": cells}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (while iterating)")
    ap.add_argument("--big", action="store_true", help="also the 4 GiB S4 cell with every resource written")
    ap.add_argument("--scale", action="store_true", help="also how cost grows with each knob (3+ sizes each)")
    ap.add_argument("--against", metavar="REV", help="also run the queue cases on git revision REV (speed-up)")
    ap.add_argument("--only", help="comma-separated sections: s4,image,queue,gpu,matrix")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    console = Console(width=200)
    desc = machine()
    res = Results()
    sections = {"s4": lambda: s4_cells(res, args.quick, args.big), "image": lambda: image(res, args.quick),
                "queue": lambda: queue(res, args.quick, args.against), "gpu": lambda: gpu(res, args.quick),
                "matrix": lambda: matrix(res, args.quick)}
    chosen = args.only.split(",") if args.only else list(sections)
    for name in chosen:
        with console.status(f"benchmark: {name}"):
            sections[name]()
    console.print(res.table(desc))
    out: dict[str, Any] = {"machine": desc, "results": res.rows, "details": res.details}
    if args.scale:
        scale(console, out)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

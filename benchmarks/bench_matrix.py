"""``pyvirtio pm matrix`` as a whole: wall time with ``--jobs 1`` and ``--jobs N`` (same run, best of interleaved
repeats, the report checked byte for byte equal), and how the time grows with the number of cells.

Each run is the real command in a fresh process (``python -m pyvirtio.cli``-style entry point), so interpreter
start-up and imports are counted as a user sees them. Wall clock; no assertions.

Run: ``python benchmarks/bench_matrix.py [--jobs 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyvirtio.pm.profiles import DEFAULT_PROFILES  # noqa: E402

_CLI = "from pyvirtio.cli import run; run()"


def run_matrix_cli(out: Path, jobs: int, profiles: tuple[str, ...] = ()) -> float:
    """Seconds for ``pm matrix --jobs JOBS --out OUT [--profile P ...]`` in a fresh process."""
    args = [sys.executable, "-c", _CLI, "pm", "matrix", "--jobs", str(jobs), "--out", str(out)]
    for p in profiles:
        args += ["--profile", p]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def jobs_speedup(jobs: int = 2, repeats: int = 3) -> dict[str, Any]:
    """Best wall time of the full matrix with ``--jobs 1`` and ``--jobs N``, interleaved, and whether the two
    reports (written to the same directory, so even the picture paths match) are byte-identical."""
    t1 = tn = float("inf")
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m"
        for _ in range(repeats):
            t1 = min(t1, run_matrix_cli(out, 1))
            one = (out / "report.json").read_bytes()
            tn = min(tn, run_matrix_cli(out, jobs))
            same = same and (out / "report.json").read_bytes() == one
        cells = len(json.loads(one)["cells"])
    return {"cells": cells, "jobs": jobs, "jobs1_s": t1, "jobsN_s": tn, "speedup": t1 / tn, "identical": same,
            "cpus": os.cpu_count()}


def cells_scale(repeats: int = 2) -> list[dict[str, Any]]:
    """Wall time of ``pm matrix --jobs 1`` for 2, 4 and all default profiles (x 3 sleep states)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (2, 4, len(DEFAULT_PROFILES)):
            profiles = tuple(DEFAULT_PROFILES[:k])
            t = min(run_matrix_cli(Path(tmp) / f"m{k}", 1, profiles) for _ in range(repeats))
            rows.append({"cells": 3 * k, "wall_s": t})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(jobs_speedup(args.jobs, args.repeats), indent=1))
    print(json.dumps(cells_scale(), indent=1))


if __name__ == "__main__":
    main()

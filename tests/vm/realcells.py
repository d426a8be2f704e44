"""Running real-VM cells for the tests: two at a time, and their results as one report."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyvirtio.report import Report, Source
from pyvirtio.vm.scenario import CellRun


def run_two_at_a_time(runs: Iterable[CellRun]) -> None:
    """Run every cell, two at a time (one TCG QEMU per core)."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: r.run(), runs))


def write_report(runs: Iterable[CellRun], path: Path, **meta: object) -> Path:
    """The cells' results as one real-VM report.json at ``path`` (for ``vm compare --real``)."""
    Report(cells=[r.result for r in runs], meta={"source": Source.REAL_VM.value, **meta}).write(path)
    return path

"""``pyvirtio pm matrix`` as data: every profile through every sleep state, one :class:`~pyvirtio.report.Report`.

Contract: cells come in (profile, sleep state) order; with ``out_dir`` the report is written to
``out_dir/report.json`` and the before/after pictures to ``out_dir/images``. Cells are independent (each builds
its own machine from the profile and the workload, and is deterministic), so ``jobs`` > 1 runs them in that many
processes (this one and ``jobs - 1`` workers) and merges the results in cell order: the report is the same
whatever ``jobs`` is.
Presentation (the table) is the CLI's (:mod:`pyvirtio.cli.pm`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import DEFAULT_PROFILES, Profile, parse_profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell
from pyvirtio.report import CellResult, Report, SleepState, Source

#: Most worker processes ``jobs`` may ask for.
JOBS_MAX = 64


def run_matrix(profiles: Iterable[Profile | str] = DEFAULT_PROFILES, sleeps: Iterable[SleepState | str] = SLEEP_STATES,
               cfg: ScenarioConfig | None = None, out_dir: Path | None = None,
               progress: Callable[[str], None] | None = None, jobs: int = 1) -> Report:
    """Run every (profile, sleep) cell; ``progress`` is told ``"<profile> <sleep>"`` before each one (with
    ``jobs`` > 1: as its result is taken, in cell order).

    Profile names are parsed before anything runs (one-line :class:`~pyvirtio.errors.UserInputError`).
    With ``jobs`` > 1 the cells run in this process and ``jobs - 1`` worker processes (``forkserver``: nothing of
    this process's threads or state is inherited); ValueError unless 1 <= jobs <= JOBS_MAX.
    """
    if not 1 <= jobs <= JOBS_MAX:
        raise ValueError(f"jobs must be 1..{JOBS_MAX}")
    cfg = cfg or ScenarioConfig()
    report = Report(meta={"source": Source.MODEL.value, "config": cfg.__dict__})
    parsed = [p if isinstance(p, Profile) else parse_profile(p) for p in profiles]
    states = [SleepState(s) for s in sleeps]
    cells = [(prof, sleep) for prof in parsed for sleep in states]
    images = out_dir / "images" if out_dir else None
    if jobs == 1 or len(cells) < 2:
        for prof, sleep in cells:
            if progress:
                progress(f"{prof.name} {sleep.value}")
            report.cells.append(run_cell(prof, sleep, cfg, out_dir=images))
    else:
        report.cells += _run_parallel(cells, cfg, images, progress, jobs)
    if out_dir is not None:
        report.write(out_dir / "report.json")
    return report


def _run_parallel(cells: list[tuple[Profile, SleepState]], cfg: ScenarioConfig, images: Path | None,
                  progress: Callable[[str], None] | None, jobs: int) -> list[CellResult]:
    """The cells in this process and ``jobs - 1`` workers; results in cell order (the deterministic merge).

    The workers take cells from the front; this process, which has the model loaded already, takes them from
    the back (cancelling cells no worker has started yet) until it meets a cell a worker has: every cell runs
    once, and no core waits while the workers start.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports the model once; each worker is a fork of it
    done: dict[int, CellResult] = {}
    with ProcessPoolExecutor(max_workers=min(jobs - 1, len(cells) - 1), mp_context=context) as pool:
        futures: list[Future[CellResult]] = [pool.submit(run_cell, prof, sleep, cfg, out_dir=images)
                                             for prof, sleep in cells]
        for i in reversed(range(len(cells))):
            if not futures[i].cancel():
                break
            done[i] = run_cell(*cells[i], cfg, out_dir=images)
        out: list[CellResult] = []
        for i, ((prof, sleep), future) in enumerate(zip(cells, futures, strict=True)):
            if progress:
                progress(f"{prof.name} {sleep.value}")
            out.append(done[i] if i in done else future.result())
    return out

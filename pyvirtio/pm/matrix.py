"""``pyvirtio pm matrix`` as data: every profile through every sleep state, one :class:`~pyvirtio.report.Report`.

Contract: cells come in (profile, sleep state) order; with ``out_dir`` the report is written to
``out_dir/report.json`` and the before/after pictures to ``out_dir/images``. Presentation (the table) is the
CLI's (:mod:`pyvirtio.cli.pm`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import DEFAULT_PROFILES, Profile, parse_profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell
from pyvirtio.report import Report, SleepState, Source


def run_matrix(profiles: Iterable[Profile | str] = DEFAULT_PROFILES, sleeps: Iterable[SleepState | str] = SLEEP_STATES,
               cfg: ScenarioConfig | None = None, out_dir: Path | None = None,
               progress: Callable[[str], None] | None = None) -> Report:
    """Run every (profile, sleep) cell; ``progress`` is told ``"<profile> <sleep>"`` before each one.

    Profile names are parsed before anything runs (one-line :class:`~pyvirtio.errors.UserInputError`).
    """
    cfg = cfg or ScenarioConfig()
    report = Report(meta={"source": Source.MODEL.value, "config": cfg.__dict__})
    parsed = [p if isinstance(p, Profile) else parse_profile(p) for p in profiles]
    states = [SleepState(s) for s in sleeps]
    for prof in parsed:
        for sleep in states:
            if progress:
                progress(f"{prof.name} {sleep.value}")
            report.cells.append(run_cell(prof, sleep, cfg, out_dir=out_dir / "images" if out_dir else None))
    if out_dir is not None:
        report.write(out_dir / "report.json")
    return report

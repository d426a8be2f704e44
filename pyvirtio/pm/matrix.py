"""``pyvirtio pm matrix``: every profile through S3, s2idle and S4, as a table, pictures and a JSON report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from rich.table import Table

from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import DEFAULT_PROFILES, parse_profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell
from pyvirtio.report import CellResult, Report


def run_matrix(profiles: Iterable[str] = DEFAULT_PROFILES, sleeps: Iterable[str] = SLEEP_STATES,
               cfg: ScenarioConfig | None = None, out_dir: Path | None = None,
               progress: Callable[[str], None] | None = None) -> Report:
    cfg = cfg or ScenarioConfig()
    report = Report(meta={"source": "model", "config": cfg.__dict__})
    parsed = [parse_profile(p) for p in profiles]
    for prof in parsed:
        for sleep in sleeps:
            if progress:
                progress(f"{prof.name} {sleep}")
            report.cells.append(run_cell(prof, sleep, cfg, out_dir=out_dir / "images" if out_dir else None))
    if out_dir is not None:
        report.write(out_dir / "report.json")
    return report


def _yn(v: bool | None) -> str:
    return "-" if v is None else ("[green]yes[/]" if v else "[red]no[/]")


def table(cells: list[CellResult], title: str = "pyvirtio pm matrix") -> Table:
    t = Table(title=title)
    for col in ("profile", "sleep", "outcome", "display", "new frame", "resources", "queues", "in-flight",
                "cfg event", "violations", "suspend ms", "resume ms"):
        t.add_column(col, overflow="fold")
    for c in cells:
        ev = "-" if c.config_events_after_resume is None else (
            f"[green]{c.config_events_after_resume}[/]" if c.config_events_after_resume == 1
            else f"[red]{c.config_events_after_resume}[/]")
        res = {"kept": "[green]kept[/]", "re-created": "[green]re-created[/]"}.get(c.resources or "-",
                                                                                   f"[red]{c.resources}[/]")
        t.add_row(c.profile, c.sleep, c.outcome, _yn(c.display_restored), _yn(c.new_frame_after_resume), res,
                  _yn(c.queues_alive), _yn(c.inflight_completed), ev, str(len(c.violations)),
                  "-" if c.suspend_ms is None else f"{c.suspend_ms:.2f}",
                  "-" if c.resume_ms is None else f"{c.resume_ms:.2f}")
    return t

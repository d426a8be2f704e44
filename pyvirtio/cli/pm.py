"""``pyvirtio pm``: the power-management experiment on the model (``matrix``: every cell; ``run``: one cell).

The matrix table is drawn here, from the cells' data (:func:`table`); the experiment itself is
:mod:`pyvirtio.pm`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
from rich.progress import Progress
from rich.table import Table

from pyvirtio.cli.common import (
    SLEEP_CHOICE,
    Group,
    err,
    lit,
    millis,
    out,
    output_dir,
    parse_profiles,
    shown,
    size_option,
    yes_no,
)
from pyvirtio.pm.config import RESOURCE_SIZE_MAX, SEED_MAX, ScenarioConfig
from pyvirtio.pm.matrix import JOBS_MAX, run_matrix
from pyvirtio.pm.profiles import DEFAULT_PROFILES, DESCRIPTIONS, Profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell
from pyvirtio.provenance import Evidence, Kind, latest, provenance_of
from pyvirtio.report import CellResult, Report, ResourceFate, SleepState, Source

#: How each resource fate is coloured: the good ones green, the others red.
FATE_STYLE = {ResourceFate.KEPT: "green", ResourceFate.RECREATED: "green", ResourceFate.PARTIAL: "red",
              ResourceFate.LOST: "red"}
MATRIX_COLUMNS = ("profile", "sleep", "outcome", "display", "new frame", "resources", "queues", "in-flight",
                  "cfg event", "violations", "suspend ms", "resume ms")


def _events(n: int | None) -> str:
    return "-" if n is None else f"[{'green' if n == 1 else 'red'}]{n}[/]"


def _fate(f: ResourceFate | None) -> str:
    return "-" if f is None else f"[{FATE_STYLE[f]}]{f.value}[/]"


def short_stack(stack: str) -> str:
    """``qemu10.0-linux6.12`` -> ``QEMU 10.0+6.12``, ``uml-linux6.12`` -> ``UML 6.12`` (other names unchanged)."""
    m = re.fullmatch(r"qemu([\d.]+)-linux([\d.]+)", stack)
    if m:
        return f"QEMU {m[1]}+{m[2]}"
    m = re.fullmatch(r"uml-linux([\d.]+)", stack)
    return f"UML {m[1]}" if m else stack


def _checked(evidence: list[Evidence]) -> str:
    """One entry per real stack (strongest first), its machines in brackets for QEMU; green when every run of it
    agreed, red with DIFFERS when one did not."""
    if not evidence:
        return "model only"
    groups: dict[tuple[Kind, str], list[Evidence]] = {}
    for e in evidence:
        groups.setdefault((e.kind, e.stack), []).append(e)
    parts = []
    for (kind, stack), runs in groups.items():
        agrees = all(e.agrees for e in runs)
        where = f" ({', '.join(sorted({e.machine for e in runs}))})" if kind is Kind.QEMU else ""
        verdict = "" if agrees else " DIFFERS"
        parts.append(f"[{'green' if agrees else 'red'}]{lit(short_stack(stack))}{where}{verdict}[/]")
    return ", ".join(parts)


def table(cells: list[CellResult], title: str = "pyvirtio pm matrix",
          evidence: list[Evidence] | None = None) -> Table:
    """The matrix as a rich table: one row per cell, good results green, bad ones red; with ``evidence`` (the
    ledger of real runs) a last column says what each cell was checked against."""
    t = Table(title=title)
    for col in (*MATRIX_COLUMNS, *(("checked against",) if evidence is not None else ())):
        t.add_column(col, overflow="fold")
    for c in cells:
        row = [lit(c.profile), c.sleep.value, c.outcome.value, yes_no(c.display_restored),
               yes_no(c.new_frame_after_resume), _fate(c.resources), yes_no(c.queues_alive),
               yes_no(c.inflight_completed), _events(c.config_events_after_resume), str(len(c.violations)),
               millis(c.suspend_ms, 2), millis(c.resume_ms, 2)]
        if evidence is not None:
            row.append(_checked(provenance_of(evidence, c.profile, c.sleep.value)[1]))
        t.add_row(*row)
    return t


def scenario_options(f: Callable[..., None]) -> Callable[..., None]:
    """The workload options every ``pm`` command takes (they make a :class:`ScenarioConfig`)."""
    f = click.option("--resources", type=click.IntRange(0, 4096), default=4, show_default=True,
                     help="Extra GPU resources besides framebuffers and cursor.")(f)
    f = click.option("--resource-size", callback=size_option(RESOURCE_SIZE_MAX), default="256K", show_default=True,
                     help="Bytes per extra resource (K/M/G suffixes, at most 256M).")(f)
    f = click.option("--scanouts", type=click.IntRange(1, 15), default=2, show_default=True)(f)
    f = click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True)(f)
    return f


def _config(resources: int, resource_size: int, scanouts: int, seed: int) -> ScenarioConfig:
    cfg = ScenarioConfig(scanouts=scanouts, resources=resources, resource_size=resource_size, seed=seed)
    cfg.validate()  # a UserInputError is the one-line error of the policy
    return cfg


@click.group(cls=Group)
def pm() -> None:
    """Suspend-to-RAM, s2idle and hibernation across the six mechanisms."""


@pm.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pm-matrix"),
              show_default=True, help="Where report.json, the before/after PNGs and the timelines go (images/).")
@click.option("--profile", "profiles", callback=parse_profiles, multiple=True,
              help="Profiles to run (default: the standard rows).")
@click.option("--jobs", type=click.IntRange(1, JOBS_MAX), default=1, show_default=True,
              help="Worker processes running the cells (the report is the same whatever the number).")
@click.option("--real", is_flag=True,
              help="Add what each cell was checked against: the latest real runs (vm compare, the UML scenarios).")
@click.option("--real-runs", "ledger", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The ledger of real runs to read with --real (default $PYVIRTIO_REAL_RUNS or "
                   "~/.cache/pyvirtio/real-runs).")
@scenario_options
def matrix(out_dir: Path, profiles: tuple[Profile, ...], jobs: int, real: bool, ledger: Path | None, resources: int,
           resource_size: int, scanouts: int, seed: int) -> None:
    """Every profile through S3, s2idle and S4: table, pictures, timelines and a JSON report. With --real, each
    cell also says whether it was checked against a real kernel with pyvirtio's device (UML) or a real VMM and
    kernel (QEMU), from the latest real runs, and whether they agreed (report.json: meta "provenance")."""
    cfg = _config(resources, resource_size, scanouts, seed)
    output_dir(out_dir)
    evidence: list[Evidence] | None = None
    if real or ledger is not None:
        evidence, problems = latest(ledger)
        for line in problems:
            err.print(shown(f"warning: real-run ledger: {line} (skipped)"), markup=False, highlight=False)
    rows: tuple[Profile | str, ...] = profiles or DEFAULT_PROFILES
    t0 = time.perf_counter()
    with Progress(console=out, transient=True) as bar:
        task = bar.add_task("cells", total=len(rows) * len(SLEEP_STATES))

        def step(label: str) -> None:
            bar.update(task, advance=1 if bar.tasks[task].description != "cells" else 0, description=label)

        report = run_matrix(rows, SLEEP_STATES, cfg, out_dir, progress=step, jobs=jobs)
    if evidence is not None:
        report.meta["provenance"] = {
            f"{c.profile}/{c.sleep.value}": {"kind": kind.value, "runs": [{**asdict(e), "kind": e.kind.value}
                                                                           for e in ev]}
            for c in report.cells for kind, ev in [provenance_of(evidence, c.profile, c.sleep.value)]}
        report.write(out_dir / "report.json")
    out.print(table(report.cells, evidence=evidence))
    out.print(shown(f"{len(report.cells)} cells in {time.perf_counter() - t0:.1f} s; report {out_dir / 'report.json'}, "
              f"pictures in {out_dir / 'images'}"), markup=False, highlight=False)


@pm.command()
@click.option("--profile", callback=parse_profiles, required=True,
              help="e.g. baseline, suspend-bit, no-soft-reset+s4-replay")
@click.option("--sleep", type=SLEEP_CHOICE, required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pm-run"),
              show_default=True, help="Where report.json, <profile>-<sleep>-timeline.png and images/ go.")
@scenario_options
def run(profile: Profile, sleep: str, out_dir: Path, resources: int, resource_size: int, scanouts: int,
        seed: int) -> None:
    """Run one cell of the matrix, with progress; its timeline picture goes to OUT."""
    cfg = _config(resources, resource_size, scanouts, seed)
    output_dir(out_dir)
    state = SleepState(sleep)
    with out.status(f"{profile.name} through {state.value}..."):
        cell = run_cell(profile, state, cfg, out_dir=out_dir / "images", timeline_dir=out_dir)
    Report(cells=[cell], meta={"source": Source.MODEL.value}).write(out_dir / "report.json")
    out.print(table([cell], title=lit(f"{profile.name} / {state.value}")))
    for m in sorted(profile.mechanisms, key=lambda m: m.value):
        out.print(f"[bold]{m.value}[/]: {lit(DESCRIPTIONS[m])}")
    for v in cell.violations:
        out.print(f"[yellow]violation[/] {lit(v)}")
    for n in cell.notes:
        out.print(shown(f"note: {n}"), markup=False)
    if "timeline" in cell.images:
        out.print(shown(f"timeline {cell.images['timeline']}"), markup=False, highlight=False)

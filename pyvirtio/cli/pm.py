"""``pyvirtio pm``: run the power-management scenario."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from pyvirtio.errors import UserInputError
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.matrix import run_matrix, table
from pyvirtio.pm.profiles import DEFAULT_PROFILES, DESCRIPTIONS, parse_profile
from pyvirtio.pm.scenario import SLEEP_STATES, run_cell

console = Console(width=None if Console().is_terminal else 160)


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(v[-1:], 1)
    num = v[:-1] if v[-1:] in units else v
    try:
        n = int(float(num) * mult)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 256K, 4M, 1G)") from None
    if n <= 0:
        raise click.BadParameter("size must be positive")
    return n


def scenario_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--resources", type=click.IntRange(0, 4096), default=4, show_default=True,
                     help="Extra GPU resources besides framebuffers and cursor.")(f)
    f = click.option("--resource-size", default="256K", show_default=True,
                     help="Bytes per extra resource (K/M/G suffixes).")(f)
    f = click.option("--scanouts", type=click.IntRange(1, 15), default=2, show_default=True)(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    return f


def _config(resources: int, resource_size: str, scanouts: int, seed: int) -> ScenarioConfig:
    cfg = ScenarioConfig(scanouts=scanouts, resources=resources, resource_size=_size(resource_size), seed=seed)
    try:
        cfg.validate()
    except UserInputError as e:
        raise click.UsageError(str(e)) from None
    return cfg


@click.group()
def pm() -> None:
    """Suspend-to-RAM, s2idle and hibernation across the six mechanisms."""


@pm.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pm-matrix"),
              show_default=True, help="Where report.json and the before/after PNGs go.")
@click.option("--profile", "profiles", multiple=True, help="Profiles to run (default: the standard rows).")
@scenario_options
def matrix(out: Path, profiles: tuple[str, ...], resources: int, resource_size: str, scanouts: int,
           seed: int) -> None:
    """Every profile through S3, s2idle and S4: table, pictures and a JSON report."""
    cfg = _config(resources, resource_size, scanouts, seed)
    names = profiles or DEFAULT_PROFILES
    try:
        for n in names:
            parse_profile(n)
    except UserInputError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("cells", total=len(names) * len(SLEEP_STATES))

        def step(label: str) -> None:
            bar.update(task, advance=1 if bar.tasks[task].description != "cells" else 0, description=label)

        report = run_matrix(names, SLEEP_STATES, cfg, out, progress=step)
    console.print(table(report.cells))
    console.print(f"{len(report.cells)} cells in {time.perf_counter() - t0:.1f} s; report {out / 'report.json'}, "
                  f"pictures in {out / 'images'}")


@pm.command()
@click.option("--profile", required=True, help="e.g. baseline, suspend-bit, no-soft-reset+s4-replay")
@click.option("--sleep", type=click.Choice(SLEEP_STATES), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/pm-run"),
              show_default=True)
@scenario_options
def run(profile: str, sleep: str, out: Path, resources: int, resource_size: str, scanouts: int, seed: int) -> None:
    """Run one cell of the matrix, with progress."""
    cfg = _config(resources, resource_size, scanouts, seed)
    try:
        prof = parse_profile(profile)
    except UserInputError as e:
        raise click.BadParameter(str(e), param_hint="--profile") from None
    with console.status(f"{prof.name} through {sleep}..."):
        cell = run_cell(prof, sleep, cfg, out_dir=out / "images")
    from pyvirtio.report import Report

    Report(cells=[cell], meta={"source": "model"}).write(out / "report.json")
    console.print(table([cell], title=f"{prof.name} / {sleep}"))
    for m in sorted(prof.mechanisms, key=lambda m: m.value):
        console.print(f"[bold]{m.value}[/]: {DESCRIPTIONS[m]}")
    for v in cell.violations:
        console.print(f"[yellow]violation[/] {v}")
    for n in cell.notes:
        console.print(f"note: {n}")

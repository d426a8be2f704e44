"""``pyvirtio vm``: provision the real VM, run a sleep cell or the whole matrix, print and write the report.

Progress goes to stderr, results to stdout. Errors follow the CLI's policy (one line, exit status 2); ``vm
matrix`` exits with status 1 when a cell could not be run (the report still holds every cell).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from pyvirtio.cli.common import (
    EXIT_RESULT,
    MACHINE_CHOICE,
    SLEEP_CHOICE,
    Group,
    err,
    lit,
    millis,
    out,
    output_dir,
    shown,
    yes_no,
)
from pyvirtio.cli.compare import compare_cmd
from pyvirtio.report import CellResult, Outcome, Report, Source
from pyvirtio.vm.provisioning import GuestAssets, default_cache_dir, provision
from pyvirtio.vm.scenario import run_cell, run_matrix
from pyvirtio.vm.statustrace import format_sequence


def _progress() -> Callable[[str], None]:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        err.print(f"[dim]{time.monotonic() - t0:6.1f} s[/dim] {lit(msg)}", highlight=False)

    return say


def _provision_log(msg: str) -> None:
    err.print(f"[dim]provision:[/dim] {lit(msg)}", highlight=False)


def cell_table(cell: CellResult) -> Table:
    """A rich table of one cell: summary line in the title, one row per device."""
    title = (f"{cell.sleep.value} on {lit(cell.machine_type)} ({cell.source.value}, {lit(cell.profile)}): outcome "
             f"{cell.outcome.value}; display restored {yes_no(cell.display_restored)}; new frame after resume "
             f"{yes_no(cell.new_frame_after_resume)}; resources {cell.resources.value if cell.resources else '-'}; "
             f"suspend {millis(cell.suspend_ms)} ms, resume {millis(cell.resume_ms)} ms")
    t = Table(title=title, title_justify="left")
    t.add_column("device")
    t.add_column("status sequence")
    t.add_column("queues alive")
    t.add_column("works after")
    for d in cell.devices.values():
        t.add_row(lit(d.name), format_sequence(d.status_sequence), yes_no(d.queues_alive), yes_no(d.functional_after))
    return t


def _print_cell(cell: CellResult) -> None:
    out.print(cell_table(cell))
    for key, path in cell.images.items():
        out.print(shown(f"  {key}: {path}"), markup=False, highlight=False)
    for note in cell.notes:
        out.print(shown(f"  {note}"), markup=False, highlight=False)


def _assets(cache: Path | None) -> GuestAssets:
    if cache is not None:
        output_dir(cache, "--cache")
    return provision(cache, log=_provision_log)


cache_option = click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="Cache directory (default: $PYVIRTIO_VM_CACHE or ~/.cache/pyvirtio/vm).")


@click.group("vm", cls=Group)
def vm() -> None:
    """Real QEMU 7.2 + Debian Linux 6.1 guest under TCG: S3, s2idle and S4 on pc and q35."""


vm.add_command(compare_cmd)


@vm.command("provision")
@cache_option
@click.option("--refresh", is_flag=True, help="Rebuild the guest even if it is up to date.")
def provision_cmd(cache: Path | None, refresh: bool) -> None:
    """Install QEMU (apt, needs root) and build the guest kernel + initramfs in the cache."""
    if cache is not None:
        output_dir(cache, "--cache")
    a = provision(cache, refresh=refresh, log=_provision_log)
    out.print(shown(f"guest: {a.root}"), markup=False, highlight=False)
    for k, v in a.versions().items():
        out.print(shown(f"  {k}: {v}"), markup=False, highlight=False)
    out.print(shown(f"  modules: {' '.join(a.modules)}"), markup=False, highlight=False)
    out.print(shown(f"  cache: {cache or default_cache_dir()}"), markup=False, highlight=False)


@vm.command("run")
@click.option("--sleep", "sleep", type=SLEEP_CHOICE, required=True)
@click.option("--machine", "machine", type=MACHINE_CHOICE, default="q35", show_default=True)
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@cache_option
def run_cmd(sleep: str, machine: str, cycles: int, out_dir: Path, cache: Path | None) -> None:
    """Boot the VM, sleep and wake it, measure every virtio device; write OUT/report.json."""
    output_dir(out_dir)
    assets = _assets(cache)
    cell = run_cell(assets, sleep, machine, cycles=cycles, out_dir=out_dir, progress=_progress())
    report = Report(cells=[cell], meta={"source": Source.REAL_VM.value, **assets.versions(), "cycles": cycles})
    report.write(out_dir / "report.json")
    _print_cell(cell)
    out.print(shown(f"report: {out_dir / 'report.json'}"), markup=False, highlight=False)


@vm.command("matrix")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@cache_option
def matrix_cmd(out_dir: Path, cycles: int, cache: Path | None) -> None:
    """Every sleep state on pc and q35; write OUT/report.json. Exits 1 if a cell could not be run."""
    output_dir(out_dir)
    assets = _assets(cache)
    report = run_matrix(assets, out_dir, cycles=cycles, progress=_progress())
    report.write(out_dir / "report.json")
    for cell in report.cells:
        _print_cell(cell)
    out.print(shown(f"report: {out_dir / 'report.json'}"), markup=False, highlight=False)
    errors = [c for c in report.cells if c.outcome is Outcome.ERROR]
    if errors:
        err.print(f"pyvirtio: {len(errors)} cell(s) could not be run; see the notes above", highlight=False)
        raise click.exceptions.Exit(EXIT_RESULT)

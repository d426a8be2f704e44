"""``pyvirtio vm``: provision the real VM, run a sleep cell or the whole matrix, print and write the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pyvirtio.errors import PyvirtioError
from pyvirtio.report import CellResult, Report
from pyvirtio.vm.machine import MACHINE_TYPES
from pyvirtio.vm.provisioning import GuestAssets, default_cache_dir, provision
from pyvirtio.vm.scenario import SLEEP_STATES, run_cell, run_matrix
from pyvirtio.vm.statustrace import format_sequence

_console = Console(stderr=True)
_out = Console()


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except PyvirtioError as e:
        raise click.ClickException(str(e)) from None


def _progress() -> Callable[[str], None]:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        _console.print(f"[dim]{time.monotonic() - t0:6.1f} s[/dim] {msg}", highlight=False)

    return say


def _yn(v: bool | None) -> str:
    return "-" if v is None else ("[green]yes[/green]" if v else "[red]no[/red]")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def cell_table(cell: CellResult) -> Table:
    """A rich table of one cell: summary line in the title, one row per device."""
    title = (f"{cell.sleep} on {cell.machine_type} ({cell.source}, {cell.profile}): outcome {cell.outcome}; "
             f"display restored {_yn(cell.display_restored)}; new frame after resume "
             f"{_yn(cell.new_frame_after_resume)}; resources {cell.resources or '-'}; "
             f"suspend {_ms(cell.suspend_ms)} ms, resume {_ms(cell.resume_ms)} ms")
    t = Table(title=title, title_justify="left")
    t.add_column("device")
    t.add_column("status sequence")
    t.add_column("queues alive")
    t.add_column("works after")
    for d in cell.devices.values():
        t.add_row(d.name, format_sequence(d.status_sequence), _yn(d.queues_alive), _yn(d.functional_after))
    return t


def _print_cell(cell: CellResult) -> None:
    _out.print(cell_table(cell))
    for key, path in cell.images.items():
        _out.print(f"  {key}: {path}", highlight=False)
    for note in cell.notes:
        if note.startswith(("cycle", "logs", "aborted")) or cell.outcome != "ok":
            _out.print(f"  {note}", highlight=False)


def _assets(cache: Path | None) -> GuestAssets:
    return provision(cache, log=lambda s: _console.print(f"[dim]provision:[/dim] {s}", highlight=False))


cache_option = click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="Cache directory (default: $PYVIRTIO_VM_CACHE or ~/.cache/pyvirtio/vm).")


@click.group("vm")
def vm() -> None:
    """Real QEMU 7.2 + Debian Linux 6.1 guest under TCG: S3, s2idle and S4 on pc and q35."""


@vm.command("provision")
@cache_option
@click.option("--refresh", is_flag=True, help="Rebuild the guest even if it is up to date.")
def provision_cmd(cache: Path | None, refresh: bool) -> None:
    """Install QEMU (apt, needs root) and build the guest kernel + initramfs in the cache."""
    with _one_line_errors():
        a = provision(cache, refresh=refresh,
                      log=lambda s: _console.print(f"[dim]provision:[/dim] {s}", highlight=False))
    _out.print(f"guest: {a.root}", highlight=False)
    for k, v in a.versions().items():
        _out.print(f"  {k}: {v}", highlight=False)
    _out.print(f"  modules: {' '.join(a.modules)}", highlight=False)
    _out.print(f"  cache: {cache or default_cache_dir()}", highlight=False)


@vm.command("run")
@click.option("--sleep", "sleep", type=click.Choice(SLEEP_STATES), required=True)
@click.option("--machine", "machine", type=click.Choice(MACHINE_TYPES), default="q35", show_default=True)
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@cache_option
def run_cmd(sleep: str, machine: str, cycles: int, out: Path, cache: Path | None) -> None:
    """Boot the VM, sleep and wake it, measure every virtio device; write OUT/report.json."""
    with _one_line_errors():
        assets = _assets(cache)
        cell = run_cell(assets, sleep, machine, cycles=cycles, out_dir=out, progress=_progress())
        report = Report(cells=[cell], meta={"source": "real-vm", **assets.versions(), "cycles": cycles})
        report.write(out / "report.json")
    _print_cell(cell)
    _out.print(f"report: {out / 'report.json'}", highlight=False)


@vm.command("matrix")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@cache_option
def matrix_cmd(out: Path, cycles: int, cache: Path | None) -> None:
    """Every sleep state on pc and q35; write OUT/report.json. Exits 1 if a cell could not be run."""
    with _one_line_errors():
        assets = _assets(cache)
        report = run_matrix(assets, out, cycles=cycles, progress=_progress())
        report.write(out / "report.json")
    for cell in report.cells:
        _print_cell(cell)
    _out.print(f"report: {out / 'report.json'}", highlight=False)
    errors = [c for c in report.cells if c.outcome == "error"]
    if errors:
        raise click.ClickException(f"{len(errors)} cell(s) could not be run; see the notes above")

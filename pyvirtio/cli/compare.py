"""``pyvirtio vm compare``: the model beside the real VM, every difference listed, non-zero exit on one."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.errors import PyvirtioError
from pyvirtio.fidelity import compare, differences, model_cell
from pyvirtio.report import CellResult, Report

_out = Console(width=None if Console().is_terminal else 140)

SLEEPS = ("S3", "s2idle", "S4")
MACHINES = ("pc", "q35")


def _real_cells(real: Path | None, sleeps: tuple[str, ...], machines: tuple[str, ...], cache: Path | None,
                out: Path) -> dict[tuple[str, str], CellResult]:
    wanted = [(s, m) for s in sleeps for m in machines]
    if real is not None:
        report = Report.read(real)
        cells = {(c.sleep, c.machine_type): c for c in report.cells if c.source == "real-vm"}
        missing = [f"{s}/{m}" for s, m in wanted if (s, m) not in cells]
        if missing:
            raise click.UsageError(f"{real} has no real-vm cell for {', '.join(missing)}")
        return {k: cells[k] for k in wanted}
    from pyvirtio.vm.provisioning import provision
    from pyvirtio.vm.scenario import run_cell

    assets = provision(cache)
    return {(s, m): run_cell(assets, s, m, out_dir=out / f"real-{s}-{m}") for s, m in wanted}


@click.command("compare")
@click.option("--sleep", "sleeps", multiple=True, type=click.Choice(SLEEPS), help="Default: S3 and S4.")
@click.option("--machine", "machines", multiple=True, type=click.Choice(MACHINES), help="Default: pc and q35.")
@click.option("--real", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Use the real-vm cells of this report.json instead of booting the VM.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/vm-compare"),
              show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Real-VM cache directory (as for `pyvirtio vm run`).")
def compare_cmd(sleeps: tuple[str, ...], machines: tuple[str, ...], real: Path | None, out: Path,
                cache: Path | None) -> None:
    """Run the model configured like the real VM (profile baseline, same machine type) beside the real VM."""
    sleeps = sleeps or ("S3", "S4")
    machines = machines or MACHINES
    try:
        reals = _real_cells(real, sleeps, machines, cache, out)
    except PyvirtioError as e:
        raise click.ClickException(str(e)) from None
    report = Report(meta={"source": "compare"})
    summary: list[dict[str, object]] = []
    ndiff = 0
    for (sleep, machine), rcell in reals.items():
        mcell = model_cell(sleep, machine)
        checks = compare(mcell, rcell)
        report.cells += [mcell, rcell]
        t = Table(title=f"{sleep} on {machine}: model (baseline) vs real VM (QEMU 7.2 + Linux 6.1)",
                  title_justify="left")
        for col in ("check", "model", "real", ""):
            t.add_column(col)
        for c in checks:
            t.add_row(c.what, c.model, c.real, "[green]same[/]" if c.ok else "[red]DIFFERENT[/]")
        _out.print(t)
        diffs = differences(checks)
        ndiff += len(diffs)
        for d in diffs:
            _out.print(f"[red]difference[/] {sleep}/{machine} {d.what}: model {d.model!r}, real {d.real!r}")
        summary.append({"sleep": sleep, "machine": machine,
                        "checks": [{"what": c.what, "model": c.model, "real": c.real, "ok": c.ok} for c in checks]})
    report.write(out / "report.json")
    write_text_atomic(out / "compare.json", json.dumps(summary, indent=2) + "\n")
    if ndiff:
        _out.print(f"{ndiff} difference(s); details in {out / 'compare.json'}")
        raise click.exceptions.Exit(1)
    _out.print(f"model and real VM agree on every check ({len(reals)} cells); details in {out / 'compare.json'}")

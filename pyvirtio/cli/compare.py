"""``pyvirtio vm compare``: the model beside the real VM, every difference listed, non-zero exit on one."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.cli.common import EXIT_RESULT, MACHINE_CHOICE, SLEEP_CHOICE, lit, out, output_dir, shown
from pyvirtio.errors import UserInputError
from pyvirtio.fidelity import compare, differences, model_cell
from pyvirtio.machine import MachineType
from pyvirtio.report import CellResult, Report, SleepState, Source

#: What ``vm compare`` runs when not told: S3 and S4, on every machine type.
DEFAULT_SLEEPS = (SleepState.S3, SleepState.S4)
DEFAULT_MACHINES = tuple(m.value for m in MachineType)


def _real_cells(real: Path | None, sleeps: tuple[SleepState, ...], machines: tuple[str, ...], cache: Path | None,
                out_dir: Path) -> dict[tuple[SleepState, str], CellResult]:
    wanted = [(s, m) for s in sleeps for m in machines]
    if real is not None:
        report = Report.read(real)
        cells = {(c.sleep, c.machine_type): c for c in report.cells if c.source is Source.REAL_VM}
        missing = [f"{s.value}/{m}" for s, m in wanted if (s, m) not in cells]
        if missing:
            raise UserInputError(f"{real} has no real-vm cell for {', '.join(missing)}")
        return {k: cells[k] for k in wanted}
    from pyvirtio.vm.provisioning import provision
    from pyvirtio.vm.scenario import run_cell

    assets = provision(cache)
    return {(s, m): run_cell(assets, s, m, out_dir=out_dir / f"real-{s.value}-{m}") for s, m in wanted}


@click.command("compare")
@click.option("--sleep", "sleeps", multiple=True, type=SLEEP_CHOICE, help="Default: S3 and S4.")
@click.option("--machine", "machines", multiple=True, type=MACHINE_CHOICE, help="Default: pc and q35.")
@click.option("--real", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Use the real-vm cells of this report.json instead of booting the VM.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/vm-compare"),
              show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Real-VM cache directory (as for `pyvirtio vm run`).")
def compare_cmd(sleeps: tuple[str, ...], machines: tuple[str, ...], real: Path | None, out_dir: Path,
                cache: Path | None) -> None:
    """Run the model configured like the real VM (profile baseline, same machine type) beside the real VM.

    Exit status 1 when any check differs (every difference is listed, and written to OUT/compare.json).
    """
    output_dir(out_dir)
    states = tuple(SleepState(s) for s in sleeps) or DEFAULT_SLEEPS
    reals = _real_cells(real, states, machines or DEFAULT_MACHINES, cache, out_dir)
    report = Report(meta={"source": "compare"})
    summary: list[dict[str, object]] = []
    ndiff = 0
    for (sleep, machine), rcell in reals.items():
        mcell = model_cell(sleep, machine)
        checks = compare(mcell, rcell)
        report.cells += [mcell, rcell]
        t = Table(title=f"{sleep.value} on {machine}: model (baseline) vs real VM (QEMU 7.2 + Linux 6.1)",
                  title_justify="left")
        for col in ("check", "model", "real", ""):
            t.add_column(col)
        for c in checks:
            t.add_row(lit(c.what), lit(c.model), lit(c.real), "[green]same[/]" if c.ok else "[red]DIFFERENT[/]")
        out.print(t)
        diffs = differences(checks)
        ndiff += len(diffs)
        for d in diffs:
            line = f"{sleep.value}/{machine} {d.what}: model {d.model!r}, real {d.real!r}"
            out.print(f"[red]difference[/] {lit(line)}")
        summary.append({"sleep": sleep.value, "machine": machine,
                        "checks": [{"what": c.what, "model": c.model, "real": c.real, "ok": c.ok} for c in checks]})
    report.write(out_dir / "report.json")
    write_text_atomic(out_dir / "compare.json", json.dumps(summary, indent=2) + "\n")
    if ndiff:
        out.print(shown(f"{ndiff} difference(s); details in {out_dir / 'compare.json'}"), markup=False)
        raise click.exceptions.Exit(EXIT_RESULT)
    out.print(shown(f"model and real VM agree on every check ({len(reals)} cells); "
                    f"details in {out_dir / 'compare.json'}"), markup=False)

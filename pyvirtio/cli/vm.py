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
from pyvirtio.cli.uml import print_uml_provisioned
from pyvirtio.errors import PyvirtioError
from pyvirtio.report import CellResult, Outcome, Report, Source
from pyvirtio.vm.private_stack import provision_stack as provision
from pyvirtio.vm.provisioning import GuestAssets, default_cache_dir
from pyvirtio.vm.scenario import run_cell, run_matrix
from pyvirtio.vm.stacks import DEFAULT_STACK, PROVISIONABLE_NAMES, STACK_NAMES, STACKS, UML_STACKS
from pyvirtio.vm.statustrace import format_sequence
from pyvirtio.vm.uml_kernel import PROPOSAL_VARIANTS, provision_uml


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


def _assets(cache: Path | None, stack: str = DEFAULT_STACK) -> GuestAssets:
    if cache is not None:
        output_dir(cache, "--cache")
    return provision(cache, log=_provision_log, stack=stack)


cache_option = click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="Cache directory (default: $PYVIRTIO_VM_CACHE or ~/.cache/pyvirtio/vm).")
STACK_CHOICE = click.Choice(STACK_NAMES)
stack_option = click.option("--stack", type=STACK_CHOICE, default=DEFAULT_STACK, show_default=True,
                            help="Which QEMU + Linux stack to run (see: pyvirtio vm provision).")


@click.group("vm", cls=Group)
def vm() -> None:
    """Real QEMU + Linux guests under TCG: S3, s2idle and S4; stacks qemu7.2-linux6.1 (pc, q35) and
    qemu10.0-linux6.12 (q35, gpu behind a pcie-root-port, optionally with No_Soft_Reset)."""


vm.add_command(compare_cmd)


@vm.command("provision")
@cache_option
@click.option("--refresh", is_flag=True, help="Rebuild the guest even if it is up to date.")
@click.option("--stack", "stacks", type=click.Choice(PROVISIONABLE_NAMES), multiple=True,
              help=f"Stack to provision (repeatable; default {DEFAULT_STACK}).")
def provision_cmd(cache: Path | None, refresh: bool, stacks: tuple[str, ...]) -> None:
    """Provision each stack: the system QEMU (apt, needs root) or a private QEMU + kernel unpacked into the
    cache, or the UML kernel built from source with each of our kernel patches; build the guest initramfs; print
    exact versions. A stack that fails does not stop the others."""
    if cache is not None:
        output_dir(cache, "--cache")
    failed: list[str] = []
    for name in stacks or (DEFAULT_STACK,):
        try:
            if name in UML_STACKS:  # User-Mode Linux: a kernel built from source, no QEMU (pyvirtio uml)
                print_uml_provisioned(provision_uml(cache, stack=name, refresh=refresh, log=_provision_log))
                for variant in PROPOSAL_VARIANTS.values():  # our patches (issue 15), each built on the stock tree
                    print_uml_provisioned(provision_uml(cache, stack=name, refresh=refresh, variant=variant,
                                                        log=_provision_log))
                continue
            a = provision(cache, refresh=refresh, log=_provision_log, stack=name)
        except PyvirtioError as e:
            if len(stacks) <= 1:
                raise
            err.print(f"pyvirtio: error: {lit(str(e))}", highlight=False)
            failed.append(name)
            continue
        out.print(shown(f"stack {name} ({STACKS[name].description}): {a.root}"), markup=False, highlight=False)
        for k, v in a.versions().items():
            out.print(shown(f"  {k}: {v}"), markup=False, highlight=False)
        out.print(shown(f"  modules: {' '.join(a.modules)}"), markup=False, highlight=False)
        for name, initrd in a.gpu_modules:
            out.print(shown(f"  our virtio-gpu module {name}: {initrd}"), markup=False, highlight=False)
        out.print(shown(f"  cache: {cache or default_cache_dir()}"), markup=False, highlight=False)
    if failed:
        raise click.exceptions.Exit(2)


@vm.command("run")
@click.option("--sleep", "sleep", type=SLEEP_CHOICE, required=True)
@click.option("--machine", "machine", type=MACHINE_CHOICE, default="q35", show_default=True)
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@cache_option
@stack_option
@click.option("--no-soft-reset", "nsr", is_flag=True,
              help="Give the gpu x-pcie-pm-no-soft-reset=true (stacks with pcie-root-ports, q35 only).")
@click.option("--rng-behind-port", "rng_port", is_flag=True,
              help="Put virtio-rng behind its own pcie-root-port too (with No_Soft_Reset when --no-soft-reset).")
@click.option("--restore-lpc", is_flag=True,
              help="q35, S3: after each wake write back ICH9 LPC PMBASE/ACPI_CNTL as read at boot, so that every "
                   "cycle reaches QEMU (the wake-up reset clears them; without this the 2nd S3 is 'aborted').")
@click.option("--s4-replay", "s4_replay", is_flag=True,
              help="Boot our virtio-gpu module (guest/linux: freeze/restore, objects re-created after hibernation) "
                   "instead of the stock one: profile s4-replay, or no-soft-reset+s4-replay with --no-soft-reset "
                   "(private stacks; built by `pyvirtio vm provision`).")
def run_cmd(sleep: str, machine: str, cycles: int, out_dir: Path, cache: Path | None, stack: str,
            nsr: bool, rng_port: bool, restore_lpc: bool, s4_replay: bool) -> None:
    """Boot the VM, sleep and wake it, measure every virtio device; write OUT/report.json."""
    output_dir(out_dir)
    if STACKS[stack].pcie_ports and machine != "q35":
        raise click.UsageError(f"stack {stack} runs q35 only (No_Soft_Reset needs a PCIe root port)")
    if nsr and not STACKS[stack].pcie_ports:
        raise click.UsageError(f"--no-soft-reset needs a stack with QEMU >= 9.1, not {stack}")
    if rng_port and not STACKS[stack].pcie_ports:
        raise click.UsageError(f"--rng-behind-port needs a stack with pcie-root-ports, not {stack}")
    if restore_lpc and machine != "q35":
        raise click.UsageError("--restore-lpc is for q35 (ICH9 LPC); pc's PIIX4 keeps its PM base across S3")
    if s4_replay and not STACKS[stack].private:
        raise click.UsageError(f"--s4-replay needs a private stack (our module is built for its kernel), not {stack}")
    assets = _assets(cache, stack)
    cell = run_cell(assets, sleep, machine, cycles=cycles, out_dir=out_dir, progress=_progress(), nsr=nsr,
                    rng_port=rng_port, restore_lpc=restore_lpc, gpu_module="s4-replay" if s4_replay else None)
    report = Report(cells=[cell], meta={"source": Source.REAL_VM.value, **assets.versions(), "cycles": cycles,
                                        "no_soft_reset": nsr, "rng_behind_port": rng_port,
                                        "lpc_workaround": restore_lpc,
                                        "gpu_module": "s4-replay" if s4_replay else "stock"})
    report.write(out_dir / "report.json")
    _print_cell(cell)
    out.print(shown(f"report: {out_dir / 'report.json'}"), markup=False, highlight=False)


@vm.command("matrix")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, PNGs and logs.")
@click.option("--cycles", type=click.IntRange(1, 20), default=1, show_default=True)
@cache_option
@stack_option
def matrix_cmd(out_dir: Path, cycles: int, cache: Path | None, stack: str) -> None:
    """Every sleep state on pc and q35 (a stack with pcie-root-ports: q35, with and without No_Soft_Reset);
    write OUT/report.json. Exits 1 if a cell could not be run."""
    output_dir(out_dir)
    assets = _assets(cache, stack)
    variants = (False, True) if STACKS[stack].pcie_ports else (False,)
    report = run_matrix(assets, out_dir, cycles=cycles, progress=_progress(), nsr_variants=variants)
    report.write(out_dir / "report.json")
    for cell in report.cells:
        _print_cell(cell)
    out.print(shown(f"report: {out_dir / 'report.json'}"), markup=False, highlight=False)
    errors = [c for c in report.cells if c.outcome is Outcome.ERROR]
    if errors:
        err.print(f"pyvirtio: {len(errors)} cell(s) could not be run; see the notes above", highlight=False)
        raise click.exceptions.Exit(EXIT_RESULT)

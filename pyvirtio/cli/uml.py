"""``pyvirtio uml``: a real User-Mode Linux kernel drives pyvirtio's PCI functions (PCI over virtio).

``uml scenarios`` lists the scenarios (stock and proposal, :data:`~pyvirtio.uml.catalog.CATALOG`, with the kernel
build each runs); ``uml run`` runs one (``--mode time-travel``, the default, is
deterministic; ``real-time`` lets the kernel run freely), prints its checks, a sample of the register-level trace
and, with ``--compare``, the real driver's register-level sequence beside pyvirtio's model driver's, and writes
``OUT/report.json`` and ``OUT/trace.txt`` (a proposal scenario that checks a PM-matrix cell, compared, is
recorded in the ledger of real runs for ``pm matrix --real``); ``uml determinism`` runs a scenario twice with the
same seed and says whether the two register-level traces are the same. The kernel comes from ``pyvirtio vm
provision --stack uml-linux6.12`` (provisioned here if missing; a proposal's scenario runs our patched build of
it, built here incrementally if missing). Exit status 1: a check failed (or the traces differ); 2: bad input.
"""

from __future__ import annotations

from pathlib import Path

import click

from pyvirtio.cli.common import EXIT_RESULT, Group, err, lit, out, output_dir, shown
from pyvirtio.pm.config import SEED_MAX
from pyvirtio.provenance import record, utc_now
from pyvirtio.uml.bridge import Mode
from pyvirtio.uml.catalog import CATALOG, kernel_variant
from pyvirtio.uml.model import cell_evidence, compare_run
from pyvirtio.uml.report import first_difference, run_report, trace_lines, write_report
from pyvirtio.uml.scenarios import run_scenario
from pyvirtio.vm.stacks import UML_LINUX612
from pyvirtio.vm.uml_kernel import STOCK, KernelVariant, UmlAssets, provision_uml

MODE_CHOICE = click.Choice([m.value for m in Mode])


def _log(msg: str) -> None:
    err.print(f"[dim]uml:[/dim] {lit(msg)}", highlight=False)


def _say(line: str) -> None:
    out.print(shown(line), markup=False, highlight=False)


def assets_for(cache: Path | None, variant: KernelVariant = STOCK) -> UmlAssets:
    """The provisioned UML stack, ``variant``'s kernel build (built now if missing)."""
    if cache is not None:
        output_dir(cache, "--cache")
    return provision_uml(cache, stack=UML_LINUX612, variant=variant, log=_log)


def print_uml_provisioned(a: UmlAssets) -> None:
    """What ``vm provision --stack uml-linux6.12`` prints."""
    variant = "" if a.variant == "stock" else f", kernel variant {a.variant}"
    _say(f"stack {a.stack} ({UML_LINUX612.description}{variant}): {a.kernel_dir}")
    for k, v in a.versions().items():
        _say(f"  {k}: {v}")
    _say(f"  binary: {a.kernel}")
    _say(f"  initrd: {a.initrd}")
    _say(f"  built in: {a.build_seconds:.0f} s")


@click.group("uml", cls=Group)
def uml() -> None:
    """User-Mode Linux over PCI-over-virtio: the real PCI core and virtio drivers against pyvirtio's functions."""


@uml.command("scenarios")
def scenarios_cmd() -> None:
    """List the scenarios."""
    for s in CATALOG.values():
        kernel = "" if s.profile is None else f"[{s.variant} kernel] "
        _say(f"{s.name:<18} {kernel}{s.about}")


cache_option = click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="Cache directory (default: $PYVIRTIO_VM_CACHE or ~/.cache/pyvirtio/vm).")
scenario_option = click.option("--scenario", type=click.Choice(list(CATALOG)), required=True)
mode_option = click.option("--mode", type=MODE_CHOICE, default=Mode.TIME_TRAVEL.value, show_default=True,
                           help="time-travel: the kernel's clock is pyvirtio's scheduler (deterministic); "
                                "real-time: it runs freely")
seed_option = click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True)


@uml.command("run")
@scenario_option
@mode_option
@seed_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, trace.txt, the console log and the guest's files.")
@click.option("--compare", is_flag=True, help="Compare the register-level sequence with pyvirtio's model driver.")
@click.option("--trace-lines", "n_lines", type=click.IntRange(0, 100000), default=40, show_default=True,
              help="How many register-trace lines to print.")
@cache_option
def run_cmd(scenario: str, mode: str, seed: int, out_dir: Path, compare: bool, n_lines: int,
            cache: Path | None) -> None:
    """Run one scenario; print its checks and a sample of the register-level trace."""
    output_dir(out_dir)
    sc = CATALOG[scenario]
    assets = assets_for(cache, kernel_variant(sc))
    res = run_scenario(assets, sc, out_dir, mode=Mode(mode), seed=seed, log=_log)
    r = res.run
    comparison = compare_run(r, res.scenario) if compare else []
    write_report(out_dir / "report.json", run_report(res, assets, comparison))
    ev = cell_evidence(res, comparison, assets.stack, when=utc_now(), report=str((out_dir / "report.json").resolve())) \
        if compare else None
    if ev is not None:  # a proposal's matrix cell, checked on a real kernel: the ledger of real runs
        record(ev)
    (out_dir / "trace.txt").write_text("\n".join(trace_lines(r)) + "\n")
    _say(f"{scenario} ({r.mode.value}, seed {seed}): ended {r.ended}, {len(r.wire)} register-trace entries, "
         f"{r.wall_seconds:.1f} s wall, {r.virtual_ns / 1e9:.3f} s virtual")
    for line in trace_lines(r, n_lines):
        _say(line)
    if len(r.wire) > n_lines:
        _say(f"... ({len(r.wire) - n_lines} more in {out_dir / 'trace.txt'})")
    for c in res.checks:
        _say(c.line())
    for pc in comparison:
        for line in pc.lines(full=True):
            _say(line)
    _say(f"report: {out_dir / 'report.json'}")
    if not res.ok:
        raise click.exceptions.Exit(EXIT_RESULT)


@uml.command("determinism")
@scenario_option
@seed_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@cache_option
def determinism_cmd(scenario: str, seed: int, out_dir: Path, cache: Path | None) -> None:
    """Run a scenario twice under time travel with the same seed; exit 1 if the register-level traces differ."""
    output_dir(out_dir)
    sc = CATALOG[scenario]
    assets = assets_for(cache, kernel_variant(sc))
    runs = [run_scenario(assets, sc, out_dir / f"run{i}", mode=Mode.TIME_TRAVEL, seed=seed, log=_log).run
            for i in (1, 2)]
    diff = first_difference(runs[0], runs[1])
    for i, r in enumerate(runs, 1):
        _say(f"run {i}: {len(r.wire)} register-trace entries, {len(r.trace)} machine-trace events, "
             f"{r.virtual_ns / 1e9:.6f} s virtual, {r.wall_seconds:.1f} s wall")
    if diff is None:
        _say("the two runs gave the same register-level trace (every access, value and virtual time)")
        return
    _say(f"the runs differ: {diff}")
    raise click.exceptions.Exit(EXIT_RESULT)


__all__ = ["assets_for", "print_uml_provisioned", "uml"]

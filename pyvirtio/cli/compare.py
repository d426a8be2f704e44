"""``pyvirtio vm compare``: the model beside the real VM, every difference listed, non-zero exit on one."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.cli.common import EXIT_RESULT, MACHINE_CHOICE, SLEEP_CHOICE, err, lit, out, output_dir, shown
from pyvirtio.errors import UserInputError
from pyvirtio.fidelity import compare, differences, model_cell
from pyvirtio.machine import MachineType
from pyvirtio.provenance import Evidence, Kind, record, utc_now
from pyvirtio.report import REAL_VM_PROFILE, ROOT_BUS, CellResult, Outcome, Report, SleepState, Source
from pyvirtio.timeline import side_by_side
from pyvirtio.vm.stacks import DEFAULT_STACK, NSR_PROFILE, STACK_NAMES, STACKS

#: What ``vm compare`` runs when not told: S3 and S4, on every machine type.
DEFAULT_SLEEPS = (SleepState.S3, SleepState.S4)
DEFAULT_MACHINES = tuple(m.value for m in MachineType)

#: One compared cell: (stack, profile, sleep, machine, rng behind its own port); the profile says whether the
#: real gpu (and the rng, when it sits behind a port) had NSR, and whether the guest ran our virtio-gpu module.
Key = tuple[str, str, SleepState, str, bool]
#: Our virtio-gpu module (guest/linux, :mod:`pyvirtio.vm.kmod`): the mechanism it implements, and the profiles
#: of the real cells that run it (without and with the gpu's No_Soft_Reset).
GPU_MODULE = "s4-replay"
S4_REPLAY_PROFILES = (GPU_MODULE, f"{NSR_PROFILE}+{GPU_MODULE}")


def profile_parts(profile: str) -> tuple[bool, str | None]:
    """(No_Soft_Reset on the gpu, our virtio-gpu module or None) of a real cell's profile."""
    parts = profile.split("+")
    return NSR_PROFILE in parts, (GPU_MODULE if GPU_MODULE in parts else None)


def wanted_cells(stacks: tuple[str, ...], sleeps: tuple[SleepState, ...], machines: tuple[str, ...], *,
                 rng_port: bool = False, s4_replay: bool = False) -> list[Key]:
    """Every (stack, profile, sleep, machine, rng placement) with a real counterpart: ``baseline`` on every stack
    (a stack with pcie-root-ports: q35 only), and ``no-soft-reset`` on a stack that has the property; with
    ``rng_port`` only the ``no-soft-reset`` cells with virtio-rng behind its own port (and NSR) on such stacks;
    with ``s4_replay`` only the ``s4-replay`` and ``no-soft-reset+s4-replay`` cells (our virtio-gpu module) on
    the private stacks (where it is built)."""
    out: list[Key] = []
    for st in stacks:
        stack = STACKS[st]
        ms = tuple(m for m in machines if m == MachineType.Q35.value) if stack.pcie_ports else machines
        if s4_replay:
            if stack.private and stack.pcie_ports:
                out += [(st, p, s, m, False) for p in S4_REPLAY_PROFILES for s in sleeps for m in ms]
            continue
        if rng_port:
            if stack.pcie_ports:
                out += [(st, NSR_PROFILE, s, m, True) for s in sleeps for m in ms]
            continue
        profiles = (REAL_VM_PROFILE, NSR_PROFILE) if stack.pcie_ports else (REAL_VM_PROFILE,)
        out += [(st, p, s, m, False) for p in profiles for s in sleeps for m in ms]
    return out


def label(key: Key) -> str:
    """``S3/pc`` for the default stack's baseline (as before stacks existed), else ``stack/profile/S3/q35``
    (``+rng-port`` when virtio-rng sat behind its own port)."""
    st, p, s, m, rp = key
    if (st, p, rp) == (DEFAULT_STACK, REAL_VM_PROFILE, False):
        return f"{s.value}/{m}"
    return f"{st}/{p}{'+rng-port' if rp else ''}/{s.value}/{m}"


def model_for(key: Key, timeline_dir: Path | None = None) -> CellResult:
    """The model configured like the real VM of ``key``: on a stack with pcie-root-ports the gpu sits behind
    one whatever the profile, and virtio-rng on the root bus unless the cell put it behind its own port."""
    st, profile, sleep, machine, rng_port = key
    ports = STACKS[st].pcie_ports
    return model_cell(sleep, machine, profile, rng_behind_port=rng_port or not ports, gpu_behind_port=ports,
                      timeline_dir=timeline_dir)


def _real_cells(real: Path | None, wanted: list[Key], cache: Path | None,
                out_dir: Path) -> dict[Key, CellResult]:
    if real is not None:
        report = Report.read(real)
        stack = str(report.meta.get("stack", DEFAULT_STACK))
        ports = stack in STACKS and STACKS[stack].pcie_ports  # only there does a real cell's profile say NSR
        cells = {(stack, c.profile if ports else REAL_VM_PROFILE, c.sleep, c.machine_type,
                  c.placement.get("rng", ROOT_BUS) != ROOT_BUS): c
                 for c in report.cells if c.source is Source.REAL_VM}
        missing = [label(k) for k in wanted if k not in cells]
        if missing:
            raise UserInputError(f"{real} has no real-vm cell for {', '.join(missing)}")
        return {k: cells[k] for k in wanted}
    from pyvirtio.vm.errors import VmError
    from pyvirtio.vm.private_stack import provision_stack
    from pyvirtio.vm.scenario import cell_name, run_cell

    out: dict[Key, CellResult] = {}
    for st in dict.fromkeys(k[0] for k in wanted):
        assets = provision_stack(cache, stack=st)
        for k in (k for k in wanted if k[0] == st):
            _, p, s, m, rp = k
            nsr, module = profile_parts(p)
            try:
                out[k] = run_cell(assets, s, m, out_dir=out_dir / f"real-{cell_name(s, m, st, nsr, rp, module)}",
                                  nsr=nsr, rng_port=rp, gpu_module=module)
            except VmError as e:  # a guest that never wakes, a QEMU that crashed: the cell says so, the run goes on
                err.print(shown(f"pyvirtio: {label(k)}: {e}"), markup=False, highlight=False)
                out[k] = CellResult(source=Source.REAL_VM, profile=p, sleep=s, machine_type=m,
                                    outcome=Outcome.ERROR, notes=[str(e)])
    return out


def _side_by_side(model: CellResult, real: CellResult, path: Path) -> str | None:
    """The model's and the real VM's timelines in one picture, when both cells have one."""
    left, right = model.images.get("timeline"), real.images.get("timeline")
    if not (left and right and Path(left).is_file() and Path(right).is_file()):
        return None
    return side_by_side(Path(left), Path(right), path)


@click.command("compare")
@click.option("--sleep", "sleeps", multiple=True, type=SLEEP_CHOICE, help="Default: S3 and S4.")
@click.option("--machine", "machines", multiple=True, type=MACHINE_CHOICE, help="Default: pc and q35.")
@click.option("--real", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Use the real-vm cells of this report.json instead of booting the VM.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/vm-compare"),
              show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Real-VM cache directory (as for `pyvirtio vm run`).")
@click.option("--stack", "stacks", multiple=True, type=click.Choice(STACK_NAMES),
              help=f"Real stack(s) to compare against (repeatable; default {DEFAULT_STACK}).")
@click.option("--rng-behind-port", "rng_port", is_flag=True,
              help="Compare the no-soft-reset cells with virtio-rng behind its own root port too (NSR on both; "
                   "stacks with pcie-root-ports).")
@click.option("--s4-replay", "s4_replay", is_flag=True,
              help="Compare the s4-replay and no-soft-reset+s4-replay cells: the guest runs our virtio-gpu module "
                   "(guest/linux; private stacks, built by `pyvirtio vm provision`).")
def compare_cmd(sleeps: tuple[str, ...], machines: tuple[str, ...], real: Path | None, out_dir: Path,
                cache: Path | None, stacks: tuple[str, ...], rng_port: bool, s4_replay: bool) -> None:
    """Run the model configured like the real VM (same machine type and device placement; profile baseline, and
    no-soft-reset beside a stack whose gpu can have No_Soft_Reset; with --s4-replay the s4-replay profiles beside
    the guest running our virtio-gpu module) beside the real VM.

    Exit status 1 when any check differs (every difference is listed, and written to OUT/compare.json). Each
    cell's model and real timelines go side by side into OUT/timelines/.
    """
    output_dir(out_dir)
    states = tuple(SleepState(s) for s in sleeps) or DEFAULT_SLEEPS
    if rng_port and s4_replay:
        raise UserInputError("--rng-behind-port and --s4-replay compare different cells; give one of them")
    wanted = wanted_cells(stacks or (DEFAULT_STACK,), states, machines or DEFAULT_MACHINES, rng_port=rng_port,
                          s4_replay=s4_replay)
    if not wanted:
        private = ", ".join(n for n, x in STACKS.items() if x.private)
        if s4_replay and not any(STACKS[st].private for st in stacks):
            raise UserInputError(f"--s4-replay needs a private stack, where our module is built (--stack {private})")
        raise UserInputError("nothing to compare: a stack with pcie-root-ports runs q35 only (add --machine q35)"
                             + ("; --rng-behind-port needs such a stack" if rng_port else ""))
    reals = _real_cells(real, wanted, cache, out_dir)
    report = Report(meta={"source": "compare", "stacks": list(dict.fromkeys(k[0] for k in wanted))})
    summary: list[dict[str, object]] = []
    ndiff = 0
    for key, rcell in reals.items():
        stack, profile, sleep, machine, rp = key
        name = label(key).replace("/", "-")
        mcell = model_for(key, timeline_dir=out_dir / "timelines" / f"model-{name}")
        checks = compare(mcell, rcell)
        report.cells += [mcell, rcell]
        pair = _side_by_side(mcell, rcell, out_dir / "timelines" / f"{name}.png")
        has_nsr, module = profile_parts(profile)
        nsr = ", gpu No_Soft_Reset" + (" and rng behind its port with it" if rp else "")
        mod = f", our {module} virtio-gpu module" if module else ""
        t = Table(title=f"{sleep.value} on {machine}: model ({profile}) vs real VM ({stack}"
                        f"{nsr if has_nsr else ''}{mod})", title_justify="left")
        for col in ("check", "model", "real", ""):
            t.add_column(col)
        for c in checks:
            t.add_row(lit(c.what), lit(c.model), lit(c.real), "[green]same[/]" if c.ok else "[red]DIFFERENT[/]")
        out.print(t)
        diffs = differences(checks)
        ndiff += len(diffs)
        for d in diffs:
            line = f"{label(key)} {d.what}: model {d.model!r}, real {d.real!r}"
            out.print(f"[red]difference[/] {lit(line)}")
        if pair:
            out.print(shown(f"timelines, model | real: {pair}"), markup=False, highlight=False)
        if rcell.outcome is not Outcome.ERROR:  # a VM that crashed or never woke checked nothing
            record(Evidence(Kind.QEMU, stack, profile, sleep.value, machine + ("+rng-port" if rp else ""),
                            agrees=not diffs, detail=f"{len(checks)} checks, {len(diffs)} different",
                            when=utc_now(), report=str((out_dir / "compare.json").resolve())))
        summary.append({"stack": stack, "profile": profile, "sleep": sleep.value, "machine": machine,
                        "rng_behind_port": rp, "timelines": pair,
                        "checks": [{"what": c.what, "model": c.model, "real": c.real, "ok": c.ok} for c in checks]})
    report.write(out_dir / "report.json")
    write_text_atomic(out_dir / "compare.json", json.dumps(summary, indent=2) + "\n")
    if ndiff:
        out.print(shown(f"{ndiff} difference(s); details in {out_dir / 'compare.json'}"), markup=False)
        raise click.exceptions.Exit(EXIT_RESULT)
    out.print(shown(f"model and real VM agree on every check ({len(reals)} cells); "
                    f"details in {out_dir / 'compare.json'}"), markup=False)

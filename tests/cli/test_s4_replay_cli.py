"""``vm run --s4-replay`` and ``vm compare --s4-replay`` without a VM: which cells, which model, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.cli.compare import label, model_for, profile_parts, wanted_cells
from pyvirtio.report import SleepState
from pyvirtio.vm.scenario import cell_name, real_profile
from pyvirtio.vm.stacks import QEMU10_LINUX612, SYSTEM

ALL = tuple(SleepState)


def test_s4_replay_cells_are_the_private_stacks_q35_only() -> None:
    cells = wanted_cells((SYSTEM.name, QEMU10_LINUX612.name), ALL, ("pc", "q35"), s4_replay=True)
    assert cells == [(QEMU10_LINUX612.name, p, s, "q35", False)
                     for p in ("s4-replay", "no-soft-reset+s4-replay") for s in ALL]
    assert label(cells[3]) == "qemu10.0-linux6.12/no-soft-reset+s4-replay/S3/q35"
    # without the flag nothing changes
    assert {k[1] for k in wanted_cells((QEMU10_LINUX612.name,), ALL, ("q35",))} == {"baseline", "no-soft-reset"}


def test_profiles_name_what_the_real_vm_ran() -> None:
    assert profile_parts("s4-replay") == (False, "s4-replay")
    assert profile_parts("no-soft-reset+s4-replay") == (True, "s4-replay")
    assert profile_parts("no-soft-reset") == (True, None) and profile_parts("baseline") == (False, None)
    assert real_profile(False) == "baseline" and real_profile(True) == "no-soft-reset"
    assert real_profile(False, "s4-replay") == "s4-replay"
    assert real_profile(True, "s4-replay") == "no-soft-reset+s4-replay"
    assert cell_name("S4", "q35", QEMU10_LINUX612.name, True, False, "s4-replay") == (
        "S4-q35-qemu10.0-linux6.12-nsr-s4-replay")


@pytest.mark.parametrize(("profile", "where"), [("s4-replay", "root-port"),
                                                ("no-soft-reset+s4-replay", "root-port, No_Soft_Reset")])
def test_the_model_sits_where_the_real_gpu_does(profile: str, where: str) -> None:
    cell = model_for((QEMU10_LINUX612.name, profile, SleepState.S3, "q35", False))
    assert cell.profile == profile and cell.placement == {"gpu": where, "rng": "pcie.0"}


@pytest.mark.parametrize(("args", "says"), [
    (["vm", "run", "--s4-replay", "--sleep", "S3", "--machine", "q35"], "--s4-replay needs a private stack"),
    (["vm", "compare", "--s4-replay"], "--s4-replay needs a private stack, where our module is built"),
    (["vm", "compare", "--s4-replay", "--rng-behind-port", "--stack", QEMU10_LINUX612.name, "--machine", "q35"],
     "compare different cells"),
])
def test_bad_combinations_are_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and says in r.output and r.output.count("\n") == 1, r.output

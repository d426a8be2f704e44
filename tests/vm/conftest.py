"""Real-VM fixtures: each stack provisioned once per session (the first, QEMU 7.2 + Linux 6.1, as ``assets``; the
second, QEMU 10.0 + Linux 6.12, as ``stack2_assets``), and the first stack's baseline cells every module looks at,
run once per session (two at a time: one TCG QEMU per core) and written to one report for ``vm compare --real``.
Never skipped: a provisioning failure fails the tests that need it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtio.errors import PyvirtioError
from pyvirtio.vm.private_stack import provision_stack
from pyvirtio.vm.provisioning import GuestAssets, provision
from pyvirtio.vm.scenario import CellRun
from pyvirtio.vm.stacks import QEMU10_LINUX612
from vm.realcells import run_two_at_a_time, write_report

#: (sleep, machine) of the shared baseline cells: what ``vm compare`` checks on this stack.
BASELINE_CELLS = (("S3", "pc"), ("S3", "q35"), ("s2idle", "q35"), ("S4", "pc"), ("S4", "q35"))


@pytest.fixture(scope="session")
def assets() -> GuestAssets:
    try:
        return provision()
    except PyvirtioError as e:  # fail, never skip
        pytest.fail(f"real-VM provisioning failed: {e}", pytrace=False)


@pytest.fixture(scope="session")
def stack2_assets() -> GuestAssets:
    """The second stack (QEMU 10.0 + Linux 6.12, with our virtio-gpu module), provisioned once per session."""
    try:
        return provision_stack(stack=QEMU10_LINUX612.name)
    except PyvirtioError as e:  # fail, never skip
        pytest.fail(f"provisioning {QEMU10_LINUX612.name} failed: {e}", pytrace=False)


@pytest.fixture(scope="session")
def baseline_runs(assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], CellRun]:
    out = tmp_path_factory.mktemp("stack1")
    runs = {key: CellRun(assets, key[0], key[1], out_dir=out) for key in BASELINE_CELLS}
    run_two_at_a_time(runs.values())
    return runs


@pytest.fixture(scope="session")
def baseline_report(baseline_runs: dict[tuple[str, str], CellRun], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(baseline_runs.values(), tmp_path_factory.mktemp("stack1-report") / "report.json")

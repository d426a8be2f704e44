"""Real-VM fixtures of the first stack (QEMU 7.2 + Linux 6.1): provisioning, and the baseline cells every module
looks at, each run once per session (two at a time: one TCG QEMU per core) and written to one report for
``vm compare --real``. Never skipped: a provisioning failure fails the tests that need it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyvirtio.errors import PyvirtioError
from pyvirtio.report import Report, Source
from pyvirtio.vm.provisioning import GuestAssets, provision
from pyvirtio.vm.scenario import CellRun

#: (sleep, machine) of the shared baseline cells: what ``vm compare`` checks on this stack.
BASELINE_CELLS = (("S3", "pc"), ("S3", "q35"), ("s2idle", "q35"), ("S4", "pc"), ("S4", "q35"))


@pytest.fixture(scope="session")
def assets() -> GuestAssets:
    try:
        return provision()
    except PyvirtioError as e:  # fail, never skip
        pytest.fail(f"real-VM provisioning failed: {e}", pytrace=False)


@pytest.fixture(scope="session")
def baseline_runs(assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], CellRun]:
    out = tmp_path_factory.mktemp("stack1")
    runs = {key: CellRun(assets, key[0], key[1], out_dir=out) for key in BASELINE_CELLS}
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: r.run(), runs.values()))
    return runs


@pytest.fixture(scope="session")
def baseline_report(baseline_runs: dict[tuple[str, str], CellRun], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stack1-report") / "report.json"
    Report(cells=[r.result for r in baseline_runs.values()], meta={"source": Source.REAL_VM.value}).write(path)
    return path

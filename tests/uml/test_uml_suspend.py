"""The virtio 1.4 SUSPEND bit on a real kernel: our Linux 6.12 patch (the ``suspend`` UML kernel build, built
incrementally from the kept tree, never skipped) against pyvirtio's rng and gpu through S3 (realvm).

Each scenario of :data:`pyvirtio.uml.suspend.SCENARIOS` runs once per session under time travel with the kernel
build its profile names; every check it makes must hold.
"""

from __future__ import annotations

import pytest

from pyvirtio.uml.bridge import Mode
from pyvirtio.uml.catalog import kernel_variant
from pyvirtio.uml.scenarios import ScenarioResult, run_scenario
from pyvirtio.uml.suspend import SCENARIOS

from .conftest import UmlKernel

pytestmark = pytest.mark.realvm

SEED = 5


@pytest.fixture(scope="session")
def suspend_runs(uml_kernel: UmlKernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ScenarioResult]:
    base = tmp_path_factory.mktemp("uml-suspend")
    return {name: run_scenario(uml_kernel(kernel_variant(sc).name), sc, base / name, mode=Mode.TIME_TRAVEL,
                               seed=SEED) for name, sc in SCENARIOS.items()}


def _failed(res: ScenarioResult) -> str:
    lines = [c.line() for c in res.checks if not c.ok]
    tail = "\n".join(res.run.console[-25:])
    return "\n".join(lines) + f"\n--- console tail ({res.run.directory}):\n{tail}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_suspend_scenario_checks_hold(suspend_runs: dict[str, ScenarioResult], name: str) -> None:
    res = suspend_runs[name]
    assert res.ok, _failed(res)

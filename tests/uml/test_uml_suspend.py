"""The virtio 1.4 SUSPEND bit on a real kernel: our Linux 6.12 patch (``guest/linux/virtio-suspend.patch``, the
``suspend`` UML kernel build, built incrementally from the kept tree, never skipped) against pyvirtio's rng and gpu
through S3 (realvm).

Each scenario of :data:`pyvirtio.uml.suspend.SCENARIOS` runs once per session under time travel on the kernel build
its profile names, ``s3-suspend`` twice (the register-level traces must be identical). Every check a scenario makes
must hold; the real kernel's register-level sequence must match pyvirtio's model driver (configured as the patched
kernel) except for the differences the stock runs explain (:data:`EXPLAINED`, plus the freeze fallback's one); and
every driver-side SUSPEND statement is kept by the real kernel in the runs that suspend.
"""

from __future__ import annotations

import re

import pytest

from pyvirtio.spec.normative import load_inventory
from pyvirtio.uml.bridge import Mode
from pyvirtio.uml.catalog import kernel_variant
from pyvirtio.uml.model import compare_run
from pyvirtio.uml.report import first_difference
from pyvirtio.uml.scenarios import ScenarioResult, run_scenario
from pyvirtio.uml.suspend import DRIVER_STATEMENTS, SCENARIOS, round_trips, statement_checks

from .conftest import UmlKernel
from .test_uml_real import EXPLAINED as STOCK_EXPLAINED

pytestmark = pytest.mark.realvm

SEED = 5


@pytest.fixture(scope="session")
def suspend_runs(uml_kernel: UmlKernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ScenarioResult]:
    base = tmp_path_factory.mktemp("uml-suspend")
    runs = {name: run_scenario(uml_kernel(kernel_variant(sc).name), sc, base / name, mode=Mode.TIME_TRAVEL,
                               seed=SEED) for name, sc in SCENARIOS.items()}
    sc = SCENARIOS["s3-suspend"]
    runs["s3-suspend-again"] = run_scenario(uml_kernel(kernel_variant(sc).name), sc, base / "s3-suspend-again",
                                            mode=Mode.TIME_TRAVEL, seed=SEED)
    return runs


def _failed(res: ScenarioResult) -> str:
    lines = [c.line() for c in res.checks if not c.ok]
    tail = "\n".join(res.run.console[-25:])
    return "\n".join(lines) + f"\n--- console tail ({res.run.directory}):\n{tail}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_suspend_scenario_checks_hold(suspend_runs: dict[str, ScenarioResult], name: str) -> None:
    res = suspend_runs[name]
    assert res.run.functions and res.checks
    assert res.ok, _failed(res)


def test_same_seed_same_register_trace(suspend_runs: dict[str, ScenarioResult]) -> None:
    a, b = suspend_runs["s3-suspend"].run, suspend_runs["s3-suspend-again"].run
    assert len(a.wire) > 500
    assert first_difference(a, b) is None


#: The stock runs' explained differences, and the freeze fallback of a failed resume: virtio_pci_freeze's
#: vp_del_vqs writes NO_VECTOR after the reset (the stock runs see it in the suspend phase).
EXPLAINED: dict[str, tuple[str, ...]] = {
    **STOCK_EXPLAINED,
    "resume": (*STOCK_EXPLAINED["resume"], r"(queue 0|config) vector <- 0xffff"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_register_sequence_matches_the_model_driver(suspend_runs: dict[str, ScenarioResult], name: str) -> None:
    """The patched kernel's register-level sequence (status writes, feature words, queue set-up, PMCSR, MSI-X)
    equals the model driver's under the same profile, phase by phase, up to the explained differences."""
    res = suspend_runs[name]
    comparison = compare_run(res.run, res.scenario)
    assert {c.phase for c in comparison} == {"probe", "suspend", "resume"}
    unexplained = []
    for c in comparison:
        allowed = EXPLAINED.get(c.phase, ())
        for d in c.differences:
            if not all(any(re.fullmatch(p, text) for p in allowed) for text in (*d.real, *d.model)):
                unexplained.append((c.device, c.phase, d))
    assert not unexplained, "\n".join(f"{dev}/{ph}: {d.lines()}" for dev, ph, d in unexplained)


def test_the_patched_kernel_suspends_only_devices_that_offer_it(suspend_runs: dict[str, ScenarioResult]) -> None:
    r = suspend_runs["s3-suspend-unoffered"].run
    assert not round_trips(r, "rng") and not round_trips(r, "gpu")
    assert all(round_trips(suspend_runs[n].run, "gpu") for n in SCENARIOS if n != "s3-suspend-unoffered")


# -- every driver-side SUSPEND statement, kept by the real kernel -------------------------------------------------

_SUSPENDING = [n for n in SCENARIOS if n != "s3-suspend-unoffered"]


def _kept(runs: dict[str, ScenarioResult], sid: str) -> None:
    seen = 0
    for name in _SUSPENDING:
        for dev in ("rng", "gpu"):
            c = statement_checks(runs[name].run, dev)[sid]
            assert c.ok, f"{name}: {c.line()}"
            seen += 1
    assert seen == 2 * len(_SUSPENDING)


def test_every_driver_statement_is_checked() -> None:
    """The checks cover every driver-side statement of Device Suspend in the inventory (the tests below name
    each one)."""
    ids = {s.id for s in load_inventory() if s.id.startswith("drv:suspend#") and s.applies}
    assert ids == set(DRIVER_STATEMENTS)


@pytest.mark.spec("drv:suspend#1")
def test_suspend_only_after_driver_ok_and_negotiation(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#1")


@pytest.mark.spec("drv:suspend#2")
def test_suspend_is_polled_until_acknowledged(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#2")


@pytest.mark.spec("drv:suspend#3")
def test_no_buffer_made_available_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#3")


@pytest.mark.spec("drv:suspend#4")
def test_no_notification_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#4")


@pytest.mark.spec("drv:suspend#5")
def test_no_config_write_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#5")


@pytest.mark.spec("drv:suspend#6")
def test_resume_waits_for_the_device(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#6")

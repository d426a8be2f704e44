"""The virtio 1.4 SUSPEND bit on a real kernel: our Linux 6.12 patch (``guest/linux/virtio-suspend.patch``, the
``suspend`` UML kernel build, built incrementally from the kept tree, never skipped) against pyvirtio's rng and gpu
through S3 (realvm).

Each scenario of :data:`pyvirtio.uml.suspend.SCENARIOS` runs once per session under time travel on the kernel build
its profile names, ``s3-suspend`` twice (the register-level traces must be identical). Every check a scenario makes
must hold; the real kernel's register-level sequence must match pyvirtio's model driver (configured as the patched
kernel) except for the differences the README explains (:data:`pyvirtio.uml.model.EXPLAINED`); and
every driver-side SUSPEND statement is kept by the real kernel in the runs that suspend.
"""

from __future__ import annotations

import pytest

from pyvirtio.provenance import record, utc_now
from pyvirtio.spec.normative import load_inventory
from pyvirtio.uml.bridge import Mode
from pyvirtio.uml.catalog import kernel_variant
from pyvirtio.uml.model import cell_evidence, compare_run, unexplained
from pyvirtio.uml.report import first_difference
from pyvirtio.uml.scenarios import ScenarioResult, run_scenario
from pyvirtio.uml.suspend import DRIVER_STATEMENTS, SCENARIOS, held_count, round_trips, statement_checks

from .conftest import UmlKernel

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



@pytest.mark.parametrize("name", list(SCENARIOS))
def test_suspend_scenario_checks_hold(suspend_runs: dict[str, ScenarioResult], name: str) -> None:
    res = suspend_runs[name]
    assert res.run.functions and res.checks
    assert res.ok, res.failure_text()


def test_same_seed_same_register_trace(suspend_runs: dict[str, ScenarioResult]) -> None:
    a, b = suspend_runs["s3-suspend"].run, suspend_runs["s3-suspend-again"].run
    assert len(a.wire) > 500
    assert first_difference(a, b) is None


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_register_sequence_matches_the_model_driver(suspend_runs: dict[str, ScenarioResult], name: str,
                                                    uml_kernel: UmlKernel) -> None:
    """The patched kernel's register-level sequence (status writes, feature words, queue set-up, PMCSR, MSI-X)
    equals the model driver's under the same profile, phase by phase, up to the explained differences
    (:data:`pyvirtio.uml.model.EXPLAINED`: the stock runs', and the NO_VECTOR writes of a freeze that a failed
    resume falls back to). The scenario that checks the profile's S3 cell records it in the ledger of real runs
    (``pm matrix --real``)."""
    res = suspend_runs[name]
    comparison = compare_run(res.run, res.scenario)
    assert {c.phase for c in comparison} == {"probe", "suspend", "resume"}
    bad = unexplained(comparison)
    assert not bad, "\n".join(f"{c.device}/{c.phase}: {d.lines()}" for c, d in bad)
    stack = uml_kernel(kernel_variant(res.scenario).name).stack
    ev = cell_evidence(res, comparison, stack, when=utc_now(),
                       report=str(res.run.directory))
    if res.scenario.cell is not None:  # the suspend-bit profile's S3 cell, checked on a real kernel
        assert ev is not None and ev.agrees, ev
        record(ev)
    else:
        assert ev is None


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


def _something_held(runs: dict[str, ScenarioResult]) -> None:
    """#3 and #4 are not only kept vacuously: in ``s3-suspend-held`` a kernel context (the fbdev deferred-I/O
    work) submitted to the suspended gpu, and the patch held its two requests (written into the ring past the
    unchanged available index, published after the resume)."""
    held = {(n, d): held_count(runs[n].run, d) for n in _SUSPENDING for d in ("rng", "gpu")}
    assert held[("s3-suspend-held", "gpu")] == 2, held
    assert all(v == 0 for k, v in held.items() if k != ("s3-suspend-held", "gpu")), held


@pytest.mark.spec("drv:suspend#3")
def test_no_buffer_made_available_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#3")
    _something_held(suspend_runs)


@pytest.mark.spec("drv:suspend#4")
def test_no_notification_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#4")
    _something_held(suspend_runs)


def test_the_held_kick_is_the_only_register_difference_of_the_held_resume(
        suspend_runs: dict[str, ScenarioResult]) -> None:
    """In ``s3-suspend-held`` the real gpu's resume differs from the model driver's by the held notification
    only (besides pci_restore_state's MSI-X rewrite): pyvirtio's model driver refuses a submission while its
    device is suspended instead of holding it in the ring, so no model submitter plays the deferred-I/O work;
    every other step, the SUSPEND and DRIVER_OK writes and the polls included, is the same."""
    res = suspend_runs["s3-suspend-held"]
    comparison = {(c.device, c.phase): c for c in compare_run(res.run, res.scenario)}
    gpu = comparison[("gpu", "resume")]
    extra_real = [t for d in gpu.differences for t in d.real if not t.startswith(("MSI-X", "COMMAND"))]
    extra_model = [t for d in gpu.differences for t in d.model]
    assert extra_real == ["notify queue 0"] and not extra_model, gpu.lines()
    assert not comparison[("gpu", "suspend")].differences


@pytest.mark.spec("drv:suspend#5")
def test_no_config_write_while_suspended(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#5")


@pytest.mark.spec("drv:suspend#6")
def test_resume_waits_for_the_device(suspend_runs: dict[str, ScenarioResult]) -> None:
    _kept(suspend_runs, "drv:suspend#6")

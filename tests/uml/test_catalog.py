"""The UML scenario catalog: every scenario names a kernel build that exists, proposal scenarios are built from
their profile's plan, and the model is configured as the patched kernel."""

from __future__ import annotations

import pytest

from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.uml.catalog import CATALOG, by_variant, collect, kernel_variant
from pyvirtio.uml.model import LINUX_612, model_run, model_setup
from pyvirtio.uml.scenarios import PROFILE_VARIANTS, SCENARIOS, DeviceSpec, Scenario, profile_plan
from pyvirtio.uml.suspend import SCENARIOS as SUSPEND_SCENARIOS
from pyvirtio.vm.uml_kernel import PROPOSAL_VARIANTS, STOCK


def test_catalog_holds_stock_and_proposal_scenarios() -> None:
    assert set(SCENARIOS) | set(SUSPEND_SCENARIOS) <= set(CATALOG)
    assert all(sc.profile is None and kernel_variant(sc) is STOCK for sc in SCENARIOS.values())
    groups = by_variant()
    assert next(iter(groups)) == "stock"
    assert {sc.name for sc in groups["suspend"]} == set(SUSPEND_SCENARIOS)


def test_every_profile_names_a_kernel_build() -> None:
    assert set(PROFILE_VARIANTS.values()) <= set(PROPOSAL_VARIANTS)
    for sc in CATALOG.values():
        assert kernel_variant(sc).name == sc.variant


def test_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        collect(SCENARIOS, {"boot": SCENARIOS["boot"]})
    with pytest.raises(ValueError, match="filed as"):
        collect({"other": SCENARIOS["boot"]})


def test_a_profile_without_a_kernel_build_is_refused() -> None:
    with pytest.raises(ValueError, match="no UML kernel build"):
        Scenario("x", "x", (), "", lambda r, s, f: [], profile="no-soft-reset")


def test_devices_come_from_the_plan() -> None:
    plan = profile_plan("suspend-bit")
    rng, gpu = DeviceSpec.from_plan("rng", plan), DeviceSpec.from_plan("gpu", plan)
    assert rng.pcie_port and rng.no_soft_reset and gpu.no_soft_reset and gpu.freeze_mode_bit is None
    fm = DeviceSpec.from_plan("gpu", profile_plan("freeze-mode"), pcie_port=True)
    assert fm.pcie_port and fm.freeze_mode_bit == profile_plan("freeze-mode").gpu_plug.freeze_mode_bit
    fz = DeviceSpec.from_plan("gpu", profile_plan("gpu-freezing"))
    dev, _ = fz.build(0)
    assert fz.offer_freezing and getattr(dev, "offer_freezing", False)
    with pytest.raises(ValueError):
        DeviceSpec.from_plan("testdev", plan)


def test_model_setup_is_linux_612_plus_the_mechanism() -> None:
    assert model_setup().kernel == LINUX_612 and not model_setup().accept_suspend
    s = model_setup("suspend-bit")
    assert s.kernel.suspend_bit and s.kernel.pm_no_reset and s.accept_suspend and s.driver_features == 0
    f = model_setup("freeze-mode")
    assert f.kernel.freeze_mode and not f.accept_suspend and f.driver_features
    assert model_setup("gpu-freezing").gpu_driver is GpuDriverKind.FREEZING
    assert model_setup("freeze-mode", GpuDriverKind.NO_HOOKS).gpu_driver is GpuDriverKind.NO_HOOKS


def test_model_run_of_the_suspend_profile_writes_suspend() -> None:
    sc = CATALOG["s3-suspend"]
    pt = model_run(sc.devices, seed=5, sleep=True, setup=model_setup(sc.profile), while_asleep=sc.while_asleep,
                   asleep_after=sc.asleep_after)
    for dev in ("rng", "gpu"):
        assert [str(s) for s in pt.steps(dev, "suspend")][:1] == ["status <- 0x1f"]

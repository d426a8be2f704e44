"""The freeze_mode and FREEZING scenarios without a kernel: they are in the catalog, run the kernel builds of our
patches, are built from their profiles' plans, and the model drivers predict what the real kernel must show."""

from __future__ import annotations

import re

from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.spec.constants import GpuFeature, bit
from pyvirtio.uml.catalog import CATALOG, kernel_variant
from pyvirtio.uml.freeze_scenarios import (
    GPU_PATCH,
    SCENARIOS,
    FreezeGpu,
    kernel_build,
    model_deliveries,
    model_suspend_refusal,
)
from pyvirtio.uml.model import model_setup
from pyvirtio.vm.uml_kernel import PATCH_DIR, patched_files


def test_the_scenarios_are_in_the_catalog_on_our_kernel_builds() -> None:
    assert set(SCENARIOS) <= set(CATALOG)
    for sc in SCENARIOS.values():
        build = kernel_build(sc)
        assert build.name == sc.variant == kernel_variant(sc).name
        assert set(kernel_variant(sc).patches) <= set(build.patches)
        if sc.profile == "freeze-mode":
            assert GPU_PATCH in build.patches and PATCH_DIR / "virtio-pci-freeze-mode.patch" in build.patches
        else:
            assert build.patches == (GPU_PATCH,)


def test_devices_come_from_the_profiles() -> None:
    fm = {d.kind: d for d in SCENARIOS["s3-freeze-mode"].devices}
    assert fm["gpu"].freeze_mode_bit == 44 and fm["rng"].freeze_mode_bit is None
    assert all(d.pcie_port and not d.no_soft_reset for d in fm.values())
    gpu, _ = fm["gpu"].build(0)
    assert isinstance(gpu, FreezeGpu) and not gpu.device_features() & bit(5)  # no bit 5 for the basic hooks
    fz, _ = {d.kind: d for d in SCENARIOS["s3-gpu-freezing"].devices}["gpu"].build(0)
    assert isinstance(fz, FreezeGpu) and fz.offer_freezing and not fz.offer_blob_alignment
    col, _ = {d.kind: d for d in SCENARIOS["s3-gpu-freezing-collision"].devices}["gpu"].build(0)
    assert isinstance(col, FreezeGpu) and col.offer_blob_alignment and not col.offer_freezing
    assert col.device_features() & bit(GpuFeature.BLOB_ALIGNMENT)


def test_the_model_is_configured_as_the_patched_kernel() -> None:
    assert model_setup("freeze-mode").kernel.freeze_mode and model_setup("freeze-mode").gpu_driver is \
        GpuDriverKind.BASIC_HOOKS
    assert model_setup("gpu-freezing").gpu_driver is GpuDriverKind.FREEZING


def test_model_predictions() -> None:
    """A display event while asleep reaches nobody (the device was reset: no notification); one raised while the
    device is asked to keep its state is held by the core and delivered once; a BLOB_ALIGNMENT device refuses
    STATUS_FREEZING and the model's suspend is aborted."""
    assert model_deliveries(SCENARIOS["s3-freeze-mode"], 5) == 0
    assert model_deliveries(SCENARIOS["s3-gpu-freezing"], 5) == 0
    assert model_deliveries(SCENARIOS["s3-freeze-mode-held"], 5) == 1
    assert model_deliveries(SCENARIOS["s3-gpu-freezing-held"], 5) == 1
    why = model_suspend_refusal(SCENARIOS["s3-gpu-freezing-collision"], 5)
    assert why is not None and "STATUS_FREEZING" in why


def test_the_patches_are_ours_and_tagged() -> None:
    """Each patch: a description before the first diff, paths inside the tree, every log line tagged."""
    for name, tag, where in (("virtio-pci-freeze-mode.patch", "freeze-mode:", ("drivers/virtio/", "include/")),
                             ("virtio-gpu-freezing.patch", "gpu-freezing:", ("drivers/gpu/drm/virtio/", "include/"))):
        path = PATCH_DIR / name
        text = path.read_text()
        head = text.split("\ndiff --git ", 1)[0]
        assert len(head.splitlines()) > 10 and (PATCH_DIR / name.replace(".patch", ".md")).is_file()
        changed, deleted = patched_files(path)
        assert changed and not deleted and all(p.startswith(where) for p in changed)
        logs = re.findall(r'^\+\s*(?:dev_info|dev_warn|dev_err)\(&[^,]+,\s*\n?\+?\s*"([^"]*)', text, re.M)
        assert logs and all(s.startswith(tag) for s in logs), logs

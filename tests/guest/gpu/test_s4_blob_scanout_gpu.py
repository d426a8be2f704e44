"""A blob scanout across S4 with the production ``s4-replay`` flavour, through the real experiment (build_system,
hibernation image, boot_from_image), as ``pyvirtio.pm.scenario`` runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyvirtio.guest.gpu.driver import ObjectKind
from pyvirtio.guest.kernel import PmEvent
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import parse_profile
from pyvirtio.pm.system import System, boot_from_image, build_system, write_hibernation_image


def hibernate_and_resume(system: System, path: Path) -> System:
    """``_hibernate_and_resume``'s sequence: prepare, freeze, thaw, write the image, power off, boot from it."""
    guest = system.guest
    guest.notify(PmEvent.HIBERNATION_PREPARE)
    guest.freeze_all()
    guest.restore_all()
    write_hibernation_image(system, path)
    guest.shutdown_all()
    new = boot_from_image(path)
    new.guest.notify(PmEvent.POST_HIBERNATION)
    return new


def test_blob_on_scanout_1_comes_back_after_s4_as_the_blob(tmp_path: Path) -> None:
    """Defect (issue 8): with s4-replay, a guest blob shown on scanout 1 (SET_SCANOUT_BLOB, virtio 1.4 §5.7.6.8)
    came back after S4 as the stale fbdev framebuffer. The restore re-creates the blob from the restore list and
    the modeset replay (``drm_mode_config_helper_resume``) shows what each scanout showed: scanout 1 shows the
    blob's pixels, scanout 0 its framebuffer."""
    system = build_system(parse_profile("s4-replay"), ScenarioConfig(resources=1))
    img = np.random.default_rng(5).integers(0, 256, (200, 320, 4), dtype=np.uint8)
    img[..., 3] = 255
    blob = system.gpu_drv.show_blob(1, img)
    fb1 = system.gpu_drv.objects.of_kind(ObjectKind.TWO_D)[1]
    screen0 = np.asarray(system.gpu_dev.scanout_image(0))
    assert np.array_equal(np.asarray(system.gpu_dev.scanout_image(1)), img)
    new = hibernate_and_resume(system, tmp_path / "hibernate.img")
    assert new.gpu_dev.scanouts[1].resource_id == blob.id != fb1.id
    assert np.array_equal(np.asarray(new.gpu_dev.scanout_image(1)), img)
    assert np.array_equal(np.asarray(new.gpu_dev.scanout_image(0)), screen0)
    assert new.gpu_drv.probe_alive()

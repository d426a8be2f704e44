"""What the PM scenario measures of virtio-gpu: screens, host resources, hot-plug events, live queues.

Contract: a measurement never raises because the device or the driver stopped working (a dead queue is
``False``, a disabled scanout ``None``); it uses the device's and the driver's public API only. Building the
system is :mod:`pyvirtio.pm.system`'s job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from pyvirtio.clock import MS
from pyvirtio.errors import PyvirtioError
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.host.gpu.display import write_png
from pyvirtio.pm.config import ScenarioConfig

RGBA = npt.NDArray[np.uint8]


def test_pattern(width: int, height: int, seed: int) -> RGBA:
    """A deterministic RGBA desktop: gradients plus a seed-dependent stripe."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 4), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = ((x + y + seed * 37) % 256).astype(np.uint8)
    img[..., 3] = 255
    return img


def populate(drv: GpuDriver, cfg: ScenarioConfig) -> None:
    """Draw the desktop on every scanout, create the extra resources and show the cursor."""
    for i in range(cfg.scanouts):
        drv.draw(i, test_pattern(cfg.width, cfg.height, i))
    width = 256 if cfg.resource_size <= 16 << 20 else 4096  # keeps height within the 16384 limit
    height = max(1, cfg.resource_size // (width * 4))
    for _ in range(cfg.resources):
        drv.create_resource_2d(width, height)
    drv.set_cursor(0, cfg.width // 2, cfg.height // 2)


def scanout_image(dev: Gpu, index: int) -> RGBA | None:
    """What scanout ``index`` shows (RGBA), or None when it is disabled."""
    img = dev.scanout_image(index)
    return None if img is None else np.asarray(img)


def save_png(dev: Gpu, index: int, path: Path) -> str:
    """The scanout as PNG; a disabled scanout is drawn as a black "no signal" frame (what a monitor shows)."""
    img = dev.scanout_image(index)
    if img is None:
        img = np.zeros((dev.scanout_height(index) or 200, dev.scanout_width(index) or 320, 4), np.uint8)
        img[..., 3] = 255
    write_png(img, path)
    return str(path)


def resource_keys(dev: Gpu) -> set[tuple[int, int, int, int]]:
    """The host's resources as (id, width, height, format): equal sets mean nothing was lost or re-shaped."""
    return {(r.resource_id, r.width, r.height, int(r.format)) for r in dev.resources.values()}


def hotplug_new_display(dev: Gpu, cfg: ScenarioConfig) -> None:
    """Plug the spare scanout (the host's display hot-plug while the guest sleeps)."""
    dev.hotplug(cfg.scanouts, True, cfg.width, cfg.height)


def display_events(drv: GpuDriver) -> int:
    """How many display config-change events the driver has handled."""
    return int(drv.display_events_handled)


def new_frame_reaches_screen(drv: GpuDriver, dev: Gpu) -> bool:
    """Draw a solid frame on scanout 0; True when the device shows exactly it (outside the cursor box)."""
    frame = np.full((dev.scanout_height(0), dev.scanout_width(0), 4), (10, 200, 30, 255), np.uint8)
    try:
        drv.draw(0, frame, timeout=50 * MS)
    except (PyvirtioError, RuntimeError, ValueError, IndexError, KeyError):
        return False
    img = dev.scanout_image(0)
    if img is None:
        return False
    shown = np.asarray(img)
    h, w = frame.shape[:2]
    # the cursor may cover part of it: compare outside the 64x64 cursor box
    mask = np.ones((h, w), bool)
    cx, cy = drv.cursor_position()
    mask[max(0, cy - 64):cy + 64, max(0, cx - 64):cx + 64] = False
    return bool(shown.shape[:2] == (h, w) and np.array_equal(shown[mask], frame[mask]))


def queues_alive(drv: GpuDriver) -> bool:
    """A GET_DISPLAY_INFO round trip within 20 ms of virtual time."""
    try:
        return bool(drv.probe_alive(timeout=20 * MS))
    except (PyvirtioError, RuntimeError):
        return False

"""Everything the PM scenario asks of virtio-gpu, in one place: build, draw, look, hot-plug, count."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyvirtio.clock import MS
from pyvirtio.errors import PyvirtioError

if TYPE_CHECKING:
    from pyvirtio.dma import GuestAllocator
    from pyvirtio.machine import Machine
    from pyvirtio.pci.function import VirtioPciFunction
    from pyvirtio.pm.guest import Guest
    from pyvirtio.pm.profiles import Profile
    from pyvirtio.pm.system import ScenarioConfig


def make_device(profile: Profile, cfg: ScenarioConfig) -> Any:
    from pyvirtio.pm.gpu_pm import PmGpu

    # One scanout more than the desktop uses: it is hot-plugged while the guest sleeps.
    need = cfg.resources * cfg.resource_size + (cfg.scanouts + 1) * cfg.width * cfg.height * 4
    return PmGpu("gpu", num_scanouts=cfg.scanouts + 1, width=cfg.width, height=cfg.height,
                 enabled_scanouts=cfg.scanouts, offer_freezing=profile.gpu_offers_freezing,
                 host_memory_limit=max(256 << 20, need + (64 << 20)))


def make_driver(profile: Profile, machine: Machine, fn: VirtioPciFunction, alloc: GuestAllocator) -> Any:
    import pyvirtio.pm.gpu_pm  # noqa: F401  (registers the PM driver flavours)
    from pyvirtio.drivers.gpu import driver_class

    cls = driver_class(profile.gpu_driver.value)
    return cls(machine, fn, alloc, name="gpu")


def install_notifiers(guest: Guest, drv: Any) -> None:
    hook = getattr(drv, "pm_notifier", None)
    if hook is not None:
        guest.notifiers.append(hook)


def test_pattern(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic RGBA desktop: gradients plus a seed-dependent stripe."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 4), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = ((x + y + seed * 37) % 256).astype(np.uint8)
    img[..., 3] = 255
    return img


def populate(drv: Any, cfg: ScenarioConfig) -> None:
    """Draw the desktop on every scanout, create the extra resources and show the cursor."""
    for i in range(cfg.scanouts):
        drv.draw(i, test_pattern(cfg.width, cfg.height, i))
    width = 256 if cfg.resource_size <= 16 << 20 else 4096  # keeps height within the 16384 limit
    height = max(1, cfg.resource_size // (width * 4))
    for _ in range(cfg.resources):
        drv.create_resource_2d(width, height)
    drv.set_cursor(0, cfg.width // 2, cfg.height // 2)


def scanout_image(dev: Any, index: int) -> np.ndarray | None:
    img = dev.scanout_image(index)
    return None if img is None else np.asarray(img)


def save_png(dev: Any, index: int, path: Path) -> str:
    """The scanout as PNG; a disabled scanout is drawn as a black "no signal" frame (what a monitor shows)."""
    from pyvirtio.devices.gpu.display import write_png

    img = dev.scanout_image(index)
    if img is None:
        img = np.zeros((dev.scanout_height(index) or 200, dev.scanout_width(index) or 320, 4), np.uint8)
        img[..., 3] = 255
    write_png(img, path)
    return str(path)


def resource_keys(dev: Any) -> set[tuple[int, int, int, int]]:
    return {(r.resource_id, r.width, r.height, int(r.format)) for r in dev.resources.values()}


def hotplug_new_display(dev: Any, cfg: ScenarioConfig) -> None:
    dev.hotplug(cfg.scanouts, True, cfg.width, cfg.height)


def display_events(drv: Any) -> int:
    return int(drv.display_events_handled)


def new_frame_reaches_screen(drv: Any, dev: Any) -> bool:
    frame = np.full((dev.scanout_height(0), dev.scanout_width(0), 4), (10, 200, 30, 255), np.uint8) \
        if hasattr(dev, "scanout_height") else None
    try:
        if frame is None:
            return False
        drv.draw(0, frame, timeout=50 * MS)
    except (PyvirtioError, RuntimeError, ValueError, IndexError, KeyError):
        return False
    img = dev.scanout_image(0)
    if img is None:
        return False
    img = np.asarray(img)
    h, w = frame.shape[:2]
    # the cursor may cover part of it: compare outside the 64x64 cursor box
    mask = np.ones((h, w), bool)
    cx, cy = drv.cursor_position() if hasattr(drv, "cursor_position") else (w // 2, h // 2)
    mask[max(0, cy - 64):cy + 64, max(0, cx - 64):cx + 64] = False
    return bool(img.shape[:2] == (h, w) and np.array_equal(img[mask], frame[mask]))


def queues_alive(drv: Any) -> bool:
    try:
        return bool(drv.probe_alive(timeout=20 * MS))
    except (PyvirtioError, RuntimeError):
        return False

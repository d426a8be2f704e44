"""``pyvirtio gpu``: virtio-gpu tools (``demo``: draw through the guest driver, write what each scanout shows).

Contract: ``demo`` writes ``scanout-<n>.png`` for every scanout and prints each path; the picture is
:func:`demo_pattern` with the cursor on top, exactly as the device shows it.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import numpy.typing as npt

from pyvirtio.cli.common import Group, output_dir, shown
from pyvirtio.spec.constants import GPU_EDID_MAX_MODE, GPU_MAX_SCANOUTS, GPU_MIN_SCANOUT_SIZE

#: SMPTE-like colour bars (RGB)
BARS = ((192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192))


def demo_pattern(width: int, height: int, index: int) -> npt.NDArray[np.uint8]:
    """Colour bars over the top two thirds, a grey ramp below, a white 1-pixel border, ``index`` in binary dots."""
    img = np.zeros((height, width, 4), dtype=np.uint8)
    img[..., 3] = 255
    top = height * 2 // 3
    xs = np.arange(width) * len(BARS) // width
    img[:top, :, :3] = np.asarray(BARS, dtype=np.uint8)[xs][None, :, :]
    ramp = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)
    img[top:, :, :3] = ramp[None, :, None]
    img[0, :, :3] = img[-1, :, :3] = img[:, 0, :3] = img[:, -1, :3] = 255
    dot = max(2, min(width, height) // 32)
    for b in range(5):  # the scanout number, most significant bit first
        on = (index >> (4 - b)) & 1
        x0, y0 = dot * (1 + 2 * b), dot
        img[y0 : y0 + dot, x0 : x0 + dot, :3] = (255, 255, 255) if on else (0, 0, 0)
    return img


def run_demo(out: Path, scanouts: int, width: int, height: int) -> list[Path]:
    """Draw the pattern and a cursor on every scanout through :class:`GpuDriver`; return the PNGs written."""
    from pyvirtio.dma import GuestAllocator
    from pyvirtio.guest.gpu.driver import GpuDriver
    from pyvirtio.host.gpu import Gpu
    from pyvirtio.machine import Machine

    fb_bytes = width * height * 4
    heap = scanouts * (fb_bytes + (1 << 20)) + (8 << 20)
    machine = Machine(heap + (2 << 20), seed=0)
    dev = Gpu("gpu", num_scanouts=scanouts, width=width, height=height)
    fn = machine.plug(dev)
    drv = GpuDriver(machine, fn, GuestAllocator(machine.memory, 1 << 20, heap), name="gpu")
    drv.probe()
    paths = []
    for i in range(scanouts):
        drv.draw(i, demo_pattern(width, height, i))
        drv.set_cursor(i, width // 2, height // 2)
        path = out / f"scanout-{i}.png"
        dev.save_png(i, path)
        paths.append(path)
    return paths


@click.group(cls=Group)
def gpu() -> None:
    """virtio-gpu device and driver tools."""


@gpu.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for scanout-N.png (created if missing).")
@click.option("--scanouts", default=1, show_default=True, type=click.IntRange(1, GPU_MAX_SCANOUTS))
@click.option("--width", default=640, show_default=True, type=click.IntRange(GPU_MIN_SCANOUT_SIZE, GPU_EDID_MAX_MODE))
@click.option("--height", default=480, show_default=True,
              type=click.IntRange(GPU_MIN_SCANOUT_SIZE, GPU_EDID_MAX_MODE))
def demo(out: Path, scanouts: int, width: int, height: int) -> None:
    """Draw a test pattern and the cursor on each scanout through the guest driver; write their PNGs."""
    output_dir(out)
    for path in run_demo(out, scanouts, width, height):
        click.echo(shown(path))

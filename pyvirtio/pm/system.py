"""Build the scenario's machine and guest for a profile, and rebuild one from an S4 image.

The guest has virtio-gpu (N scanouts, M extra resources, a cursor) and virtio-rng. Everything needed to rebuild
the system after hibernation lives in the image header: the new machine shares nothing with the old one.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.driver.core import VirtioDriver
from pyvirtio.errors import UserInputError
from pyvirtio.machine import Machine
from pyvirtio.pm import gpu_adapter as gpu
from pyvirtio.pm.freeze_mode import FreezeModeDevice
from pyvirtio.pm.guest import Guest, KernelConfig
from pyvirtio.pm.image import S4Image, load_memory, read_image, write_image
from pyvirtio.pm.profiles import Profile, parse_profile

MIB = 1 << 20


@dataclass(frozen=True)
class ScenarioConfig:
    scanouts: int = 2
    width: int = 320
    height: int = 200
    resources: int = 4  # extra GPU resources besides the framebuffers and the cursor
    resource_size: int = 256 << 10  # bytes each
    seed: int = 0
    machine_type: str = "q35"
    inflight: int = 2  # rng requests in flight at suspend time
    sleep_time: int = 1000 * MS

    def memory_size(self) -> int:
        fb = self.scanouts * self.width * self.height * 4 + 64 * 64 * 4
        need = fb + self.resources * (self.resource_size + 4096) + 32 * MIB
        return max(64 * MIB, 1 << (need - 1).bit_length())

    def validate(self) -> None:
        if not 1 <= self.scanouts <= 15:
            raise UserInputError("--scanouts must be 1..15 (one more is hot-plugged while asleep)")
        if self.resources < 0 or self.resource_size <= 0:
            raise UserInputError("--resources must be >= 0 and --resource-size > 0")
        if self.resource_size > 256 << 20 or self.resources * self.resource_size > 4 << 30:
            raise UserInputError("--resource-size must be <= 256M and --resources x --resource-size <= 4G")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise UserInputError("--width/--height must be 16..4096")


@dataclass
class System:
    profile: Profile
    config: ScenarioConfig
    machine: Machine
    guest: Guest
    gpu_dev: Any
    gpu_drv: Any
    rng_drv: Any
    freeze_mode: FreezeModeDevice | None = None
    restore_ns: int = 0  # virtual time the image kernel's restore took (S4 only)

    @property
    def drivers(self) -> list[VirtioDriver]:
        return self.guest.drivers


def _plug(
    profile: Profile, cfg: ScenarioConfig, machine: Machine
) -> tuple[Any, Any, Any, Any, FreezeModeDevice | None]:
    from pyvirtio.devices import Rng

    gdev = gpu.make_device(profile, cfg)
    gfn = machine.plug(gdev, pcie_port=profile.pcie_port, no_soft_reset=profile.no_soft_reset,
                       freeze_mode=profile.freeze_mode)
    fm = FreezeModeDevice(gfn, feature_bit=profile.kernel.freeze_mode_bit) if profile.freeze_mode else None
    rdev = Rng(seed=cfg.seed, bytes_per_us=8)
    rfn = machine.plug(rdev, pcie_port=profile.pcie_port, no_soft_reset=profile.no_soft_reset)
    return gdev, gfn, rdev, rfn, fm


def build_system(profile: Profile, cfg: ScenarioConfig) -> System:
    """A freshly booted guest: drivers probed, the desktop drawn, extra resources and the cursor created."""
    from pyvirtio.drivers.rng import RngDriver

    cfg.validate()
    machine = Machine(cfg.memory_size(), seed=cfg.seed, machine_type=cfg.machine_type)
    gdev, gfn, _rdev, rfn, fm = _plug(profile, cfg, machine)
    guest = Guest(machine, profile.kernel)
    gdrv = gpu.make_driver(profile, machine, gfn, guest.alloc)
    guest.bind(gdrv)
    gpu.install_notifiers(guest, gdrv)
    rdrv = guest.bind(RngDriver(machine, rfn, guest.alloc, name="rng"))
    gpu.populate(gdrv, cfg)
    return System(profile, cfg, machine, guest, gdev, gdrv, rdrv, fm)


# -- S4 ------------------------------------------------------------------------------------------------------------

def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def image_header(system: System) -> dict[str, Any]:
    return {
        "profile": system.profile.name,
        "freeze_mode_bit": system.profile.kernel.freeze_mode_bit,
        "config": asdict(system.config),
        "kernel": asdict(system.profile.kernel),
        "allocator": system.guest.alloc.save_state(),
        "drivers": [{"class": _qualname(d), "name": d.name, "state": d.save_state()} for d in system.drivers],
    }


def write_hibernation_image(system: System, path: str | Path) -> int:
    return write_image(path, image_header(system), system.machine.memory)


def _driver_class(spec: str) -> type[VirtioDriver]:
    module, _, name = spec.partition(":")
    if not module.startswith("pyvirtio."):
        raise UserInputError(f"S4 image names a driver outside pyvirtio: {spec!r}")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserInputError(f"S4 image names an unknown driver class {spec!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, VirtioDriver)):
        raise UserInputError(f"S4 image driver class {spec!r} is not a virtio driver")
    return cls


def boot_from_image(path: str | Path) -> System:
    """Power on a new machine, let a boot kernel probe and freeze, load the image, restore the image kernel.

    Only the file is read: the returned system shares no object with the one that hibernated.
    """
    image: S4Image = read_image(path)
    h = image.header
    try:
        profile = parse_profile(h["profile"], freeze_mode_bit=h["freeze_mode_bit"])
        cfg = ScenarioConfig(**h["config"])
        if KernelConfig(**h["kernel"]) != profile.kernel:
            raise UserInputError("S4 image kernel configuration does not match its profile")
        drivers = h["drivers"]
    except (KeyError, TypeError) as e:
        raise UserInputError(f"S4 image {path}: malformed header ({e})") from None
    machine = Machine(cfg.memory_size(), seed=cfg.seed + 1, machine_type=cfg.machine_type)
    gdev, gfn, _rdev, rfn, fm = _plug(profile, cfg, machine)
    # The boot kernel: a normal boot that probes every device, then quiesces them before jumping to the image.
    from pyvirtio.drivers.rng import RngDriver

    # Its allocations live elsewhere than the image kernel's (upper half of RAM): what it leaves on the host
    # points at guest pages the image then overwrites, as with a real boot kernel.
    half = machine.memory.size // 2
    boot = Guest(machine, profile.kernel, heap_base=half, heap_size=half)
    boot.bind(gpu.make_driver(profile, machine, gfn, boot.alloc))
    boot.bind(RngDriver(machine, rfn, boot.alloc, name="rng"))
    boot.freeze_all()
    # The image kernel: guest RAM as it was, drivers as they were, then .restore for every device.
    load_memory(image, machine.memory)
    guest = Guest(machine, profile.kernel)
    try:
        guest.alloc = GuestAllocator.from_state(machine.memory, h["allocator"])
    except ValueError as e:
        raise UserInputError(f"S4 image {path}: {e}") from None
    fns = {"gpu": gfn, "rng": rfn}
    restored: dict[str, VirtioDriver] = {}
    for d in drivers:
        cls = _driver_class(d["class"])
        fn = fns.get(d["name"])
        if fn is None:
            raise UserInputError(f"S4 image has a driver for unknown device {d['name']!r}")
        drv = cls(machine, fn, guest.alloc, name=d["name"])
        drv.load_state(d["state"])
        guest.bind(drv, probe=False)
        restored[d["name"]] = drv
    gpu.install_notifiers(guest, restored["gpu"])
    system = System(profile, cfg, machine, guest, gdev, restored["gpu"], restored["rng"], fm)
    t0 = machine.now
    guest.restore_all()
    system.restore_ns = machine.now - t0
    return system

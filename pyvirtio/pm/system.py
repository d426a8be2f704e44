"""Build the scenario's machine and guest for a profile, and rebuild one from an S4 image.

The guest has virtio-gpu (N scanouts, M extra resources, a cursor) and virtio-rng. Everything needed to rebuild
the system after hibernation lives in the image header: the new machine shares nothing with the old one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, InvalidStateError, UserInputError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.host.pci.freeze_mode import FreezeModeDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.host.rng import Rng
from pyvirtio.machine import Machine
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.gpu_probe import populate
from pyvirtio.pm.image import S4Image, load_memory, read_image, write_image
from pyvirtio.pm.profiles import Profile, parse_profile


@dataclass
class System:
    profile: Profile
    config: ScenarioConfig
    machine: Machine
    guest: Guest
    gpu_dev: PmGpu
    gpu_drv: GpuDriver
    rng_drv: RngDriver
    freeze_mode: FreezeModeDevice | None = None
    restore_ns: int = 0  # virtual time the image kernel's restore took (S4 only)

    @property
    def drivers(self) -> list[VirtioDriver]:
        return self.guest.drivers


def make_gpu_device(profile: Profile, cfg: ScenarioConfig) -> PmGpu:
    """The host's virtio-gpu for ``cfg``: one scanout more than the desktop uses (it is hot-plugged while the
    guest sleeps), FREEZING offered when the profile says so, host memory sized for the workload."""
    need = cfg.resources * cfg.resource_size + (cfg.scanouts + 1) * cfg.width * cfg.height * 4
    return PmGpu("gpu", num_scanouts=cfg.scanouts + 1, width=cfg.width, height=cfg.height,
                 enabled_scanouts=cfg.scanouts, offer_freezing=profile.gpu_offers_freezing,
                 host_memory_limit=max(256 << 20, need + (64 << 20)))


def make_gpu_driver(kind: GpuDriverKind, machine: Machine, fn: VirtioPciFunction,
                    alloc: GuestAllocator) -> GpuDriver:
    """The guest's virtio-gpu driver of flavour ``kind`` (looked up in :data:`FLAVOURS`)."""
    return FLAVOURS[kind](machine, fn, alloc, name="gpu")


def install_notifiers(guest: Guest, drv: GpuDriver) -> None:
    """Register the driver's PM notifier, when its flavour has one (Linux 7.3's refuses S4 with virgl)."""
    hook = getattr(drv, "pm_notifier", None)
    if hook is not None:
        guest.notifiers.append(hook)


def _plug(
    profile: Profile, cfg: ScenarioConfig, machine: Machine
) -> tuple[PmGpu, VirtioPciFunction, Rng, VirtioPciFunction, FreezeModeDevice | None]:
    gdev = make_gpu_device(profile, cfg)
    gfn = machine.plug(gdev, pcie_port=profile.pcie_port, no_soft_reset=profile.no_soft_reset,
                       freeze_mode_bit=profile.kernel.freeze_mode_bit if profile.freeze_mode else None)
    fm = gfn.freeze_mode
    rdev = Rng(seed=cfg.seed, bytes_per_us=8)
    rfn = machine.plug(rdev, pcie_port=profile.pcie_port, no_soft_reset=profile.no_soft_reset)
    return gdev, gfn, rdev, rfn, fm


def build_system(profile: Profile, cfg: ScenarioConfig) -> System:
    """A freshly booted guest: drivers probed, the desktop drawn, extra resources and the cursor created."""
    cfg.validate()
    machine = Machine(cfg.memory_size(), seed=cfg.seed, machine_type=cfg.machine_type)
    gdev, gfn, _rdev, rfn, fm = _plug(profile, cfg, machine)
    guest = Guest(machine, profile.kernel)
    gdrv = make_gpu_driver(profile.gpu_driver, machine, gfn, guest.alloc)
    guest.bind(gdrv)
    install_notifiers(guest, gdrv)
    rdrv = RngDriver(machine, rfn, guest.alloc, name="rng")
    guest.bind(rdrv)
    populate(gdrv, cfg)
    return System(profile, cfg, machine, guest, gdev, gdrv, rdrv, fm)


# -- S4 ------------------------------------------------------------------------------------------------------------

#: Version of the image header's content (the kinds and state formats below); a change that old readers
#: would misread bumps it, and an image of another version gets a one-line error naming both versions.
HEADER_VERSION = 2


def image_header(system: System) -> dict[str, Any]:
    """Everything the image kernel needs besides RAM: profile, workload, kernel, allocator, every driver."""
    return {
        "header_version": HEADER_VERSION,
        "profile": system.profile.name,
        "freeze_mode_bit": system.profile.kernel.freeze_mode_bit,
        "config": asdict(system.config),
        "kernel": asdict(system.profile.kernel),
        "allocator": system.guest.alloc.save_state(),
        "gpu_driver": system.profile.gpu_driver.value,
        "drivers": [{"name": d.name, "state": d.save_state()} for d in system.drivers],
    }


def write_hibernation_image(system: System, path: str | Path) -> int:
    return write_image(path, image_header(system), system.machine.memory)


def _as_state(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise InvalidStateError("driver state is not an object")
    return value


def boot_from_image(path: str | Path) -> System:
    """Power on a new machine, let a boot kernel probe and freeze, load the image, restore the image kernel.

    Only the file is read: the returned system shares no object with the one that hibernated.
    """
    image: S4Image = read_image(path)
    h = image.header
    version = h.get("header_version", 1)
    if version != HEADER_VERSION:
        raise UserInputError(f"S4 image {path}: header version {version} is not supported "
                             f"(this pyvirtio reads version {HEADER_VERSION})")
    try:
        profile = parse_profile(h["profile"], freeze_mode_bit=h["freeze_mode_bit"])
        cfg = ScenarioConfig(**h["config"])
        if KernelConfig(**h["kernel"]) != profile.kernel:
            raise UserInputError("S4 image kernel configuration does not match its profile")
        drivers = h["drivers"]
        if GpuDriverKind(h["gpu_driver"]) is not profile.gpu_driver:
            raise UserInputError("S4 image gpu driver kind does not match its profile")
    except (KeyError, TypeError, ValueError) as e:
        raise UserInputError(f"S4 image {path}: malformed header ({e})") from None
    machine = Machine(cfg.memory_size(), seed=cfg.seed + 1, machine_type=cfg.machine_type)
    gdev, gfn, _rdev, rfn, fm = _plug(profile, cfg, machine)
    # The boot kernel: a normal boot that probes every device, then quiesces them before jumping to the image.
    # Its allocations live elsewhere than the image kernel's (upper half of RAM): what it leaves on the host
    # points at guest pages the image then overwrites, as with a real boot kernel.
    half = machine.memory.size // 2
    boot = Guest(machine, profile.kernel, heap_base=half, heap_size=half)
    boot.bind(make_gpu_driver(profile.gpu_driver, machine, gfn, boot.alloc))
    boot.bind(RngDriver(machine, rfn, boot.alloc, name="rng"))
    boot.freeze_all()
    # The image kernel: guest RAM as it was, drivers as they were, then .restore for every device.
    load_memory(image, machine.memory)
    guest = Guest(machine, profile.kernel)
    try:
        guest.alloc = GuestAllocator.from_state(machine.memory, h["allocator"])
    except ValueError as e:
        raise UserInputError(f"S4 image {path}: {e}") from None
    states = {d.get("name"): d.get("state") for d in drivers if isinstance(d, dict)}
    if sorted(map(str, states)) != ["gpu", "rng"] or len(drivers) != 2:
        raise UserInputError(f"S4 image {path}: expected driver states for 'gpu' and 'rng', "
                             f"found {sorted(map(str, states))}")
    gdrv = make_gpu_driver(profile.gpu_driver, machine, gfn, guest.alloc)
    rdrv = RngDriver(machine, rfn, guest.alloc, name="rng")
    for drv in (gdrv, rdrv):  # probe order, as the old kernel bound them
        try:
            drv.load_state(_as_state(states[drv.name]))
        except (InvalidStateError, DriverError) as e:
            raise UserInputError(f"S4 image {path}: {e}") from None
        guest.bind(drv, probe=False)
    install_notifiers(guest, gdrv)
    system = System(profile, cfg, machine, guest, gdev, gdrv, rdrv, fm)
    t0 = machine.now
    guest.restore_all()
    system.restore_ns = machine.now - t0
    return system

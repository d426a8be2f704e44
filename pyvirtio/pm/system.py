"""Build the scenario's machine and guest from a profile's build plan, and rebuild one from an S4 image.

The guest has virtio-gpu (N scanouts, M extra resources, a cursor) and virtio-rng. Contract: every object is
constructed from the :class:`~pyvirtio.pm.profiles.BuildPlan` (no registry, no lookup by name: the driver class
comes from the explicit :data:`~pyvirtio.guest.gpu.flavours.FLAVOURS` table); :func:`boot_from_image` takes a
path and nothing else, so the system it returns shares no object with the one that hibernated. Everything it
needs is in the image header (:class:`~pyvirtio.pm.image_header.ImageHeader`); any problem with the file is one
:class:`~pyvirtio.errors.UserInputError` line, raised before the new machine runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pyvirtio.atomicio import brief
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, InvalidStateError, UserInputError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.gpu.flavours import FLAVOURS
from pyvirtio.guest.kernel import Guest
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.host.pci.freeze_mode import FreezeModeDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.host.rng import Rng
from pyvirtio.machine import Machine
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.gpu_probe import populate
from pyvirtio.pm.image import load_memory, read_image, write_image
from pyvirtio.pm.image_header import HEADER_VERSION, DriverRecord, ImageHeader
from pyvirtio.pm.profiles import BuildPlan, GpuDeviceConfig, PlugOptions, Profile

__all__ = ["HEADER_VERSION", "System", "boot_from_image", "build_system", "image_header", "install_notifiers",
           "make_gpu_device", "make_gpu_driver", "write_hibernation_image"]


@dataclass
class System:
    """A machine with the scenario's devices plugged, and the guest kernel with its drivers bound."""

    profile: Profile
    config: ScenarioConfig
    machine: Machine
    guest: Guest
    gpu_dev: PmGpu
    gpu_drv: GpuDriver
    rng_drv: RngDriver
    freeze_mode: FreezeModeDevice | None = None
    restore_ns: int = 0  # virtual time the image kernel's restore took (S4 only)
    plan: BuildPlan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = self.profile.plan()

    @property
    def drivers(self) -> list[VirtioDriver]:
        """The bound drivers, in probe order."""
        return self.guest.drivers


def make_gpu_device(device: GpuDeviceConfig, cfg: ScenarioConfig) -> PmGpu:
    """The host's virtio-gpu for ``cfg``: one scanout more than the desktop uses (it is hot-plugged while the
    guest sleeps), FREEZING offered when the plan says so, host memory sized for the workload."""
    need = cfg.resources * cfg.resource_size + (cfg.scanouts + 1) * cfg.width * cfg.height * 4
    return PmGpu("gpu", num_scanouts=cfg.scanouts + 1, width=cfg.width, height=cfg.height,
                 enabled_scanouts=cfg.scanouts, offer_freezing=device.offer_freezing,
                 host_memory_limit=max(256 << 20, need + (64 << 20)))


def make_gpu_driver(plan: BuildPlan, machine: Machine, fn: VirtioPciFunction, alloc: GuestAllocator) -> GpuDriver:
    """The guest's virtio-gpu driver of the plan's flavour (looked up in :data:`FLAVOURS`)."""
    return FLAVOURS[plan.gpu_driver](machine, fn, alloc, name="gpu", extra_features=plan.driver_features)


def make_rng_driver(plan: BuildPlan, machine: Machine, fn: VirtioPciFunction, alloc: GuestAllocator) -> RngDriver:
    """The guest's virtio-rng driver."""
    return RngDriver(machine, fn, alloc, name="rng", extra_features=plan.driver_features)


def install_notifiers(guest: Guest, drv: GpuDriver) -> None:
    """Register the driver's PM notifier, when its flavour has one (Linux 7.3's refuses S4 with virgl)."""
    hook = getattr(drv, "pm_notifier", None)
    if hook is not None:
        guest.notifiers.append(hook)


def _plug(machine: Machine, dev: VirtioDevice, opts: PlugOptions) -> tuple[VirtioPciFunction, FreezeModeDevice | None]:
    fn = machine.plug(dev, pcie_port=opts.pcie_port, no_soft_reset=opts.no_soft_reset,
                      freeze_mode_bit=opts.freeze_mode_bit if opts.freeze_mode else None)
    return fn, fn.freeze_mode


def _plug_all(plan: BuildPlan, cfg: ScenarioConfig,
              machine: Machine) -> tuple[PmGpu, VirtioPciFunction, VirtioPciFunction, FreezeModeDevice | None]:
    gdev = make_gpu_device(plan.gpu_device, cfg)
    gpu_plug = replace(plan.gpu_plug, pcie_port=True) if cfg.gpu_behind_port else plan.gpu_plug
    gfn, fm = _plug(machine, gdev, gpu_plug)
    rfn, _ = _plug(machine, Rng(seed=cfg.seed, bytes_per_us=8), plan.rng_plug if cfg.rng_behind_port else PlugOptions())
    return gdev, gfn, rfn, fm


def build_system(profile: Profile, cfg: ScenarioConfig) -> System:
    """A freshly booted guest: drivers probed, the desktop drawn, extra resources and the cursor created."""
    cfg.validate()
    plan = profile.plan()
    machine = Machine(cfg.memory_size(), seed=cfg.seed, machine_type=cfg.machine_type)
    gdev, gfn, rfn, fm = _plug_all(plan, cfg, machine)
    guest = Guest(machine, plan.kernel)
    gdrv = make_gpu_driver(plan, machine, gfn, guest.alloc)
    guest.bind(gdrv)
    install_notifiers(guest, gdrv)
    rdrv = make_rng_driver(plan, machine, rfn, guest.alloc)
    guest.bind(rdrv)
    populate(gdrv, cfg)
    return System(profile, cfg, machine, guest, gdev, gdrv, rdrv, fm)


# -- S4 ------------------------------------------------------------------------------------------------------------


def image_header(system: System) -> ImageHeader:
    """Everything the image kernel needs besides RAM: profile, workload, kernel, allocator, every driver."""
    return ImageHeader(
        profile=system.profile,
        config=system.config,
        kernel=system.plan.kernel,
        allocator=system.guest.alloc.save_state(),
        gpu_driver=system.plan.gpu_driver,
        drivers=tuple(DriverRecord(d.name, d.save_state()) for d in system.drivers),
    )


def write_hibernation_image(system: System, path: str | Path) -> int:
    """Write guest RAM and :func:`image_header` to ``path`` atomically; returns the file size."""
    return write_image(path, image_header(system).to_dict(), system.machine.memory)


def boot_from_image(path: str | Path) -> System:
    """Power on a new machine, let a boot kernel probe and freeze, load the image, restore the image kernel.

    Only the file is read: the returned system shares no object with the one that hibernated.
    """
    image = read_image(path)
    h = ImageHeader.from_dict(image.header, source=str(path))
    plan = h.profile.plan()
    cfg = h.config
    layout, want = [(b, len(d)) for b, d in image.regions], cfg.memory_layout()
    if layout != want:  # checked before anything is built (load_memory checks it again against the machine)
        raise UserInputError(f"S4 image {path}: memory layout {brief(layout)} is not the workload's {want}")
    machine = Machine(cfg.memory_size(), seed=cfg.seed + 1, machine_type=cfg.machine_type)
    gdev, gfn, rfn, fm = _plug_all(plan, cfg, machine)
    # The boot kernel: a normal boot that probes every device, then quiesces them before jumping to the image.
    # Its allocations live elsewhere than the image kernel's (upper half of RAM): what it leaves on the host
    # points at guest pages the image then overwrites, as with a real boot kernel.
    half = machine.memory.size // 2
    boot = Guest(machine, plan.kernel, heap_base=half, heap_size=half)
    boot.bind(make_gpu_driver(plan, machine, gfn, boot.alloc))
    boot.bind(make_rng_driver(plan, machine, rfn, boot.alloc))
    boot.freeze_all()
    # The image kernel: guest RAM as it was, drivers as they were, then .restore for every device.
    load_memory(image, machine.memory)
    guest = Guest(machine, plan.kernel)
    try:
        guest.alloc = GuestAllocator.from_state(machine.memory, h.allocator)
    except InvalidStateError as e:
        raise UserInputError(f"S4 image {path}: {e}") from None
    gdrv = make_gpu_driver(plan, machine, gfn, guest.alloc)
    rdrv = make_rng_driver(plan, machine, rfn, guest.alloc)
    for drv in (gdrv, rdrv):  # probe order, as the old kernel bound them
        try:
            drv.load_state(h.driver_state(drv.name))
        except (InvalidStateError, DriverError) as e:
            raise UserInputError(f"S4 image {path}: {e}") from None
        guest.bind(drv, probe=False)
    install_notifiers(guest, gdrv)
    system = System(h.profile, cfg, machine, guest, gdev, gdrv, rdrv, fm)
    t0 = machine.now
    guest.restore_all()
    system.restore_ns = machine.now - t0
    return system

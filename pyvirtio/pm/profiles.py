"""The power-management mechanisms as named, combinable profiles (``suspend-bit+s4-replay``), and the build plan
each one turns into.

Contract: :func:`parse_profile` is the only way from a name to a :class:`Profile` (one-line
:class:`~pyvirtio.errors.UserInputError` for anything wrong); :meth:`Profile.plan` is a pure function of the
profile, and the :class:`BuildPlan` it returns is everything the constructors need: how each device is plugged
(PCIe port, No_Soft_Reset, freeze_mode field and its feature bit), the virtio-gpu device's configuration (the
FREEZING feature), the guest kernel's configuration and which virtio-gpu driver it runs. Nothing is patched on an
object after it is built from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from pyvirtio.atomicio import brief
from pyvirtio.errors import UserInputError
from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.guest.kernel import KernelConfig
from pyvirtio.host.pci.freeze_mode import check_freeze_mode_bit as check_device_freeze_mode_bit
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_DEFAULT, bit


def check_freeze_mode_bit(n: int) -> int:
    """``n`` if it may carry the freeze_mode feature, else a one-line :class:`UserInputError` (the range check
    itself is the device's, :func:`pyvirtio.host.pci.freeze_mode.check_freeze_mode_bit`)."""
    try:
        return check_device_freeze_mode_bit(n)
    except ValueError as e:
        raise UserInputError(f"--freeze-mode-bit: {e}") from None


class Mechanism(Enum):
    """One power-management mechanism; a profile combines them."""

    BASELINE = "baseline"
    GPU_FREEZING = "gpu-freezing"
    FREEZE_MODE = "freeze-mode"
    NO_SOFT_RESET = "no-soft-reset"
    SUSPEND_BIT = "suspend-bit"
    S4_REPLAY = "s4-replay"


DESCRIPTIONS: dict[Mechanism, str] = {
    Mechanism.BASELINE: "Linux <= 7.2 virtio-gpu (no freeze/restore) on QEMU <= 9.0: the wake reset destroys "
    "everything and nobody rebuilds it",
    Mechanism.GPU_FREEZING: "2023 VIRTIO_GPU_F_FREEZING (bit 5, collides with BLOB_ALIGNMENT) + "
    "CMD_STATUS_FREEZING 0x0400: a reset while freezing keeps resources",
    Mechanism.FREEZE_MODE: "2023 v5 freeze_mode at common-cfg offset 64, unassigned feature bit "
    f"({FREEZE_MODE_FEATURE_DEFAULT} here), "
    "FREEZE_S3/UNFREEZE with a polled handshake",
    Mechanism.NO_SOFT_RESET: "QEMU 9.1 x-pcie-pm-no-soft-reset + Linux 6.8: no freeze for S3, the wake reset skips "
    "a function left in D3hot",
    Mechanism.SUSPEND_BIT: "virtio 1.4 VIRTIO_F_SUSPEND (43) + SUSPEND status bit, with No_Soft_Reset: quiesce in "
    "place",
    Mechanism.S4_REPLAY: "Linux 7.3 virtio-gpu freeze/restore: drain with timeout, restore list re-created after "
    "hibernation; virgl objects unrecoverable",
}

#: the rows of ``pyvirtio pm matrix``: every mechanism alone, then the combinations that are deployed together
DEFAULT_PROFILES = (
    "baseline", "gpu-freezing", "freeze-mode", "no-soft-reset", "suspend-bit", "s4-replay",
    "no-soft-reset+s4-replay", "suspend-bit+s4-replay",
)


@dataclass(frozen=True)
class PlugOptions:
    """How one device is plugged (the keywords of :meth:`pyvirtio.machine.Machine.plug`)."""

    pcie_port: bool = False  # behind a PCIe root port (q35): the function gets the PCI PM capability
    no_soft_reset: bool = False  # PMCSR No_Soft_Reset: the wake reset skips a function left in D3hot
    freeze_mode: bool = False  # the 2023 freeze_mode field at common-cfg offset 64 ...
    freeze_mode_bit: int = FREEZE_MODE_FEATURE_DEFAULT  # ... behind this feature bit


@dataclass(frozen=True)
class GpuDeviceConfig:
    """What the host's virtio-gpu device is built with, besides the workload's sizes."""

    offer_freezing: bool = False  # the 2023 VIRTIO_GPU_F_FREEZING feature (bit 5) and CMD_STATUS_FREEZING


@dataclass(frozen=True)
class BuildPlan:
    """Everything a profile decides about the system, for the constructors to take."""

    gpu_plug: PlugOptions
    rng_plug: PlugOptions
    gpu_device: GpuDeviceConfig
    kernel: KernelConfig
    gpu_driver: GpuDriverKind
    driver_features: int = 0  # feature bits every guest driver offers on top of its own (the freeze_mode bit)


@dataclass(frozen=True)
class Profile:
    """A set of mechanisms under a canonical name (mechanisms in :class:`Mechanism` order, joined by ``+``)."""

    name: str
    mechanisms: frozenset[Mechanism]
    freeze_mode_bit: int = FREEZE_MODE_FEATURE_DEFAULT

    def has(self, m: Mechanism) -> bool:
        """The profile includes mechanism ``m``."""
        return m in self.mechanisms

    def plan(self) -> BuildPlan:
        """The build plan: which machine, device, kernel and driver this combination of mechanisms means."""
        nsr = self.has(Mechanism.NO_SOFT_RESET) or self.has(Mechanism.SUSPEND_BIT)  # SUSPEND needs D3hot kept
        s4 = self.has(Mechanism.S4_REPLAY)
        freeze_mode = self.has(Mechanism.FREEZE_MODE)
        kernel = KernelConfig(
            name="linux-7.3" if s4 else ("linux-6.8" if nsr else "linux-6.1"),
            pm_no_reset=nsr or s4,  # 6.8+ behaviour (7.3 includes it)
            suspend_bit=self.has(Mechanism.SUSPEND_BIT),
            freeze_mode=freeze_mode,
            freeze_mode_bit=self.freeze_mode_bit,
        )
        if kernel.suspend_bit:
            kernel = replace(kernel, name=kernel.name + "+suspend")
        if s4:
            driver = GpuDriverKind.S4_REPLAY
        elif self.has(Mechanism.GPU_FREEZING):
            driver = GpuDriverKind.FREEZING
        elif freeze_mode:
            driver = GpuDriverKind.BASIC_HOOKS
        else:
            driver = GpuDriverKind.NO_HOOKS
        return BuildPlan(
            gpu_plug=PlugOptions(pcie_port=nsr, no_soft_reset=nsr, freeze_mode=freeze_mode,
                                 freeze_mode_bit=self.freeze_mode_bit),
            rng_plug=PlugOptions(pcie_port=nsr, no_soft_reset=nsr),
            gpu_device=GpuDeviceConfig(offer_freezing=self.has(Mechanism.GPU_FREEZING)),
            kernel=kernel,
            gpu_driver=driver,
            driver_features=bit(self.freeze_mode_bit) if freeze_mode else 0,
        )


def parse_profile(name: str, *, freeze_mode_bit: int = FREEZE_MODE_FEATURE_DEFAULT) -> Profile:
    """``"suspend-bit+s4-replay"`` -> a :class:`Profile`. One-line error for unknown names or a bad bit."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts:
        raise UserInputError("empty profile name")
    mechs: set[Mechanism] = set()
    for p in parts:
        try:
            mechs.add(Mechanism(p))
        except ValueError:
            known = ", ".join(m.value for m in Mechanism)
            raise UserInputError(f"unknown profile {brief(p)} (known: {known})") from None
    if Mechanism.BASELINE in mechs and len(mechs) > 1:
        raise UserInputError("'baseline' cannot be combined with another mechanism")
    return Profile(name="+".join(m.value for m in Mechanism if m in mechs), mechanisms=frozenset(mechs),
                   freeze_mode_bit=check_freeze_mode_bit(freeze_mode_bit))

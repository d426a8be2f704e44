"""The power-management mechanisms as named, combinable profiles (``suspend-bit+s4-replay``).

Each mechanism contributes to the machine (PCIe port, No_Soft_Reset, freeze_mode field), the virtio-gpu device
(the FREEZING feature) and the guest kernel (which Linux behaviour, which virtio-gpu driver).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pyvirtio.errors import UserInputError
from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.guest.kernel import KernelConfig


class Mechanism(Enum):
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
    Mechanism.FREEZE_MODE: "2023 v5 freeze_mode at common-cfg offset 64, unassigned feature bit (44 here), "
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
class Profile:
    name: str
    mechanisms: frozenset[Mechanism]
    pcie_port: bool
    no_soft_reset: bool
    freeze_mode: bool
    gpu_offers_freezing: bool
    kernel: KernelConfig
    gpu_driver: GpuDriverKind

    def has(self, m: Mechanism) -> bool:
        return m in self.mechanisms


def parse_profile(name: str, *, freeze_mode_bit: int = 44) -> Profile:
    """``"suspend-bit+s4-replay"`` -> a :class:`Profile`. One-line error for unknown names."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts:
        raise UserInputError("empty profile name")
    mechs: set[Mechanism] = set()
    for p in parts:
        try:
            mechs.add(Mechanism(p))
        except ValueError:
            known = ", ".join(m.value for m in Mechanism)
            raise UserInputError(f"unknown profile {p!r} (known: {known})") from None
    if Mechanism.BASELINE in mechs and len(mechs) > 1:
        raise UserInputError("'baseline' cannot be combined with another mechanism")
    if not 44 <= freeze_mode_bit <= 49:
        raise UserInputError("--freeze-mode-bit must be in the unassigned range 44..49")
    nsr = bool(mechs & {Mechanism.NO_SOFT_RESET, Mechanism.SUSPEND_BIT})
    s4 = Mechanism.S4_REPLAY in mechs
    kernel = KernelConfig(
        name="linux-7.3" if s4 else ("linux-6.8" if nsr else "linux-6.1"),
        pm_no_reset=nsr or s4,  # 6.8+ behaviour (7.3 includes it)
        suspend_bit=Mechanism.SUSPEND_BIT in mechs,
        freeze_mode=Mechanism.FREEZE_MODE in mechs,
        freeze_mode_bit=freeze_mode_bit,
    )
    if s4:
        gpu = GpuDriverKind.S4_REPLAY
    elif Mechanism.GPU_FREEZING in mechs:
        gpu = GpuDriverKind.FREEZING
    elif Mechanism.FREEZE_MODE in mechs:
        gpu = GpuDriverKind.BASIC_HOOKS
    else:
        gpu = GpuDriverKind.NO_HOOKS
    if kernel.suspend_bit:
        kernel = KernelConfig(**{**kernel.__dict__, "name": kernel.name + "+suspend"})
    return Profile(
        name="+".join(m.value for m in Mechanism if m in mechs),
        mechanisms=frozenset(mechs),
        pcie_port=nsr,
        no_soft_reset=nsr,
        freeze_mode=Mechanism.FREEZE_MODE in mechs,
        gpu_offers_freezing=Mechanism.GPU_FREEZING in mechs,
        kernel=kernel,
        gpu_driver=gpu,
    )

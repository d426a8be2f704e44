"""The scenario's workload: what the guest has on screen and in flight when it goes to sleep.

Contract: :class:`ScenarioConfig` is a frozen value (it is stored in S4 image headers and in report.json's
``meta``); :meth:`ScenarioConfig.validate` is its only check and fails with one line naming the option. It
bounds every field, including those no CLI option sets (an image header sets them all): the CLI's option
ranges (:data:`SEED_MAX`, ...) are these bounds, so an accepted option never fails later.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtio.clock import MS
from pyvirtio.errors import UserInputError
from pyvirtio.machine import MachineType

MIB = 1 << 20
#: Largest ``--seed``: the entropy source hashes the seed as 8 bytes.
SEED_MAX = (1 << 64) - 1
#: Largest ``--resource-size``, and of ``--resources`` x ``--resource-size``.
RESOURCE_SIZE_MAX = 256 * MIB
RESOURCES_BYTES_MAX = 4 << 30
#: Scanout size bounds of the workload (not CLI options; an image header carries them).
SCANOUT_DIM = (16, 4096)
#: rng requests in flight at suspend time (the rng queue has 64 descriptors).
INFLIGHT_MAX = 64
#: Longest sleep, in virtual ns (one hour).
SLEEP_TIME_MAX = 3600 * 1000 * MS
#: The machine types: the values of :class:`~pyvirtio.machine.MachineType`.
MACHINE_TYPES = tuple(m.value for m in MachineType)


@dataclass(frozen=True)
class ScenarioConfig:
    """The desktop and workload every cell of the matrix runs: scanouts, resources, rng requests in flight."""

    scanouts: int = 2
    width: int = 320
    height: int = 200
    resources: int = 4  # extra GPU resources besides the framebuffers and the cursor
    resource_size: int = 256 << 10  # bytes each
    seed: int = 0
    machine_type: str = "q35"
    inflight: int = 2  # rng requests in flight at suspend time
    sleep_time: int = 1000 * MS
    #: virtio-rng behind the profile's PCIe port (with its No_Soft_Reset) like the gpu (the matrix), or on the root
    #: bus whatever the profile (the second real stack keeps rng on pcie.0 unless asked: see ``vm run
    #: --rng-behind-port`` and the README's s2idle finding)
    rng_behind_port: bool = True
    #: the gpu behind a PCIe root port (without No_Soft_Reset unless the profile has it) even when the profile does
    #: not need one, as on the second real stack; q35 only
    gpu_behind_port: bool = False

    def memory_size(self) -> int:
        """Guest RAM for the workload: framebuffers, cursor and resources plus 32 MiB, a power of two >= 64 MiB."""
        fb = self.scanouts * self.width * self.height * 4 + 64 * 64 * 4
        need = fb + self.resources * (self.resource_size + 4096) + 32 * MIB
        return max(64 * MIB, 1 << (need - 1).bit_length())

    def memory_layout(self) -> list[tuple[int, int]]:
        """Guest RAM of the machine this workload runs on, as ``(base, size)`` regions: ``Machine(memory_size())``
        has one region at guest-physical 0."""
        return [(0, self.memory_size())]

    def validate(self) -> None:
        """One-line :class:`UserInputError` naming the option (or field) when the workload is out of range.
        Every field must be an int (not a bool), ``machine_type`` one of :data:`MACHINE_TYPES`."""
        for name in ("scanouts", "width", "height", "resources", "resource_size", "seed", "inflight", "sleep_time"):
            if type(getattr(self, name)) is not int:
                raise UserInputError(f"{name} must be an integer")
        if not 1 <= self.scanouts <= 15:
            raise UserInputError("--scanouts must be 1..15 (one more is hot-plugged while asleep)")
        if self.resources < 0 or self.resource_size <= 0:
            raise UserInputError("--resources must be >= 0 and --resource-size > 0")
        if self.resource_size > RESOURCE_SIZE_MAX or self.resources * self.resource_size > RESOURCES_BYTES_MAX:
            raise UserInputError("--resource-size must be <= 256M and --resources x --resource-size <= 4G")
        lo, hi = SCANOUT_DIM
        if not (lo <= self.width <= hi and lo <= self.height <= hi):
            raise UserInputError(f"--width/--height must be {lo}..{hi}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UserInputError("--seed must be 0..2^64-1")
        if self.machine_type not in MACHINE_TYPES:
            raise UserInputError(f"machine type must be one of {', '.join(MACHINE_TYPES)}")
        if not 0 <= self.inflight <= INFLIGHT_MAX:
            raise UserInputError(f"inflight must be 0..{INFLIGHT_MAX}")
        if self.gpu_behind_port and self.machine_type != MachineType.Q35.value:
            raise UserInputError("a gpu behind a PCIe root port needs machine type q35")
        if not 0 <= self.sleep_time <= SLEEP_TIME_MAX:
            raise UserInputError("sleep_time must be 0..3600 s")

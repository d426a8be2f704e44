"""The scenario's workload: what the guest has on screen and in flight when it goes to sleep.

Contract: :class:`ScenarioConfig` is a frozen value (it is stored in S4 image headers and in report.json's
``meta``); :meth:`ScenarioConfig.validate` is its only check and fails with one line naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtio.clock import MS
from pyvirtio.errors import UserInputError

MIB = 1 << 20


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

    def memory_size(self) -> int:
        """Guest RAM for the workload: framebuffers, cursor and resources plus 32 MiB, a power of two >= 64 MiB."""
        fb = self.scanouts * self.width * self.height * 4 + 64 * 64 * 4
        need = fb + self.resources * (self.resource_size + 4096) + 32 * MIB
        return max(64 * MIB, 1 << (need - 1).bit_length())

    def validate(self) -> None:
        """One-line :class:`UserInputError` naming the option when the workload is out of range."""
        if not 1 <= self.scanouts <= 15:
            raise UserInputError("--scanouts must be 1..15 (one more is hot-plugged while asleep)")
        if self.resources < 0 or self.resource_size <= 0:
            raise UserInputError("--resources must be >= 0 and --resource-size > 0")
        if self.resource_size > 256 << 20 or self.resources * self.resource_size > 4 << 30:
            raise UserInputError("--resource-size must be <= 256M and --resources x --resource-size <= 4G")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise UserInputError("--width/--height must be 16..4096")

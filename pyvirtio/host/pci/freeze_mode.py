"""Device side of the 2023 ``freeze_mode`` proposal (Jiqian Chen, v5), as its reviewers required it (reference §2.9).

* ``le16 freeze_mode`` at the END of the common config (offset 64), so no existing offset moves;
* a feature bit: the spec never assigned one, so pyvirtio uses a configurable bit from the "future extensions"
  range 44..49 (:func:`check_freeze_mode_bit`), 44 by default
  (:data:`~pyvirtio.spec.constants.FREEZE_MODE_FEATURE_DEFAULT`) — NOT a spec number;
* defined values UNFREEZE = 0 and FREEZE_S3 = 3 (others ignored);
* a request/response handshake: the driver writes the mode, then polls the field until the device reports the
  mode reached, because freezing gigabytes of device state takes time (Parav Pandit's objection). The device
  reads back the *previous* mode until it is done; writing the mode it reports withdraws a change still under
  way (a driver that timed out waiting for FREEZE_S3 writes UNFREEZE at restore).

While FREEZE_S3 is reached, a reset (the driver's, or the machine's on S3 wake) keeps the device-type state
(virtio-gpu resources); the virtio transport state (status, queues, vectors) is still reset.

Contract. A function plugged with ``PciOptions(freeze_mode_bit=N)`` builds its :class:`FreezeModeDevice` itself
and offers bit ``N`` from the start (``fn.freeze_mode``); nothing is patched after construction.
"""

from __future__ import annotations

from typing import Protocol

from pyvirtio.clock import US, S
from pyvirtio.host.context import DeviceScheduler, DeviceTrace
from pyvirtio.host.device import VirtioDevice
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_BITS, FREEZE_MODE_FEATURE_DEFAULT, FreezeMode, bit
from pyvirtio.trace import Kind

#: device-side freeze bandwidth: how fast the device can make its state persistent across a reset
FREEZE_BYTES_PER_S = 4 << 30


def check_freeze_mode_bit(feature_bit: int) -> int:
    """``feature_bit`` if it lies in :data:`~pyvirtio.spec.constants.FREEZE_MODE_FEATURE_BITS` (unassigned bits of
    virtio 1.4 §6), else ValueError. The one place of this check (the PM profiles turn it into a user error)."""
    if feature_bit not in FREEZE_MODE_FEATURE_BITS:
        lo, hi = FREEZE_MODE_FEATURE_BITS.start, FREEZE_MODE_FEATURE_BITS.stop - 1
        raise ValueError(f"the freeze_mode feature bit must come from the unassigned range {lo}..{hi}")
    return feature_bit


class _Options(Protocol):
    @property
    def freeze_mode_bit(self) -> int | None:
        """The bit the function offers for the field (None: no field)."""


class FreezeModeHost(Protocol):
    """What the handshake uses of its function (a :class:`~pyvirtio.host.pci.function.VirtioPciFunction`)."""

    freeze_mode: FreezeModeDevice | None

    @property
    def name(self) -> str:
        """The function's (and its device's) name, for the trace."""

    @property
    def device(self) -> VirtioDevice:
        """The device behind the function."""

    @property
    def scheduler(self) -> DeviceScheduler:
        """The clock the handshake takes time on."""

    @property
    def trace(self) -> DeviceTrace:
        """Where the handshake records the mode reached."""

    @property
    def options(self) -> _Options:
        """How the function was plugged."""


class FreezeModeDevice:
    """Device side of the handshake for one function (``fn.freeze_mode``).

    Built by :class:`~pyvirtio.host.pci.function.VirtioPciFunction` from its options
    (``machine.plug(dev, freeze_mode_bit=N)``); nobody builds one after plugging.
    """

    def __init__(self, fn: FreezeModeHost, *, feature_bit: int = FREEZE_MODE_FEATURE_DEFAULT,
                 bytes_per_s: int = FREEZE_BYTES_PER_S) -> None:
        check_freeze_mode_bit(feature_bit)
        if fn.options.freeze_mode_bit is None:
            raise ValueError("plug the device with freeze_mode=True to expose offset 64")
        if feature_bit != fn.options.freeze_mode_bit:
            raise ValueError(f"the function offers freeze_mode bit {fn.options.freeze_mode_bit}, not {feature_bit}: "
                             f"plug it with freeze_mode_bit={feature_bit}")
        self.fn = fn
        self.feature_bit = feature_bit
        self.bytes_per_s = bytes_per_s
        self.mode = int(FreezeMode.UNFREEZE)  # the mode reached, what reads return
        self._pending: int | None = None

    def read_freeze_mode(self) -> int:
        """The mode reached (the previous one while a change is under way)."""
        return self.mode

    def write_freeze_mode(self, value: int) -> None:
        """A driver request: ignored (a violation) without the feature or for an undefined value."""
        dev = self.fn.device
        if not dev.driver_features & bit(self.feature_bit):
            dev.violation("freeze_mode: written without the feature negotiated", value=value)
            return
        if value not in (FreezeMode.UNFREEZE, FreezeMode.FREEZE_S3):
            dev.violation("freeze_mode: undefined value", value=value)
            return
        if value == self._pending:
            return
        if value == self.mode:
            # A request for the mode already reached withdraws the change still under way (a driver that gave up
            # waiting for FREEZE_S3 and froze plainly writes UNFREEZE at restore): that change never completes.
            if self._pending is not None:
                self._pending = None
                self.fn.trace.record(Kind.PM, self.fn.name, event="freeze_mode_withdrawn", mode=value)
            return
        self._pending = value
        cost = 50 * US
        if value == FreezeMode.FREEZE_S3:
            cost += dev.state_bytes() * S // self.bytes_per_s
        # Not dev.after(): a reset must not cancel the handshake (the mode outlives resets by design).
        self.fn.scheduler.schedule(cost, lambda: self._reach(value), label=f"{dev.name}:freeze_mode")

    def _reach(self, value: int) -> None:
        if self._pending != value:
            return
        self._pending = None
        self.mode = value
        self.fn.device.retain_state_on_reset = value == FreezeMode.FREEZE_S3
        self.fn.trace.record(Kind.PM, self.fn.name, event="freeze_mode", mode=value)


__all__ = ["FREEZE_BYTES_PER_S", "FreezeModeDevice", "FreezeModeHost", "check_freeze_mode_bit"]

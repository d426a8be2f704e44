"""Typed errors. Devices turn guest-caused errors into the spec's answer; they never escape a device."""

from __future__ import annotations


class PyvirtioError(Exception):
    """Base of every pyvirtio error."""


class GuestMemoryError(PyvirtioError):
    """A guest-physical access that misses guest RAM or crosses a region boundary."""

    def __init__(self, addr: int, size: int, why: str = "outside guest memory") -> None:
        super().__init__(f"guest access [{addr:#x}, +{size:#x}) {why}")
        self.addr = addr
        self.size = size


class QueueError(PyvirtioError):
    """A guest-controlled virtqueue structure is invalid (bad chain, bad index, bad address)."""


class InvalidStateError(PyvirtioError):
    """Restored plain-data state (queue, device, image) failed re-validation."""


class DriverError(PyvirtioError):
    """A guest driver operation failed (device refused features, timed out, needs reset)."""


class DriverTimeout(DriverError):
    """A driver waited on the device longer than its time-out (Linux: -ETIMEDOUT)."""


class UserInputError(PyvirtioError):
    """A problem with user input (CLI option, image or snapshot file): shown as one line, exit non-zero."""

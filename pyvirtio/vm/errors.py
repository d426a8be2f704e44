"""Errors raised by the real-VM harness. All are one-line, user-facing messages."""

from __future__ import annotations

from pyvirtio.errors import PyvirtioError, UserInputError


class VmError(PyvirtioError):
    """The real VM failed: QEMU died, the guest did not answer in time, a probe could not run."""


class ProvisionError(VmError, UserInputError):
    """Something the VM needs (QEMU, guest kernel, busybox) is missing and could not be provisioned."""


class GuestTimeout(VmError):
    """The guest (or QEMU) did not reach an expected point within its time-out."""

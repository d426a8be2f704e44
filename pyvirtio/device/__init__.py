"""Device side: the generic virtio device core."""

from pyvirtio.device.core import Faults, VirtioDevice

__all__ = ["Faults", "VirtioDevice"]

"""Device models."""

from pyvirtio.devices.gpu import Gpu as Gpu
from pyvirtio.devices.rng import Rng
from pyvirtio.devices.testdev import TestDevice

__all__ = ["Rng", "TestDevice"]

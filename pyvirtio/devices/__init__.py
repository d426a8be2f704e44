"""Device models."""

from pyvirtio.devices.rng import Rng
from pyvirtio.devices.testdev import TestDevice

__all__ = ["Rng", "TestDevice"]

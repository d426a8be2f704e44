"""The public device models, under the names tools outside the project use (they live in :mod:`pyvirtio.host`)."""

from pyvirtio.host.gpu import Gpu
from pyvirtio.host.rng import Rng
from pyvirtio.host.testdev import TestDevice

__all__ = ["Gpu", "Rng", "TestDevice"]

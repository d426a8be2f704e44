"""Conformance checkers that sit on an interface and judge one side of it against virtio 1.4.

:mod:`pyvirtio.conformance.driver_monitor` wraps a PCI function's four accessors and records every driver-side
violation visible at register level. The package imports only the spec layer and the ground, so it can be put
around any function: pyvirtio's model, a vhost-user frontend, a recording replayed from a real VM.
"""

from pyvirtio.conformance.driver_monitor import DriverMonitor, Rule, Violation

__all__ = ["DriverMonitor", "Rule", "Violation"]

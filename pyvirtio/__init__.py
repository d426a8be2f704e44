"""pyvirtio: virtio devices, guest drivers and transports in Python, built for device power management.

Public API (tools outside the project depend on these names):

* :class:`pyvirtio.Machine` — ``machine.memory`` (``read``/``write``), ``machine.plug(device) -> function`` with
  ``config_read/config_write/bar_read/bar_write``, ``machine.run_until(predicate, timeout)``,
  ``machine.interrupts`` (delivered interrupts) and ``machine.trace``.
* :mod:`pyvirtio.devices` — ``Rng`` (virtio-rng), ``Gpu`` (virtio-gpu), ``TestDevice``.
"""

from pyvirtio.machine import Interrupt, Machine, MachineType

__all__ = ["Interrupt", "Machine", "MachineType"]
__version__ = "0.1.0"

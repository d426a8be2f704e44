"""The guest half: what a guest kernel implements — the virtio-pci transport, the driver core, the drivers and
the kernel's PM core. Nothing here imports :mod:`pyvirtio.host`: drivers reach a device only through the four
PCI accessors (``config_read/config_write/bar_read/bar_write``) and a platform (clock, interrupts).

* :mod:`~pyvirtio.guest.transport` — the :class:`Transport` protocol, :class:`PciTransport`, the capability walk;
* :mod:`~pyvirtio.guest.driver` — :class:`VirtioDriver`: the init sequence once, freeze/restore, Device Suspend,
  queue reset; the phase state machine that says what the driver may do when;
* :mod:`~pyvirtio.guest.rng`, :mod:`~pyvirtio.guest.gpu` — device drivers;
* :mod:`~pyvirtio.guest.kernel`, :mod:`~pyvirtio.guest.freeze_mode` — the guest kernel's PM core;
* :mod:`~pyvirtio.guest.fake` — the test seam: a PCI function of bytes and a platform with a virtual clock, so
  driver tests need no device model (pyvirtio's drivers are also run under
  :class:`pyvirtio.conformance.driver_monitor.DriverMonitor`, which checks every access against the driver
  statements).
"""

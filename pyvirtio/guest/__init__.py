"""The guest half: what a guest kernel implements — the virtio-pci transport, the driver core, the drivers and
the kernel's PM core. Nothing here imports :mod:`pyvirtio.host`: drivers reach a device only through the four
PCI accessors (``config_read/config_write/bar_read/bar_write``) and a platform (clock, interrupts).
"""

"""The virtio PCI transport, device side (virtio 1.4 §4.1).

:mod:`~pyvirtio.host.pci.function` (config space, BAR routing, notify, resets), :mod:`~pyvirtio.host.pci.common_cfg`
(the common-config registers), :mod:`~pyvirtio.host.pci.msix` (MSI-X), :mod:`~pyvirtio.host.pci.configspace`
(bytes, masks, capability list) and :mod:`~pyvirtio.host.pci.freeze_mode` (the 2023 freeze_mode field).
"""

"""The host half: what a VMM implements — the device core, the device models and the virtio-pci function.

Nothing here knows about guest drivers; devices see guest memory, queues, interrupts and a clock only through
the :class:`~pyvirtio.host.context.DeviceContext` their transport gives them.
"""

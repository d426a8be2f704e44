"""The host half: what a VMM implements — the device core, the device models and the virtio-pci function.

* :mod:`~pyvirtio.host.device` the device core (features, status, reset, Device Suspend, queues' service);
  :mod:`~pyvirtio.host.lifecycle` its lifecycle as a transition table; :mod:`~pyvirtio.host.context` what a
  transport gives a device;
* the device models :mod:`~pyvirtio.host.rng`, :mod:`~pyvirtio.host.testdev` and :mod:`pyvirtio.host.gpu`;
* :mod:`pyvirtio.host.pci` the virtio-pci function (one transport among possible others).

Nothing here knows about guest drivers; devices see guest memory, queues, notifications and a clock only through
the :class:`~pyvirtio.host.context.DeviceContext` their transport gives them, so the device core and the models
import nothing of :mod:`pyvirtio.host.pci` (a test checks it).
"""

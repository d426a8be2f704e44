"""A real Linux kernel drives pyvirtio's PCI functions: User-Mode Linux with PCI over virtio.

UML's ``virt-pci`` driver sends every configuration and BAR access of its PCI bus over a vhost-user socket per
slot; pyvirtio serves those sockets (:mod:`~pyvirtio.uml.bridge`) with its own virtio-pci functions, so the real
PCI core, ``virtio_pci``, ``virtio_rng`` and ``virtio_gpu`` and the real PM core drive pyvirtio's config space,
capabilities, common config, MSI-X and PM capability. Under ``time-travel=ext`` pyvirtio's scheduler is the
kernel's calendar (:mod:`~pyvirtio.uml.calendar`): the run is deterministic.

Modules, one concept each: :mod:`~pyvirtio.uml.wire` (the PCI-over-virtio messages), :mod:`~pyvirtio.uml.calendar`
(the time-travel protocol), :mod:`~pyvirtio.uml.carrier` (the virtio device of one slot),
:mod:`~pyvirtio.uml.platform` (the machine: the kernel's memory, MSI delivery), :mod:`~pyvirtio.uml.bridge`
(sockets, the loop, real time or time travel), :mod:`~pyvirtio.uml.runner` (one run of the kernel),
:mod:`~pyvirtio.uml.regtrace` (register traces decoded and compared), :mod:`~pyvirtio.uml.scenarios` (what the
guest does and what is checked), :mod:`~pyvirtio.uml.model` (pyvirtio's model driver on the same devices),
:mod:`~pyvirtio.uml.suspend` (the SUSPEND bit's scenarios, on our patched kernel), :mod:`~pyvirtio.uml.catalog`
(every scenario and the kernel build it runs).
"""

from __future__ import annotations

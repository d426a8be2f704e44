"""pyvirtio's device models served to a real VM over vhost-user (QEMU ``docs/interop/vhost-user.rst``).

The models run unchanged behind a vhost-user connection instead of the machine's virtio-pci function, on real
time, with the real guest driver in the loop, checked by a conformance monitor and open to fault injection::

    from pyvirtio.vhost_user import serve
    serve("rng", "/tmp/rng.sock", seed=7, once=True, report="report.json")
    serve("gpu", "/tmp/gpu.sock", once=True, faults=("error=RESOURCE_FLUSH",))

Modules, one concept each: :mod:`~pyvirtio.vhost_user.messages` (wire format, parser),
:mod:`~pyvirtio.vhost_user.memory` (regions mapped from the front-end's descriptors),
:mod:`~pyvirtio.vhost_user.rings` (vring states as data), :mod:`~pyvirtio.vhost_user.transport` (the device
context and the driver's side of the device core), :mod:`~pyvirtio.vhost_user.backend` (one connection's
protocol state machine), :mod:`~pyvirtio.vhost_user.loop` (real-time scheduler and event loop),
:mod:`~pyvirtio.vhost_user.monitor` (violations with their statements), :mod:`~pyvirtio.vhost_user.faults`
(fault injection), :mod:`~pyvirtio.vhost_user.catalog` (what can be served), :mod:`~pyvirtio.vhost_user.extension`
(a device's own messages), :mod:`~pyvirtio.vhost_user.server` (the socket, one client at a time, the report); for
virtio-gpu: :mod:`~pyvirtio.vhost_user.served_gpu` (the model as served), :mod:`~pyvirtio.vhost_user.gpu_protocol`
(the display socket's wire format), :mod:`~pyvirtio.vhost_user.gpu_channel` (one display socket, never blocking),
:mod:`~pyvirtio.vhost_user.gpu_display` (``GPU_SET_SOCKET`` and the display driven from the model's scanouts).
"""

from __future__ import annotations

from pyvirtio.vhost_user.catalog import SERVABLE, ServeSpec
from pyvirtio.vhost_user.faults import FaultPlan, parse_fault
from pyvirtio.vhost_user.server import Server, serve

__all__ = ["SERVABLE", "FaultPlan", "ServeSpec", "Server", "parse_fault", "serve"]

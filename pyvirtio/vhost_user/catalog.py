"""What pyvirtio can serve over vhost-user: one literal table, one entry per device type.

Contract. A :class:`ServeSpec` says how to build the device model (unchanged: the same class the virtio-pci
machine plugs), what stopping every ring means for its state (:class:`~pyvirtio.vhost_user.transport.StopPolicy`),
which ``--fault`` names it accepts, what it reports at the end of a connection, and, for a device whose
vhost-user protocol has messages of its own (virtio-gpu's ``GPU_SET_SOCKET`` and display socket), a factory for
an :class:`Extension` that handles them. Adding a device is adding an entry to :data:`SERVABLE`; nothing is
registered at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.rng import Rng
from pyvirtio.vhost_user.extension import Extension, ExtensionHost, Readers
from pyvirtio.vhost_user.gpu_display import GpuDisplayFactory
from pyvirtio.vhost_user.served_gpu import gpu_stats, make_served_gpu
from pyvirtio.vhost_user.transport import StopPolicy

Log = Callable[[str], None]

#: Faults every device model supports through the core's switches.
GENERIC_FAULTS = frozenset({"delay", "hang-after", "hang-on-sigusr2", "needs-reset-after", "quiesce-never-ends",
                            "suspend-fails", "resume-fails"})


#: Served devices answer as fast as the host can: the model's modelled processing time (``latency``, the rng's
#: ``bytes_per_us``) is for the virtual-time experiments; ``--fault delay=MS`` slows a served device on purpose.
SERVED_LATENCY = 0
_FAST = 1 << 30


def _rng(seed: int) -> VirtioDevice:
    return Rng("rng", seed=seed, latency=SERVED_LATENCY, bytes_per_us=_FAST)


def _rng_stats(device: VirtioDevice) -> dict[str, Any]:
    return {"bytes_served": device.served} if isinstance(device, Rng) else {}


@dataclass(frozen=True)
class ServeSpec:
    """How to serve one device type (see the module contract)."""

    name: str
    make: Callable[[int], VirtioDevice]  # seed -> a fresh model
    policy: StopPolicy
    faults: frozenset[str] = GENERIC_FAULTS
    stats: Callable[[VirtioDevice], dict[str, Any]] = field(default=lambda _d: {})
    extension: Callable[[ExtensionHost], Extension] | None = None
    description: str = ""


#: Every servable device, by the name ``pyvirtio serve <name>`` takes.
SERVABLE: Mapping[str, ServeSpec] = {
    "rng": ServeSpec("rng", _rng, StopPolicy.RESET, stats=_rng_stats,
                     description="virtio-rng (pyvirtio.host.rng.Rng): a seeded SHA-256 entropy stream"),
    # RESET, not KEEP: over vhost-user the guest's reset of the gpu shows only as every ring stopping (QEMU sends
    # no RESET_DEVICE), and the model loses its resources then, as the built-in device does; a VM stop/cont
    # loses them too (vhost-user-gpu blocks migration anyway).
    "gpu": ServeSpec("gpu", make_served_gpu, StopPolicy.RESET, faults=GENERIC_FAULTS | {"error"}, stats=gpu_stats,
                     extension=GpuDisplayFactory(),
                     description="virtio-gpu (pyvirtio.host.gpu.Gpu, 2D): its scanouts on the front-end's display"),
}


__all__ = ["GENERIC_FAULTS", "SERVABLE", "Extension", "ExtensionHost", "Readers", "ServeSpec"]  # the three
# extension types live in :mod:`pyvirtio.vhost_user.extension` and are re-exported here

"""virtio-gpu (device id 16): the device model, its command handlers, resources, displays and EDID.

:class:`Gpu` (:mod:`~pyvirtio.host.gpu.device`) is the public face; :mod:`~pyvirtio.host.gpu.freezing` adds the
2023 FREEZING command (``PmGpu``). The wire structs live in :mod:`pyvirtio.spec.gpu_wire`.
"""

from pyvirtio.host.gpu.device import Gpu
from pyvirtio.host.gpu.display import BlobFramebuffer, Cursor, Display, Rect, Scanout
from pyvirtio.host.gpu.resources import BlobInfo, Context, MemEntry, Resource

__all__ = [
    "BlobFramebuffer",
    "BlobInfo",
    "Context",
    "Cursor",
    "Display",
    "Gpu",
    "MemEntry",
    "Rect",
    "Resource",
    "Scanout",
]

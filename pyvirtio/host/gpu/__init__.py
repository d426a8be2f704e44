"""virtio-gpu (device id 16): the device model, its wire structs, resources, displays and EDID."""

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

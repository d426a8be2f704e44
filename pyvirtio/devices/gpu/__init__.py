"""virtio-gpu (device id 16): the device model, its wire structs, resources, displays and EDID."""

from pyvirtio.devices.gpu.device import Gpu
from pyvirtio.devices.gpu.display import BlobFramebuffer, Cursor, Display, Rect, Scanout
from pyvirtio.devices.gpu.resources import BlobInfo, Context, MemEntry, Resource

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

"""Names for feature bits, for printing."""

from __future__ import annotations

from pyvirtio.spec.constants import DeviceId, Feature, GpuFeature


def feature_names(device_id: int, features: int) -> list[str]:
    """Human names of the set bits of ``features`` for a device of type ``device_id``."""
    names: list[str] = []
    for n in range(64):
        if not features >> n & 1:
            continue
        name: str | None = None
        if n in Feature._value2member_map_:
            name = f"VIRTIO_F_{Feature(n).name}"
        elif device_id == DeviceId.GPU and n in GpuFeature._value2member_map_:
            name = f"VIRTIO_GPU_F_{GpuFeature(n).name}"
        names.append(name or f"bit{n}")
    return names

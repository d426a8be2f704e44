"""The common configuration structure of a virtio PCI function (virtio 1.4 §4.1.4.3), as a register file.

Contract. :class:`CommonConfig` holds the transport's own registers (feature and queue selectors, the config
and per-queue MSI-X vectors) and forwards the device's registers (features, status, generation, queue fields) to
the :class:`~pyvirtio.host.device.VirtioDevice`. Every field must be accessed at its natural width; anything else
reads 0 and writes nothing (a traced violation). Register values out of range get the spec's answer: a vector
the function cannot map reads back as NO_VECTOR (§4.1.5.1.2), a bad queue size is ignored (§2.7), queue fields
of an enabled queue are read-only (§4.1.4.3.2), queue_enable = 0 puts the device in DEVICE_NEEDS_RESET (QEMU).
A status write of 0 resets device and transport through the function's one reset path.

The optional ``freeze_mode`` field at offset 64 (the 2023 proposal) is served by a :class:`FreezeModeHandler`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pyvirtio.host.device import VirtioDevice
from pyvirtio.spec.constants import (
    COMMON_CFG_SIZE,
    COMMON_CFG_SIZE_WITH_FREEZE_MODE,
    COMMON_CFG_WIDTH,
    VIRTIO_MSI_NO_VECTOR,
    CommonCfg,
    Feature,
)
from pyvirtio.trace import Kind, Trace

#: The queue address registers: which DeviceQueue attribute each one sets, and which half.
_QUEUE_ADDRESS: dict[int, str] = {
    CommonCfg.QUEUE_DESC_LO: "desc_table", CommonCfg.QUEUE_DESC_HI: "desc_table",
    CommonCfg.QUEUE_DRIVER_LO: "avail_ring", CommonCfg.QUEUE_DRIVER_HI: "avail_ring",
    CommonCfg.QUEUE_DEVICE_LO: "used_ring", CommonCfg.QUEUE_DEVICE_HI: "used_ring",
}

#: Number of 32-bit feature words a driver can select (feature bits 0..255).
FEATURE_WORDS = 8


class FreezeModeHandler(Protocol):
    """Serves the common-config ``freeze_mode`` field at offset 64 (the 2023 proposal)."""

    def read_freeze_mode(self) -> int:
        """The value a driver reads (the mode reached)."""

    def write_freeze_mode(self, value: int) -> None:
        """A driver write of the field."""


class CommonConfig:
    """The common-config registers of one function. ``reset`` is the function's virtio reset (status 0)."""

    def __init__(self, device: VirtioDevice, *, nvectors: int, trace: Trace, reset: Callable[[], None],
                 freeze_mode: FreezeModeHandler | None = None) -> None:
        self.device = device
        self.nvectors = nvectors
        self.trace = trace
        self.name = device.name
        self.freeze_mode = freeze_mode
        self.size = COMMON_CFG_SIZE_WITH_FREEZE_MODE if freeze_mode is not None else COMMON_CFG_SIZE
        self._virtio_reset = reset
        self.reset()

    def reset(self) -> None:
        """Transport part of a virtio reset: selectors cleared, every vector unmapped (NO_VECTOR)."""
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        # spec: dev:pci/msix#7
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.device.queues)

    def queue_vector(self, index: int) -> int:
        """The MSI-X vector mapped to queue ``index`` (NO_VECTOR if none)."""
        return self.queue_vectors[index] if index < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR

    def _field_ok(self, off: int, size: int, write: bool) -> bool:
        width = COMMON_CFG_WIDTH.get(off)
        if width is None or width != size or off >= self.size:
            self.device.violation("§4.1.4.3.2 common config fields must be accessed at their natural width",
                                  offset=off, size=size, write=write)
            return False
        return True

    def _selected(self) -> int | None:
        q = self.queue_select
        return q if q < len(self.device.queues) else None

    def _vector(self, value: int) -> int:
        """§4.1.5.1.2: any event may be mapped to any table entry or unmapped (NO_VECTOR); only a vector beyond
        the table, which the function cannot map, is refused, and a refused mapping reads NO_VECTOR."""
        # spec: dev:pci/msix#4, dev:pci/msix#5, dev:pci/msix#8, dev:pci/msix#9
        return value if value < self.nvectors else VIRTIO_MSI_NO_VECTOR

    def read(self, off: int, size: int) -> int:
        """A driver read of the field at ``off`` (offset within the structure)."""
        if not self._field_ok(off, size, False):
            return 0
        d = self.device
        q = self._selected()
        dq = d.queues[q] if q is not None else None
        match off:
            case CommonCfg.DEVICE_FEATURE_SELECT:
                return self.device_feature_select
            case CommonCfg.DEVICE_FEATURE:  # spec: dev:pci/common-cfg#3 (0 for words beyond the offer)
                return (d.offered_features() >> (32 * self.device_feature_select)) & 0xFFFFFFFF \
                    if self.device_feature_select < FEATURE_WORDS else 0
            case CommonCfg.DRIVER_FEATURE_SELECT:
                return self.driver_feature_select
            case CommonCfg.DRIVER_FEATURE:  # spec: dev:pci/common-cfg#4 (what the driver wrote, per window)
                return (d.driver_features >> (32 * self.driver_feature_select)) & 0xFFFFFFFF \
                    if self.driver_feature_select < FEATURE_WORDS else 0
            case CommonCfg.CONFIG_MSIX_VECTOR:  # spec: dev:pci/msix#6
                return self.config_vector
            case CommonCfg.NUM_QUEUES:
                return len(d.queues)
            case CommonCfg.DEVICE_STATUS:
                return d.status
            case CommonCfg.CONFIG_GENERATION:  # spec: dev:pci/common-cfg#5 (never the value read last, if changed)
                return d.read_generation()
            case CommonCfg.QUEUE_SELECT:
                return self.queue_select
            case CommonCfg.QUEUE_SIZE:
                # spec: dev:pci/common-cfg#13 (0: no such queue), dev:pci/common-cfg#14 (a power of 2, set_size)
                return dq.size if dq else 0
            case CommonCfg.QUEUE_MSIX_VECTOR:  # spec: dev:pci/msix#6
                return self.queue_vectors[q] if q is not None else VIRTIO_MSI_NO_VECTOR
            case CommonCfg.QUEUE_ENABLE:  # spec: dev:pci/common-cfg#7 (a reset makes every queue non-ready)
                return int(dq.ready) if dq else 0
            case CommonCfg.QUEUE_NOTIFY_OFF:
                return q if q is not None else 0
            case CommonCfg.QUEUE_DESC_LO | CommonCfg.QUEUE_DRIVER_LO | CommonCfg.QUEUE_DEVICE_LO:
                return int(getattr(dq, _QUEUE_ADDRESS[off])) & 0xFFFFFFFF if dq else 0
            case CommonCfg.QUEUE_DESC_HI | CommonCfg.QUEUE_DRIVER_HI | CommonCfg.QUEUE_DEVICE_HI:
                return int(getattr(dq, _QUEUE_ADDRESS[off])) >> 32 if dq else 0
            case CommonCfg.QUEUE_RESET:  # 1 while the device is still cancelling the queue's work
                # A device reset and the end of a queue reset both empty the pending set; a queue cannot be enabled
                # while its reset is pending.
                # spec: dev:pci/common-cfg#8, dev:pci/common-cfg#9, dev:pci/common-cfg#11
                return int(d.queue_reset_pending(q)) if q is not None else 0
            case CommonCfg.FREEZE_MODE:
                return self.freeze_mode.read_freeze_mode() if self.freeze_mode else 0
            case _:  # queue_notif_config_data, admin queue fields (none)
                return 0

    def write(self, off: int, size: int, value: int) -> None:
        """A driver write of the field at ``off``; ``value`` is already masked to ``size`` bytes."""
        if not self._field_ok(off, size, True):
            return
        d = self.device
        q = self._selected()
        dq = d.queues[q] if q is not None else None
        match off:
            case CommonCfg.DEVICE_FEATURE_SELECT:
                self.device_feature_select = value
            case CommonCfg.DRIVER_FEATURE_SELECT:
                self.driver_feature_select = value
            case CommonCfg.DRIVER_FEATURE:
                if self.driver_feature_select < FEATURE_WORDS:
                    shift = 32 * self.driver_feature_select
                    d.set_driver_features((d.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift))
            case CommonCfg.CONFIG_MSIX_VECTOR:
                self.config_vector = self._vector(value)
            case CommonCfg.DEVICE_STATUS:
                if value == 0:
                    # spec: dev:pci/common-cfg#6 (synchronous: device_status reads 0 when the write returns)
                    self._virtio_reset()
                else:
                    d.write_status(value)
            case CommonCfg.QUEUE_SELECT:
                self.queue_select = value
            case CommonCfg.QUEUE_SIZE if dq is not None:
                if dq.ready:
                    d.violation("§4.1.4.3.2 queue_size written while the queue is enabled", queue=q)
                elif not dq.set_size(value):  # spec: dev:pci/common-cfg#14 (anything else is refused)
                    d.violation("§2.7 split queue size must be a power of 2 no larger than the maximum",
                                queue=q, value=value)
            case CommonCfg.QUEUE_MSIX_VECTOR if q is not None:
                self.queue_vectors[q] = self._vector(value)
            case CommonCfg.QUEUE_ENABLE if q is not None:
                self._queue_enable(q, value)
            case (CommonCfg.QUEUE_DESC_LO | CommonCfg.QUEUE_DESC_HI | CommonCfg.QUEUE_DRIVER_LO
                  | CommonCfg.QUEUE_DRIVER_HI | CommonCfg.QUEUE_DEVICE_LO | CommonCfg.QUEUE_DEVICE_HI) \
                    if dq is not None:
                if dq.ready:
                    d.violation("§4.1.4.3.2 queue addresses written while the queue is enabled", queue=q)
                    return
                attr = _QUEUE_ADDRESS[off]
                cur = getattr(dq, attr)
                # spec: dev:pci/layout#1 (each 32-bit half of a 64-bit field on its own)
                if off % 8 == 0:
                    setattr(dq, attr, (cur & ~0xFFFFFFFF) | value)
                else:
                    setattr(dq, attr, (cur & 0xFFFFFFFF) | (value << 32))
            case CommonCfg.QUEUE_RESET if q is not None:
                # spec: dev:pci/common-cfg#10, dev:pci/common-cfg#12 (the queue back to its defaults: not enabled)
                if value == 1 and d.negotiated(Feature.RING_RESET):
                    d.queue_reset(q)
                    self.trace.record(Kind.QUEUE, self.name, queue=q, event="reset")
            case CommonCfg.FREEZE_MODE if self.freeze_mode is not None:
                self.freeze_mode.write_freeze_mode(value)
            case _:
                d.violation("§4.1.4.3 write to a read-only common config field", offset=off, value=value)

    def _queue_enable(self, q: int, value: int) -> None:
        d = self.device
        dq = d.queues[q]
        if value != 1:
            # §4.1.4.3.2: the driver MUST NOT write 0 to queue_enable. QEMU answers with virtio_error.
            d.violation("§4.1.4.3.2 driver MUST NOT write 0 to queue_enable", queue=q)
            d.needs_reset("queue_enable written with 0")
            return
        if dq.ready:
            return
        if dq.size == 0:
            d.violation("§4.1.4.3.2 queue enabled with size 0", queue=q)
            return
        if d.enable_queue(q):
            self.trace.record(Kind.QUEUE, self.name, queue=q, event="enabled", size=dq.size, desc=dq.desc_table)


__all__ = ["CommonConfig", "FreezeModeHandler"]

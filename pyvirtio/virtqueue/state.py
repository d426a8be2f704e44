"""Plain-data snapshot of a device-side split virtqueue (rust-vmm ``virtio-queue`` ``QueueState`` style).

The state is *untrusted*: it may come from a file. It only becomes a queue through
:meth:`pyvirtio.virtqueue.device.DeviceQueue.from_state`, which calls :meth:`QueueState.validate` and so
re-applies every check the configuration setters and ``activate()`` make. Serialisation stays outside:
``dataclasses.asdict(state)`` is JSON-able and :meth:`QueueState.from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pyvirtio.errors import InvalidStateError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import VIRTQ_IDX_MASK, VIRTQ_MAX_SIZE
from pyvirtio.virtqueue.layout import RingLayout, is_valid_queue_size

__all__ = ["QueueState"]

_ADDR_LIMIT = 1 << 64
_LAYOUT_FIELD = {"size": "size", "desc": "desc_table", "avail": "avail_ring", "used": "used_ring"}


@dataclass
class QueueState:
    """Everything a device-side split queue needs to carry on after a snapshot/restore."""

    max_size: int
    size: int
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    next_avail: int
    next_used: int
    event_idx: bool
    indirect: bool
    signalled_used: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueState:
        """Build from ``dataclasses.asdict`` output (e.g. parsed JSON); rejects unknown or missing keys."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise InvalidStateError("queue state: expected an object")
        extra = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if extra or missing:
            raise InvalidStateError(f"queue state: unknown fields {extra}, missing fields {missing}")
        return cls(**data)

    def validate(self, mem: GuestMemory) -> None:
        """Raise :class:`InvalidStateError` naming the first bad field (virtio 1.4 §2.7, §2.7.6, §4.1.4.3)."""

        def bad(name: str, why: str) -> InvalidStateError:
            return InvalidStateError(f"queue state field {name!r} = {getattr(self, name)!r}: {why}")

        for name in (
            "max_size",
            "size",
            "desc_table",
            "avail_ring",
            "used_ring",
            "next_avail",
            "next_used",
            "signalled_used",
        ):
            v = getattr(self, name)
            if type(v) is not int:
                raise bad(name, "not an integer")
        for name in ("ready", "event_idx", "indirect"):
            if type(getattr(self, name)) is not bool:
                raise bad(name, "not a boolean")
        if not is_valid_queue_size(self.max_size):
            raise bad("max_size", f"not a power of 2 in 1..{VIRTQ_MAX_SIZE}")
        if self.size != 0 and not (is_valid_queue_size(self.size) and self.size <= self.max_size):
            raise bad("size", f"not 0 or a power of 2 <= max_size {self.max_size}")
        for name in ("desc_table", "avail_ring", "used_ring"):
            if not 0 <= getattr(self, name) < _ADDR_LIMIT:
                raise bad(name, "not a 64-bit guest address")
        for name in ("next_avail", "next_used", "signalled_used"):
            if not 0 <= getattr(self, name) <= VIRTQ_IDX_MASK:
                raise bad(name, "not a 16-bit ring index")
        in_flight = (self.next_avail - self.next_used) & VIRTQ_IDX_MASK
        if in_flight > self.size:
            raise bad("next_avail", f"{in_flight} chains in flight exceed queue size {self.size}")
        if self.ready:
            if self.size == 0:
                raise bad("size", "0 on a ready queue")
            layout = RingLayout(self.size, self.desc_table, self.avail_ring, self.used_ring)
            problem = layout.problem(mem)
            if problem is not None:
                attr, why = problem
                raise bad(_LAYOUT_FIELD[attr], why)

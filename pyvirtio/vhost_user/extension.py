"""What a device-specific extension of the vhost-user back-end sees and provides (its own messages, e.g.
virtio-gpu's ``GPU_SET_SOCKET``).

Contract. An :class:`Extension` serves the requests it lists, for one connection, and owns the descriptors of
each message it is handed; it may use only what its :class:`ExtensionHost` gives: the device model, the event
loop's descriptor watching (:class:`Readers`), the monitor, the log, the fault plan and the model's trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyvirtio.host.device import VirtioDevice
from pyvirtio.vhost_user.faults import FaultPlan
from pyvirtio.vhost_user.messages import Message, Request
from pyvirtio.vhost_user.monitor import Monitor
from pyvirtio.vhost_user.transport import MonitorTrace

Log = Callable[[str], None]


class Readers(Protocol):
    """The event loop's descriptor watching, as an extension sees it."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable."""

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""


@dataclass
class ExtensionHost:
    """What an extension may use: the device model, the event loop, the monitor, the log, the fault plan, and the
    model's trace (append to ``trace.listeners`` to follow what the model does, e.g. its scanouts)."""

    device: VirtioDevice
    readers: Readers
    monitor: Monitor
    log: Log
    plan: FaultPlan
    trace: MonitorTrace


class Extension(Protocol):
    """Device-specific vhost-user messages (e.g. virtio-gpu's ``GPU_SET_SOCKET``), for one connection."""

    requests: frozenset[Request]

    def handle(self, msg: Message) -> str | None:
        """Serve ``msg`` (one of :attr:`requests`): None, or the problem. The extension owns ``msg.fds``: it keeps
        or closes each one."""

    def close(self) -> None:
        """The connection ended: release every descriptor and reader."""


__all__ = ["Extension", "ExtensionHost", "Log", "Readers"]

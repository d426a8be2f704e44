"""What a transport gives a device: the whole of a device model's view of the outside world.

Contract. A :class:`~pyvirtio.host.device.VirtioDevice` reaches guest memory, time, the trace and the driver
only through a :class:`DeviceContext`. Every member is something any transport can provide:

* the virtio-pci function of the deterministic machine (:class:`~pyvirtio.host.pci.function.VirtioPciFunction`);
* a vhost-user backend: guest memory from the SET_MEM_TABLE regions, notifications as writes to the call
  eventfds (queue) and the backend request channel (config), a scheduler on real time;
* a test harness with no transport at all (``tests/host/test_any_transport.py``).

The scheduler may run on virtual time (:class:`~pyvirtio.clock.Scheduler`) or real time: a device only asks
for ``now``, for a callback ``delay`` ns later, and for a seeded random source.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from pyvirtio.memory import GuestMemory
from pyvirtio.trace import Kind


class Cancellable(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None:
        """Do not run the callback (no effect once it ran)."""


class DeviceScheduler(Protocol):
    """Time as a device sees it (ns), virtual or real."""

    @property
    def now(self) -> int:
        """The current time in ns."""

    @property
    def rng(self) -> random.Random:
        """A seeded random source (identifiers such as resource UUIDs), so virtual-time runs are reproducible."""

    def schedule(self, delay: int, callback: Callable[[], None], label: str = "") -> Cancellable:
        """Run ``callback`` ``delay`` ns from now (``delay`` >= 0); callbacks due at the same time run in order."""


class DeviceTrace(Protocol):
    """Where a device records what it did (status changes, violations, device events)."""

    def record(self, kind: Kind, src: str, /, **detail: object) -> None:
        """Append one event from ``src``."""


class DeviceContext(Protocol):
    """Everything a device may use: memory, scheduler, trace and its two kinds of notification (§2.3)."""

    @property
    def memory(self) -> GuestMemory:
        """Guest memory: where the virtqueues and every buffer live."""

    @property
    def scheduler(self) -> DeviceScheduler:
        """The clock and the device's way to do work later."""

    @property
    def trace(self) -> DeviceTrace:
        """The trace the device records into."""

    def notify_queue(self, index: int) -> None:
        """Send a used-buffer notification for queue ``index`` (suppression already decided by the device)."""

    def notify_config(self) -> None:
        """Send a configuration-change notification."""


__all__ = ["Cancellable", "DeviceContext", "DeviceScheduler", "DeviceTrace"]

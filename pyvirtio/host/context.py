"""What a transport gives a device: memory, the clock, the trace and its two kinds of notification."""

from __future__ import annotations

from typing import Protocol

from pyvirtio.clock import Scheduler
from pyvirtio.memory import GuestMemory
from pyvirtio.trace import Trace


class DeviceContext(Protocol):
    memory: GuestMemory
    scheduler: Scheduler
    trace: Trace

    def notify_queue(self, index: int) -> None:
        """Send a used-buffer notification for queue ``index`` (suppression already decided by the device)."""

    def notify_config(self) -> None:
        """Send a configuration-change notification."""

"""Guest virtio-rng driver, modelled on Linux ``drivers/char/hw_random/virtio-rng.c``.

``request(n)`` makes one buffer available and kicks; ``read(n)`` waits for it. ``.freeze`` resets the device and
deletes the queue (buffers in flight are abandoned, as Linux ``remove_common``); ``.restore`` re-creates it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtio.clock import MS
from pyvirtio.errors import DriverTimeout
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.spec.constants import DeviceId


@dataclass
class RngRequest:
    addr: int
    size: int
    done: bool = False
    data: bytes = b""


class RngDriver(VirtioDriver):
    device_id = DeviceId.ENTROPY
    queue_sizes = (None,)

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.outstanding: list[RngRequest] = []
        self.completed: list[RngRequest] = []
        self.lost: list[RngRequest] = []
        self.submitting = True

    def request(self, n: int) -> RngRequest:
        """Make one ``n``-byte buffer available to the device (non-blocking)."""
        if not self.submitting:
            raise RuntimeError(f"{self.name}: submissions are stopped")
        addr = self.alloc.alloc(n, 8)
        req = RngRequest(addr, n)
        self.vqs[0].add([], [(addr, n)], req)
        self.outstanding.append(req)
        self.kick(0)
        return req

    def read(self, n: int, timeout: int = 100 * MS) -> bytes:
        req = self.request(n)
        if not self.platform.run_until(lambda: req.done, timeout):
            raise DriverTimeout(f"{self.name}: no entropy within {timeout} ns")
        return req.data

    def vq_callback(self, index: int) -> None:
        if not self.vqs:
            return
        for token, length in self.vqs[0].drain_used():
            if not isinstance(token, RngRequest):
                continue  # a buffer somebody else put on our queue (tests do)
            token.data = self.alloc.mem.read(token.addr, min(length, token.size))
            token.done = True
            self.alloc.free(token.addr)
            self.outstanding.remove(token)
            self.completed.append(token)

    def driver_freeze(self) -> None:
        # Linux remove_common: reset (abandoning any request in flight), then delete the queue.
        self.t.reset()
        for vq in self.vqs:
            for token in vq.detach_unused():
                assert isinstance(token, RngRequest)
                self.outstanding.remove(token)
                self.alloc.free(token.addr)
                self.lost.append(token)
        self.del_vqs()

    def stop_submissions(self) -> None:
        self.submitting = False

    def start_submissions(self) -> None:
        self.submitting = True

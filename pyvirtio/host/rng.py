"""virtio-rng (device id 4, virtio 1.4 §5.4): one request queue, no config, no feature bits.

Entropy comes from a deterministic source (SHA-256 in counter mode over a seed), so runs are reproducible. A
request takes virtual time: ``latency`` plus ``len / rate`` — it stays in flight meanwhile, which is what lets the
SUSPEND tests see requests complete before SUSPEND shows.
"""

from __future__ import annotations

import functools
import hashlib

from pyvirtio.clock import US
from pyvirtio.host.device import VirtioDevice
from pyvirtio.spec.constants import RNG_REQUESTQ, DeviceId
from pyvirtio.virtqueue.chain import DescriptorChain


class EntropySource:
    """Deterministic byte stream: SHA-256(seed || counter) blocks."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._counter = 0
        self._buf = b""

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        while len(self._buf) < n:
            block = hashlib.sha256(self.seed.to_bytes(8, "little") + self._counter.to_bytes(8, "little")).digest()
            self._counter += 1
            self._buf += block
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class Rng(VirtioDevice):
    """The entropy device. ``bytes_per_us`` sets how fast requests complete in virtual time."""

    device_id = DeviceId.ENTROPY
    queue_sizes = (64,)
    #: largest chunk served per request (QEMU virtio-rng serves what the backend gives, often less than asked)
    MAX_CHUNK = 64 * 1024

    def __init__(self, name: str = "rng", *, seed: int = 0, bytes_per_us: int = 64, latency: int = 20 * US,
                 offer_suspend: bool = True) -> None:
        super().__init__(name, offer_suspend=offer_suspend, latency=latency)
        self.source = EntropySource(seed)
        self.bytes_per_us = max(1, bytes_per_us)
        self.served = 0

    def process_queue(self, index: int) -> None:
        """Take every request and fill it after ``latency + len / rate`` of virtual time (§5.4.6)."""
        if index != RNG_REQUESTQ:
            return
        while self.can_process():
            chain = self.pop(index)
            if chain is None:
                return
            # spec: dev:rng/operation#1 (one byte at least, up to MAX_CHUNK: possibly less than the buffer)
            n = min(chain.writable_len, self.MAX_CHUNK)
            if chain.readable:  # served all the same: only the writable part is written
                self.violation("§5.4.6.1 driver MUST NOT place device-readable buffers on the entropy queue",
                               head=chain.head)
            delay = self.latency + (n * US) // self.bytes_per_us
            self.after(delay, functools.partial(self._fill, chain, n), label="rng-fill", queue=index)

    def _fill(self, chain: DescriptorChain, n: int) -> None:
        if self.request_stuck():
            return  # the request is stuck in the backend forever
        written = chain.write(self.ctx.memory, self.source.read(n))
        self.served += written
        self.complete(RNG_REQUESTQ, chain, written)  # spec: dev:split/used#2 (bytes written, then used.idx)

"""A small test device with a device config space, for config-change and config-write tests.

Config (little-endian): ``le32 value`` @0 (host-controlled, read-only), ``le32 scratch`` @4 (driver-writable),
``le64 wide`` @8 (host-controlled). One queue that echoes: the readable bytes are copied to the writable part.
"""

from __future__ import annotations

import struct

from pyvirtio.clock import US
from pyvirtio.host.device import VirtioDevice
from pyvirtio.spec.constants import DeviceId

TESTDEV_CONFIG_SIZE = 16


class TestDevice(VirtioDevice):
    """The test device (id 0x3F): a 16-byte config and one echo queue."""

    device_id = DeviceId.TEST
    queue_sizes = (16,)
    __test__ = False  # not a pytest class

    def __init__(self, name: str = "testdev", *, offer_suspend: bool = True, latency: int = 10 * US) -> None:
        """A test device named ``name``; the keywords are :class:`VirtioDevice`'s."""
        super().__init__(name, offer_suspend=offer_suspend, latency=latency)
        self.config = bytearray(TESTDEV_CONFIG_SIZE)

    def config_size(self) -> int:
        """Sixteen bytes: value, scratch, wide."""
        return TESTDEV_CONFIG_SIZE

    def read_config(self, offset: int, size: int) -> int:
        """Little-endian bytes of the config."""
        # spec: dev:config-space#1 (readable in any state, before FEATURES_OK included)
        return int.from_bytes(self.config[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Only ``scratch`` (offset 4, 4 bytes) is writable; other writes are ignored."""
        if offset == 4 and size == 4:
            struct.pack_into("<I", self.config, 4, value)

    def host_set_value(self, value: int, wide: int | None = None) -> None:
        """A device-initiated config change (deferred while suspended)."""

        def apply() -> None:
            struct.pack_into("<I", self.config, 0, value)
            if wide is not None:
                struct.pack_into("<Q", self.config, 8, wide)

        self.config_change(apply)

    def process_queue(self, index: int) -> None:
        """Echo: copy each buffer's readable bytes into its writable part."""
        while self.can_process():
            chain = self.pop(index)
            if chain is None:
                return
            data = chain.read(self.ctx.memory)
            # spec: dev:split/used#2 (the echo is written, then used.idx)
            self.complete(index, chain, chain.write(self.ctx.memory, data))

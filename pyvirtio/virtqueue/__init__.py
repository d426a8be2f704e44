"""Split virtqueues (virtio 1.4 §2.7): device side, driver side, layout, chains and snapshot state.

The device side (:class:`DeviceQueue`) treats every ring byte as untrusted guest input; the driver side
(:class:`DriverQueue`) follows Linux ``virtio_ring`` and doubles as the test mock.
"""

from pyvirtio.virtqueue.chain import Descriptor, DescriptorChain
from pyvirtio.virtqueue.device import DeviceQueue
from pyvirtio.virtqueue.driver import DriverQueue, QueueFull
from pyvirtio.virtqueue.layout import RingLayout, avail_ring_size, desc_table_size, used_ring_size
from pyvirtio.virtqueue.state import QueueState

__all__ = [
    "Descriptor",
    "DescriptorChain",
    "DeviceQueue",
    "DriverQueue",
    "QueueFull",
    "QueueState",
    "RingLayout",
    "avail_ring_size",
    "desc_table_size",
    "used_ring_size",
]

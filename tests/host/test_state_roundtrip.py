"""One round-trip test per host class that snapshots state (issue 8 item 6; crosvm's suspendable tests:
``restore(snapshot(x)) == snapshot(x)`` after a real workload).

On the host side only the virtqueue saves state (:meth:`DeviceQueue.state` / :meth:`DeviceQueue.from_state`, a
rust-vmm ``QueueState``); the device models keep no snapshot (an S4 image carries guest state only). The queue's
own unit round trips are in ``tests/virtqueue``; here the queues are those of live devices after traffic, and the
restored queues must carry on serving the same driver.
"""

from __future__ import annotations

import dataclasses
import json

from pyvirtio.host.gpu import Gpu
from pyvirtio.host.rng import Rng
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GPU_CONTROLQ, RNG_REQUESTQ, GpuCmd
from pyvirtio.virtqueue import DeviceQueue, QueueState

from .loopback import LoopbackDriver


def _roundtrip(drv: LoopbackDriver) -> None:
    """Snapshot every queue of the device (through JSON, as a file would), restore, compare, swap in."""
    dev = drv.dev
    for i, q in enumerate(dev.queues):
        snap = q.state()
        data = json.loads(json.dumps(dataclasses.asdict(snap)))
        restored = DeviceQueue.from_state(drv.ctx.memory, QueueState(**data))
        assert restored.state() == snap
        dev.queues[i] = restored


def test_roundtrip_DeviceQueue() -> None:
    """QueueState of an rng request queue after wrap-around traffic (EVENT_IDX, indirect): the snapshot round
    trips exactly and the restored queue keeps serving in order (§2.7.13: next_avail / next_used carry on)."""
    drv = LoopbackDriver(Rng(seed=2, bytes_per_us=64))
    drv.init(queue_size=8)
    for i in range(21):  # more than twice the queue size: indices wrap in the ring
        drv.submit(RNG_REQUESTQ, b"", 16 + i, token=i)
        assert drv.wait_used(RNG_REQUESTQ) == (i, 16 + i)
    drv.submit(RNG_REQUESTQ, b"", 32, token="pending")  # one buffer available, not yet taken
    q = drv.dev.queues[RNG_REQUESTQ]
    assert q.state().next_avail == 21 and q.state().event_idx and q.state().indirect
    _roundtrip(drv)
    assert drv.wait_used(RNG_REQUESTQ) == ("pending", 32)
    drv.submit(RNG_REQUESTQ, b"", 8, token="after")
    assert drv.wait_used(RNG_REQUESTQ) == ("after", 8)
    assert drv.dev.queues[RNG_REQUESTQ].state().next_used == 23


def test_roundtrip_DeviceQueue_of_a_gpu() -> None:
    """The same for both gpu queues (controlq after commands, cursorq never used): identity, then service."""
    drv = LoopbackDriver(Gpu(width=64, height=64))
    drv.init()
    hdr = gpu_wire.HDR.pack(GpuCmd.GET_DISPLAY_INFO, 0, 0, 0, 0)
    for _ in range(5):
        drv.submit(GPU_CONTROLQ, hdr, 24 + 16 * 24)
        drv.wait_used(GPU_CONTROLQ)
    _roundtrip(drv)
    drv.submit(GPU_CONTROLQ, hdr, 24 + 16 * 24, token="next")
    assert drv.wait_used(GPU_CONTROLQ) == ("next", 24 + 16 * 24)

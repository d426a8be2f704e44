"""Guest virtio-rng driver (virtio 1.4 §5.4), modelled on Linux ``drivers/char/hw_random/virtio-rng.c``.

``request(n)`` makes one device-writable buffer available and kicks; ``read(n)`` waits for it. ``.freeze``
resets the device and deletes the queue (buffers in flight are abandoned, as Linux ``remove_common``);
``.restore`` re-creates it. The S4-image state is :class:`RngState`: the core :class:`DriverState` plus whether
submissions are allowed and the buffers in flight.

The hwrng core's fill thread (``hwrng_fillfn``, not freezable in Linux 6.x) is :meth:`RngDriver.fill`: it makes a
request and waits for it holding the core's ``reading_mutex``, so every later :meth:`RngDriver.read` waits behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar, Unpack

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.driver import (
    DriverOptions,
    DriverState,
    SubmissionsStopped,
    VirtioDriver,
    state_bool,
    state_error,
    state_fields,
)
from pyvirtio.guest.transport import PciFunctionAccess, Platform
from pyvirtio.spec.constants import DeviceId

__all__ = ["FILL_BYTES", "RngDriver", "RngRequest", "RngState"]

_ADDR_LIMIT = 1 << 64
#: What one round of the fill thread asks for: virtio-rng's buffer is one cache line (``SMP_CACHE_BYTES``).
FILL_BYTES = 64


@dataclass
class RngRequest:
    """One entropy request: a device-writable buffer of ``size`` bytes at guest address ``addr``."""

    addr: int
    size: int
    done: bool = False
    data: bytes = b""


@dataclass(frozen=True)
class RngState(DriverState):
    """:class:`DriverState` plus ``submitting`` and the requests in flight as ``(addr, size)`` buffers.

    :meth:`from_dict` checks shapes and ranges (positive sizes, 64-bit addresses, no overlap);
    :meth:`RngDriver.load_state` also checks that every buffer is a block of the driver's allocator.
    """

    submitting: bool
    outstanding: tuple[tuple[int, int], ...]

    WHAT: ClassVar[str] = "rng driver state"
    KEYS: ClassVar[tuple[str, ...]] = (*DriverState.KEYS, "submitting", "outstanding")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form: the :class:`DriverState` keys, ``submitting`` and ``outstanding: [[addr, size]]``."""
        return {**super().to_dict(), "submitting": self.submitting,
                "outstanding": [list(b) for b in self.outstanding]}

    @classmethod
    def from_dict(cls, data: object) -> RngState:
        """Parse :meth:`to_dict` output, rejecting unknown, missing or bad fields (:class:`InvalidStateError`)."""
        d = state_fields(cls.WHAT, data, cls.KEYS)
        core = cls.core_from_dict(d, strict=False)
        raw = d["outstanding"]
        if not isinstance(raw, list):
            raise state_error(cls.WHAT, "outstanding", raw, "not a list of [addr, size] buffers")
        bufs: list[tuple[int, int]] = []
        for i, item in enumerate(raw):
            name = f"outstanding[{i}]"
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(type(v) is int for v in item)):
                raise state_error(cls.WHAT, name, item, "not an [addr, size] pair of integers")
            addr, size = item
            if size <= 0 or addr < 0 or addr + size > _ADDR_LIMIT:
                raise state_error(cls.WHAT, name, item, "not a non-empty range of 64-bit guest addresses")
            bufs.append((addr, size))
        ordered = sorted(bufs)
        for (a, n), (b, _) in pairwise(ordered):
            if a + n > b:
                raise state_error(cls.WHAT, "outstanding", raw, f"buffers at {a:#x} and {b:#x} overlap")
        return cls(core.features, core.failed, core.config_change_pending, state_bool(cls.WHAT, d, "submitting"),
                   tuple(bufs))


class RngDriver(VirtioDriver):
    """The virtio-rng driver: one request queue (virtio 1.4 §5.4.2). It binds to the modern PCI id 0x1044 and to
    the transitional 0x1005 (§4.1.2.2; the transport maps both to device id 4)."""

    device_id = DeviceId.ENTROPY
    queue_sizes = (None,)

    def __init__(self, platform: Platform, fn: PciFunctionAccess | None, alloc: GuestAllocator,
                 **options: Unpack[DriverOptions]) -> None:
        super().__init__(platform, fn, alloc, **options)
        self.outstanding: list[RngRequest] = []
        self.completed: list[RngRequest] = []
        self.lost: list[RngRequest] = []
        self.filler: RngRequest | None = None  # the fill thread's request it waits for, holding reading_mutex

    def request(self, n: int) -> RngRequest:
        """Make one ``n``-byte buffer available, device-writable only, and kick (non-blocking, virtio 1.4
        §5.4.6.1: the driver MUST NOT place device-readable buffers on the queue).

        :class:`~pyvirtio.guest.driver.SubmissionsStopped` while submissions are stopped (Device Suspend: no new
        buffers while suspended); :class:`DriverError` when the queue is not set up (e.g. a FAILED device)."""
        if not self.submitting:
            raise SubmissionsStopped(f"{self.name}: submissions are stopped")
        if n <= 0:
            raise ValueError(f"{self.name}: a request needs at least one byte")
        addr = self.alloc.alloc(n, 8)
        req = RngRequest(addr, n)
        try:
            # spec: drv:rng/operation#1
            self.add_buffer(0, [], [(addr, n)], req)
        except BaseException:
            self.alloc.free(addr)
            raise
        self.outstanding.append(req)
        self.kick(0)
        return req

    def read(self, n: int, timeout: int = 100 * MS) -> bytes:
        """:meth:`request` ``n`` bytes and wait for them (:meth:`wait_for`): :class:`DriverTimeout` after
        ``timeout`` ns, :class:`~pyvirtio.guest.driver.DeviceNeedsReset` as soon as the device needs a reset.

        Reads are serialised (the hwrng core's ``reading_mutex``): while the fill thread waits for its request,
        a read waits for that one first and makes no request of its own until it completed."""
        filler = self.filler
        if filler is not None and filler.done is False and filler in self.outstanding:
            self.wait_for(lambda: filler.done, timeout,
                          "reading_mutex held by the hwrng fill thread, whose request never completed")
        self.filler = None
        req = self.request(n)
        self.wait_for(lambda: req.done, timeout, f"no entropy within {timeout} ns")
        return req.data

    def fill(self) -> RngRequest | None:
        """One round of the hwrng fill thread (``hwrng_fillfn`` -> ``virtio_read``): request :data:`FILL_BYTES`
        and wait for them, holding ``reading_mutex`` (:attr:`filler`). Returns the request, or ``None`` when the
        driver takes none: submissions stopped (a suspended device, Device Suspend) or no queue (a frozen
        driver, whose hwrng is unregistered)."""
        if self.filler is not None and not self.filler.done and self.filler in self.outstanding:
            return None  # still waiting for the previous one
        if not self.submitting or not self.vqs:
            return None
        self.filler = self.request(FILL_BYTES)
        return self.filler

    def vq_callback(self, index: int) -> None:
        """Reclaim used buffers: the used length is the number of random bytes received (§5.4.6.1), so exactly
        that many (at most the buffer size) are taken; the buffer is freed."""
        if not self.vqs:
            return
        for token, length in self.vqs[0].drain_used():
            if not isinstance(token, RngRequest):
                continue  # a buffer somebody else put on our queue (tests do)
            # spec: drv:rng/operation#2, drv:split/used#1
            token.data = self.alloc.mem.read(token.addr, min(length, token.size))
            token.done = True
            self.alloc.free(token.addr)
            self.outstanding.remove(token)
            self.completed.append(token)

    def reclaim_unused(self, token: object) -> None:
        """Linux ``remove_common``: a request in flight at freeze is abandoned (freed, counted as lost)."""
        if isinstance(token, RngRequest) and token in self.outstanding:
            self._abandon(token)

    def _abandon(self, req: RngRequest) -> None:
        self.outstanding.remove(req)
        self.alloc.free(req.addr)
        self.lost.append(req)

    def driver_restore(self) -> None:
        """``virtrng_restore``: requests still outstanding were made to the device before the image was taken
        (no queue holds them now), so they are abandoned as ``remove_common`` would have; then the queue is
        re-created."""
        for req in list(self.outstanding):
            self._abandon(req)
        super().driver_restore()


    # -- S4 image state ---------------------------------------------------------------------------------------

    def state(self) -> RngState:
        """The core driver state, ``submitting`` and the buffers of outstanding requests."""
        core = super().state()
        return RngState(core.features, core.failed, core.config_change_pending, self.submitting,
                        tuple((r.addr, r.size) for r in self.outstanding))

    def load_state(self, state: dict[str, object]) -> None:
        """Re-create the driver from an image: :class:`RngState` validated, and every outstanding buffer must be
        an allocated block of exactly its size in the driver's (restored) allocator."""
        st = RngState.from_dict(state)
        for i, (addr, size) in enumerate(st.outstanding):
            if self.alloc.allocation(addr) != size:
                raise state_error(RngState.WHAT, f"outstanding[{i}]", [addr, size],
                                  "not an allocated block of that size")
        self._apply_state(st)
        self.submitting = st.submitting
        self.outstanding = [RngRequest(addr, size) for addr, size in st.outstanding]

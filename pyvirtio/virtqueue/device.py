"""Device side of a split virtqueue (virtio 1.4 §2.7), modelled on rust-vmm ``virtio-queue`` ``Queue``.

Everything the driver writes is untrusted. Ring-level violations (available index moved by more than Queue
Size, a head index out of range, a ring outside guest memory) raise :class:`~pyvirtio.errors.QueueError`,
which the device core turns into DEVICE_NEEDS_RESET. Chain-level violations do not raise: the chain is
consumed and comes back with :attr:`DescriptorChain.error` set, so the device can return it with len 0 and go
on. Every guest access goes through :class:`~pyvirtio.memory.GuestMemory` after the address was checked, so
nothing outside guest RAM is ever touched.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pyvirtio.errors import GuestMemoryError, InvalidStateError, QueueError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    VIRTQ_AVAIL_ELEM_SIZE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_LEN_MAX,
    VIRTQ_DESC_SIZE,
    VIRTQ_IDX_MASK,
    VIRTQ_MAX_CHAIN_BYTES,
    VIRTQ_MAX_INDIRECT_ENTRIES,
    VIRTQ_RING_ENTRIES,
    VIRTQ_RING_FLAGS,
    VIRTQ_RING_IDX,
    VIRTQ_USED_ELEM_SIZE,
    VIRTQ_USED_F_NO_NOTIFY,
    DescFlag,
)
from pyvirtio.virtqueue.chain import DESC_STRUCT, DescriptorChain, Segment
from pyvirtio.virtqueue.layout import (
    RingLayout,
    avail_event_offset,
    avail_ring_size,
    desc_table_size,
    is_valid_queue_size,
    used_event_offset,
    used_ring_size,
)
from pyvirtio.virtqueue.state import QueueState

__all__ = ["DeviceQueue"]

_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_ADDR_LIMIT = 1 << 64

_F_NEXT = int(DescFlag.NEXT)
_F_WRITE = int(DescFlag.WRITE)
_F_INDIRECT = int(DescFlag.INDIRECT)
_F_SPECIAL = _F_NEXT | _F_INDIRECT
_M = VIRTQ_IDX_MASK
# bound methods of precompiled Structs: the hot path calls them directly on the ring buffers
_U16_UNPACK = _U16.unpack_from
_U16_PACK = _U16.pack_into
_USED_PACK = _USED_ELEM.pack_into
_DESC_UNPACK = DESC_STRUCT.unpack_from


class DeviceQueue:
    """One split virtqueue as the device sees it.

    The transport configures ``size`` (:meth:`set_size`), ``desc_table``, ``avail_ring``, ``used_ring``,
    ``event_idx`` and ``indirect`` while the queue is not ready, then calls :meth:`activate` (or sets
    ``ready = True``). Changing the configuration of a ready queue raises :class:`InvalidStateError`; call
    :meth:`reset` first (§4.1.4.3.2: the driver MUST configure the queue fields *before* enabling it; a
    later change is a driver violation for the transport to report).
    """

    def __init__(self, mem: GuestMemory, max_size: int) -> None:
        if not is_valid_queue_size(max_size):
            raise ValueError(f"max_size {max_size} is not a power of 2 in 1..32768")
        self.mem = mem
        self._max_size = max_size
        self.reset()

    # -- configuration

    def reset(self) -> None:
        """Back to the state after device reset (§2.4): size = max_size, addresses 0, not ready, indices 0."""
        self._size = self._max_size
        self._desc = 0
        self._avail = 0
        self._used = 0
        self._event_idx = False
        self._indirect = False
        self._ready = False
        self._next_avail = 0
        self._next_used = 0
        self._signalled_used = 0
        self._num_added = 0  # used entries pushed since the last needs_notification(); may exceed 0xFFFF
        self._shadow_avail = 0  # last avail.idx read from the ring
        self._notify = True
        self._cache()

    def _cache(self) -> None:
        n = self._size
        self._mask = n - 1 if n else 0
        self._avail_idx_addr = self._avail + VIRTQ_RING_IDX
        self._avail_entries = self._avail + VIRTQ_RING_ENTRIES
        self._used_idx_addr = self._used + VIRTQ_RING_IDX
        self._used_entries = self._used + VIRTQ_RING_ENTRIES
        self._used_event_addr = self._avail + used_event_offset(n)
        self._avail_event_addr = self._used + avail_event_offset(n)

    def _bind(self) -> None:
        """Resolve the three ring parts (already checked to lie inside guest memory) to their buffers once, so
        the hot path packs and unpacks at fixed offsets (:meth:`GuestMemory.locate`)."""
        mem, n = self.mem, self._size
        self._dbuf, self._doff = mem.locate(self._desc, desc_table_size(n))
        self._abuf, aoff = mem.locate(self._avail, avail_ring_size(n))
        self._ubuf, uoff = mem.locate(self._used, used_ring_size(n))
        self._aflags_off = aoff + VIRTQ_RING_FLAGS
        self._aidx_off = aoff + VIRTQ_RING_IDX
        self._aent_off = aoff + VIRTQ_RING_ENTRIES
        self._uevt_off = aoff + used_event_offset(n)
        self._uidx_off = uoff + VIRTQ_RING_IDX
        self._uent_off = uoff + VIRTQ_RING_ENTRIES
        self._aevt_off = uoff + avail_event_offset(n)
        # the region holding the descriptor table: a buffer inside it passes the bounds check with two compares
        # (anything else asks GuestMemory.contains, which decides as before)
        self._lo, self._hi, self._rbuf = 0, -1, self._dbuf
        for r in mem.regions:
            if r.base <= self._desc < r.end:
                self._lo, self._hi, self._rbuf = r.base, r.end, r.mm

    def _check_configurable(self, what: str) -> None:
        if self._ready:
            raise InvalidStateError(f"cannot change {what} of a ready queue; reset it first")

    @property
    def max_size(self) -> int:
        """The largest Queue Size the device offers (the reset value of ``size``)."""
        return self._max_size

    @property
    def size(self) -> int:
        """Queue Size as configured (0: queue unavailable); set it with :meth:`set_size`."""
        return self._size

    def set_size(self, n: int) -> bool:
        """Set Queue Size; False (and unchanged) unless 0 or a power of 2 <= max_size, or if ready (§2.7)."""
        if self._ready or not (n == 0 or (is_valid_queue_size(n) and n <= self._max_size)):
            return False
        self._size = n
        return True

    def _set_addr(self, what: str, value: int) -> int:
        self._check_configurable(what)
        if not 0 <= value < _ADDR_LIMIT:
            raise ValueError(f"{what} {value:#x} is not a 64-bit guest address")
        return value

    @property
    def desc_table(self) -> int:
        """Guest address of the Descriptor Area; set only while not ready (else InvalidStateError), to a u64."""
        return self._desc

    @desc_table.setter
    def desc_table(self, value: int) -> None:
        self._desc = self._set_addr("desc_table", value)

    @property
    def avail_ring(self) -> int:
        """Guest address of the Driver Area (available ring); set only while not ready, like :attr:`desc_table`."""
        return self._avail

    @avail_ring.setter
    def avail_ring(self, value: int) -> None:
        self._avail = self._set_addr("avail_ring", value)

    @property
    def used_ring(self) -> int:
        """Guest address of the Device Area (used ring); set only while not ready, like :attr:`desc_table`."""
        return self._used

    @used_ring.setter
    def used_ring(self, value: int) -> None:
        self._used = self._set_addr("used_ring", value)

    @property
    def event_idx(self) -> bool:
        """VIRTIO_F_EVENT_IDX negotiated (§2.7.7, §2.7.10)."""
        return self._event_idx

    @event_idx.setter
    def event_idx(self, value: bool) -> None:
        self._check_configurable("event_idx")
        self._event_idx = bool(value)

    @property
    def indirect(self) -> bool:
        """VIRTIO_F_INDIRECT_DESC negotiated (§2.7.5.3)."""
        return self._indirect

    @indirect.setter
    def indirect(self, value: bool) -> None:
        self._check_configurable("indirect")
        self._indirect = bool(value)

    @property
    def ready(self) -> bool:
        """Whether the queue is enabled; setting True calls :meth:`activate`, False disables it."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        if value:
            self.activate()
        else:
            self._ready = False

    @property
    def layout(self) -> RingLayout:
        """The configured size and ring addresses as a :class:`RingLayout`."""
        return RingLayout(self._size, self._desc, self._avail, self._used)

    def rebind(self) -> None:
        """The guest memory's mapping changed under a ready queue (a vhost-user front-end sent a new memory
        table): check the rings again and resolve them to the new buffers. :class:`QueueError` (and the queue is
        no longer ready) when a ring is not inside guest memory any more; nothing to do for a queue not ready."""
        if not self._ready:
            return
        problem = self.layout.problem(self.mem)
        if problem is not None:
            self._ready = False
            raise QueueError(problem[1])
        self._bind()

    def activate(self) -> None:
        """Validate size and ring addresses (§2.7: alignment 16/2/4, inside guest memory) and set ready.

        Raises :class:`QueueError` and stays not ready if the configuration is unusable.
        """
        if self._size == 0:
            raise QueueError("queue size is 0 (queue not available)")
        problem = self.layout.problem(self.mem)
        if problem is not None:
            raise QueueError(problem[1])
        self._cache()
        self._bind()
        self._shadow_avail = self._next_avail
        self._ready = True
        if not self._notify:  # set_notification(False) before the queue was enabled
            self.set_notification(False)

    # -- indices

    @property
    def next_avail(self) -> int:
        """Index of the next available-ring entry the device will read (free-running u16)."""
        return self._next_avail

    @property
    def next_used(self) -> int:
        """Index of the next used-ring entry the device will write (free-running u16) = used.idx."""
        return self._next_used

    @property
    def in_flight(self) -> int:
        """Chains popped but not yet pushed."""
        return (self._next_avail - self._next_used) & _M

    # -- runtime

    def _idx_error(self, idx: int) -> QueueError:
        return QueueError(f"available idx {idx} is {(idx - self._next_avail) & _M} ahead of next_avail "
                          f"{self._next_avail}, more than queue size {self._size} (§2.7.6)")

    def _read_avail_idx(self) -> int:
        idx: int = _U16_UNPACK(self._abuf, self._aidx_off)[0]
        if (idx - self._next_avail) & _M > self._size:
            raise self._idx_error(idx)
        self._shadow_avail = idx
        return idx

    def avail_pending(self) -> int:
        """Chains the driver made available that the device has not popped (re-reads avail.idx)."""
        if not self._ready:
            return 0
        return (self._read_avail_idx() - self._next_avail) & _M

    def pop(self) -> DescriptorChain | None:
        """Take the next available chain (§2.7.13), or None if there is none (or the queue is not ready).

        Raises :class:`QueueError` for ring-level errors; chain-level errors come back in ``chain.error``.
        """
        if not self._ready:
            return None
        na = self._next_avail
        abuf = self._abuf
        if na == self._shadow_avail:
            idx: int = _U16_UNPACK(abuf, self._aidx_off)[0]
            if (idx - na) & _M > self._size:
                raise self._idx_error(idx)
            self._shadow_avail = idx
            if idx == na:
                return None  # spec: dev:split/avail-event#3 (a notification that brought nothing new)
        head: int = _U16_UNPACK(abuf, self._aent_off + VIRTQ_AVAIL_ELEM_SIZE * (na & self._mask))[0]
        if head >= self._size:
            raise QueueError(f"available ring entry {na} names head {head} >= queue size {self._size}")
        na = (na + 1) & _M
        self._next_avail = na
        if self._event_idx and self._notify:
            # §2.7.10: ask for a kick once the driver passes what we have consumed (QEMU virtqueue_pop)
            _U16_PACK(self._ubuf, self._aevt_off, na)
        addr, ln, flags, nxt = _DESC_UNPACK(self._dbuf, self._doff + VIRTQ_DESC_SIZE * head)
        if flags & _F_SPECIAL or not (self._lo <= addr and addr + ln <= self._hi):
            return self._walk(head, addr, ln, flags, nxt)
        # the common case, one direct descriptor inside guest memory (what _walk decides for it too)
        if flags & _F_WRITE:
            return DescriptorChain(head, [], [(addr, ln)])
        return DescriptorChain(head, [(addr, ln)], [])

    def pop_many(self, limit: int | None = None) -> list[DescriptorChain]:
        """Every available chain (at most ``limit``), reading avail.idx once: the batch form of :meth:`pop`, with
        the same checks per chain. A ring-level error raises :class:`QueueError` at the chain :meth:`pop` would
        raise it for: when chains come before it they are returned, and the next call raises."""
        if not self._ready:
            return []
        na = self._next_avail
        count = (self._read_avail_idx() - na) & _M
        if limit is not None and limit < count:
            count = limit
        out: list[DescriptorChain] = []
        abuf, aent, mask, size = self._abuf, self._aent_off, self._mask, self._size
        dbuf, doff, lo, hi = self._dbuf, self._doff, self._lo, self._hi
        for _ in range(count):
            head: int = _U16_UNPACK(abuf, aent + VIRTQ_AVAIL_ELEM_SIZE * (na & mask))[0]
            if head >= size:
                if out:
                    break
                raise QueueError(f"available ring entry {na} names head {head} >= queue size {size}")
            na = (na + 1) & _M
            self._next_avail = na
            addr, ln, flags, nxt = _DESC_UNPACK(dbuf, doff + VIRTQ_DESC_SIZE * head)
            if flags & _F_SPECIAL or not (lo <= addr and addr + ln <= hi):
                out.append(self._walk(head, addr, ln, flags, nxt))
            elif flags & _F_WRITE:
                out.append(DescriptorChain(head, [], [(addr, ln)]))
            else:
                out.append(DescriptorChain(head, [(addr, ln)], []))
        if out and self._event_idx and self._notify:
            _U16_PACK(self._ubuf, self._aevt_off, na)  # §2.7.10, as pop writes it after each chain
        return out

    def _walk(self, head: int, addr: int, ln: int, flags: int, nxt: int) -> DescriptorChain:
        """Follow the chain at ``head`` (whose descriptor the caller read: ``addr, ln, flags, nxt``) applying every
        MUST of §2.7.4-§2.7.5.3."""
        # spec: dev:split/desc#2
        # The walk only reads descriptors (direct and indirect); nothing here writes the descriptor table.
        lo, hi = self._lo, self._hi
        contains = self.mem.contains
        if not flags & _F_SPECIAL:  # the common case: one direct descriptor
            if not ((lo <= addr and addr + ln <= hi) or contains(addr, ln)):
                return DescriptorChain(head, error=f"descriptor {head} [{addr:#x}, +{ln:#x}) is outside guest memory")
            if flags & _F_WRITE:
                return DescriptorChain(head, [], [(addr, ln)])
            return DescriptorChain(head, [(addr, ln)], [])
        size = self._size
        readable: list[Segment] = []
        writable: list[Segment] = []
        total = 0
        if not flags & _F_INDIRECT:
            buf, base = self._dbuf, self._doff
            i = head
            for _ in range(size):  # a chain visits at most size descriptors: one more means it loops
                if flags == _F_NEXT:  # the common middle of a chain: readable, more to come (the checks below)
                    if not ((lo <= addr and addr + ln <= hi) or contains(addr, ln)):
                        return DescriptorChain(head, error=f"descriptor {i} [{addr:#x}, +{ln:#x}) is outside guest "
                                                           "memory")
                    if writable:
                        return DescriptorChain(head, error=f"device-readable descriptor {i} after a device-writable "
                                                           "one")
                    readable.append((addr, ln))
                    total += ln
                    if nxt >= size:
                        return DescriptorChain(head, error=f"descriptor {i} next {nxt} >= queue size {size}")
                    i = nxt
                    addr, ln, flags, nxt = _DESC_UNPACK(buf, base + VIRTQ_DESC_SIZE * i)
                    continue
                # spec: dev:split/indirect#1, dev:split/indirect#2
                # INDIRECT is looked at before WRITE (ignored on the descriptor that refers to a table), and may
                # end a chain of any number of direct descriptors.
                if flags & _F_INDIRECT:
                    break
                if not ((lo <= addr and addr + ln <= hi) or contains(addr, ln)):
                    return DescriptorChain(head, error=f"descriptor {i} [{addr:#x}, +{ln:#x}) is outside guest "
                                                       "memory")
                if flags & _F_WRITE:
                    writable.append((addr, ln))
                elif writable:
                    return DescriptorChain(head, error=f"device-readable descriptor {i} after a device-writable one")
                else:
                    readable.append((addr, ln))
                total += ln
                if not flags & _F_NEXT:
                    break
                if nxt >= size:
                    return DescriptorChain(head, error=f"descriptor {i} next {nxt} >= queue size {size}")
                i = nxt
                addr, ln, flags, nxt = _DESC_UNPACK(buf, base + VIRTQ_DESC_SIZE * i)
            else:
                return DescriptorChain(head, error=f"descriptor chain at head {head} loops (> {size} descriptors)")
        if flags & _F_INDIRECT:  # the chain ends with a descriptor that refers to a table: walk its entries
            table, n = addr, ln // VIRTQ_DESC_SIZE
            if (self._indirect and not flags & _F_NEXT and ln and not ln % VIRTQ_DESC_SIZE
                    and n <= VIRTQ_MAX_INDIRECT_ENTRIES and lo <= table and table + ln <= hi):
                buf, base = self._rbuf, table - lo  # (what _indirect_problem accepts, in the region of the rings)
            else:
                why = self._indirect_problem(addr, ln, flags)
                if why:
                    return DescriptorChain(head, error=why)
                buf, base = self.mem.locate(table, ln)  # (checked by _indirect_problem)
            # the walk reads only the entries it visits
            budget = size - len(readable) - len(writable)  # §2.7.5.3.1: chain length <= Queue Size
            j = 0
            for k in range(n):  # a table's chain visits at most n entries: one more means it loops
                addr, ln, flags, nxt = _DESC_UNPACK(buf, base + VIRTQ_DESC_SIZE * j)
                if flags == _F_NEXT:  # a readable entry with more to come: the checks below, in their order
                    if not ((lo <= addr and addr + ln <= hi) or contains(addr, ln)):
                        return DescriptorChain(head, error=f"indirect entry {j} [{addr:#x}, +{ln:#x}) is outside "
                                                           "guest memory")
                    if writable:
                        return DescriptorChain(head, error=f"device-readable indirect entry {j} after a "
                                                           "device-writable descriptor")
                    readable.append((addr, ln))
                    total += ln
                    if k == budget:  # this entry is one more than the queue size allows
                        return DescriptorChain(head, error=f"chain of {len(readable) + len(writable)}+ descriptors "
                                                           f"is longer than queue size {size}")
                    if nxt >= n:
                        return DescriptorChain(head, error=f"indirect entry {j} next {nxt} >= table size {n}")
                    j = nxt
                    continue
                if flags & _F_INDIRECT:
                    return DescriptorChain(head, error=f"INDIRECT flag inside indirect table entry {j} (§2.7.5.3.1)")
                if not ((lo <= addr and addr + ln <= hi) or contains(addr, ln)):
                    return DescriptorChain(head, error=f"indirect entry {j} [{addr:#x}, +{ln:#x}) is outside guest "
                                                       "memory")
                if flags & _F_WRITE:
                    writable.append((addr, ln))
                elif writable:
                    return DescriptorChain(head, error=f"device-readable indirect entry {j} after a device-writable "
                                                       "descriptor")
                else:
                    readable.append((addr, ln))
                total += ln
                if k == budget:
                    return DescriptorChain(head, error=f"chain of {len(readable) + len(writable)}+ descriptors is "
                                                       f"longer than queue size {size}")
                if not flags & _F_NEXT:
                    break
                if nxt >= n:
                    return DescriptorChain(head, error=f"indirect entry {j} next {nxt} >= table size {n}")
                j = nxt
            else:
                return DescriptorChain(head, error=f"indirect table at {table:#x} loops (> {n} descriptors)")
            count = len(readable) + len(writable)
            if count > size:  # (the budget above stops the walk first: kept as the statement of the rule)
                return DescriptorChain(head, error=f"chain of {count} descriptors is longer than queue size {size}")
        if total > VIRTQ_MAX_CHAIN_BYTES:
            return DescriptorChain(head, error=f"chain of {total} bytes is longer than 2^32 bytes")
        return DescriptorChain(head, readable, writable)

    def _indirect_problem(self, table: int, table_len: int, flags: int) -> str:
        """Why the descriptor ``table, table_len, flags`` (INDIRECT set) cannot refer to a table (§2.7.5.3.1), or
        "" when it can."""
        if not self._indirect:
            return "INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)"
        if flags & _F_NEXT:
            return "descriptor has both INDIRECT and NEXT (§2.7.5.3.1)"
        if table_len == 0 or table_len % VIRTQ_DESC_SIZE:
            return f"indirect table length {table_len} is not a non-zero multiple of {VIRTQ_DESC_SIZE}"
        n = table_len // VIRTQ_DESC_SIZE
        if n > VIRTQ_MAX_INDIRECT_ENTRIES:
            return f"indirect table of {n} entries exceeds {VIRTQ_MAX_INDIRECT_ENTRIES}"
        if not ((self._lo <= table and table + table_len <= self._hi) or self.mem.contains(table, table_len)):
            return f"indirect table [{table:#x}, +{table_len:#x}) is outside guest memory"
        return ""

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` with ``written`` bytes written to its device-writable part (§2.7.8, §2.7.14).

        Writes the used element, then bumps used.idx. Raises :class:`QueueError` on a device-side misuse
        (queue not ready, head out of range, nothing in flight, ``written`` not a u32).
        """
        if not self._ready:
            raise QueueError("push on a queue that is not ready")
        if not 0 <= head < self._size:
            raise QueueError(f"push of head {head} outside queue size {self._size}")
        if not 0 <= written <= VIRTQ_DESC_LEN_MAX:
            raise QueueError(f"used length {written} is not a 32-bit value")
        nu = self._next_used
        if nu == self._next_avail:
            raise QueueError("push without a popped chain in flight")
        buf = self._ubuf
        # spec: dev:split/used#1
        _USED_PACK(buf, self._uent_off + VIRTQ_USED_ELEM_SIZE * (nu & self._mask), head, written)
        nu = (nu + 1) & _M
        _U16_PACK(buf, self._uidx_off, nu)  # §2.7.8: len is set before idx
        self._next_used = nu
        self._num_added += 1

    def push_many(self, items: Sequence[tuple[int, int]]) -> None:
        """:meth:`push` of every ``(head, written)`` in order, with one used.idx update after the last element
        (§2.7.8: the elements are written before idx). The checks of :meth:`push` apply to each item before
        anything is written: on a misuse nothing is pushed."""
        if not self._ready:
            raise QueueError("push on a queue that is not ready")
        nu = self._next_used
        if len(items) > (self._next_avail - nu) & _M:
            raise QueueError(f"push of {len(items)} chains, {(self._next_avail - nu) & _M} in flight")
        size = self._size
        for head, written in items:
            if not 0 <= head < size:
                raise QueueError(f"push of head {head} outside queue size {size}")
            if not 0 <= written <= VIRTQ_DESC_LEN_MAX:
                raise QueueError(f"used length {written} is not a 32-bit value")
        buf, ent, mask = self._ubuf, self._uent_off, self._mask
        for head, written in items:
            # spec: dev:split/used#1
            _USED_PACK(buf, ent + VIRTQ_USED_ELEM_SIZE * (nu & mask), head, written)
            nu = (nu + 1) & _M
        _U16_PACK(buf, self._uidx_off, nu)
        self._next_used = nu
        self._num_added += len(items)

    def needs_notification(self) -> bool:
        """Whether the pushes since the last call need a used buffer notification (§2.7.7).

        Without EVENT_IDX: unless avail.flags has VIRTQ_AVAIL_F_NO_INTERRUPT. With EVENT_IDX: if the batch
        wrote the entry at ``used_event`` (``vring_need_event``). Marks the current used.idx as signalled.
        False if nothing was pushed since the last call.
        """
        if not self._ready:
            return False
        nu = self._next_used
        old = self._signalled_used
        added = self._num_added
        self._signalled_used = nu
        self._num_added = 0
        if added == 0:
            return False
        try:
            if self._event_idx:
                if added > _M:  # u16 arithmetic cannot tell; spurious notifications are allowed
                    return True
                # spec: dev:split/used-event#4, dev:split/used-event#5, dev:split/used-event#6
                # avail.flags is not even read; notify iff the batch wrote the entry at used_event.
                event: int = _U16_UNPACK(self._abuf, self._uevt_off)[0]
                return ((nu - event - 1) & _M) < ((nu - old) & _M)  # vring_need_event(event, nu, old), inline
            # spec: dev:split/used-event#1, dev:split/used-event#2, dev:split/used-event#3
            # used_event is not read; avail.flags bit 0 alone decides.
            flags: int = _U16_UNPACK(self._abuf, self._aflags_off)[0]
        except GuestMemoryError as e:  # pragma: no cover
            raise QueueError(str(e)) from e
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver for (or to stop) available buffer notifications (§2.7.10).

        Without EVENT_IDX this sets/clears VIRTQ_USED_F_NO_NOTIFY in used.flags. With EVENT_IDX, enabling
        writes avail_event = the driver's current avail.idx (kick on the next buffer), and ``pop`` keeps it at
        next_avail; disabling parks avail_event just behind next_avail, which the driver cannot reach without
        the device consuming. Callers re-check :meth:`avail_pending` after enabling (the usual race). On a
        queue that is not ready the wish is remembered and applied by :meth:`activate`.
        """
        self._notify = bool(enabled)
        if not self._ready:
            return
        mem = self.mem
        try:
            if self._event_idx:
                # spec: dev:split/avail-event#2 (used.flags is never written: it stays 0)
                if enabled:
                    idx: int = mem.unpack_from(_U16, self._avail_idx_addr)[0]
                    mem.pack_into(_U16, self._avail_event_addr, idx)
                else:
                    mem.pack_into(_U16, self._avail_event_addr, (self._next_avail - 1) & _M)
            else:
                # spec: dev:split/avail-event#1 (exactly 0 or 1, whatever the word held before)
                mem.pack_into(_U16, self._used + VIRTQ_RING_FLAGS, 0 if enabled else VIRTQ_USED_F_NO_NOTIFY)
        except GuestMemoryError as e:  # pragma: no cover
            raise QueueError(str(e)) from e

    @property
    def notification_enabled(self) -> bool:
        """The last wish passed to :meth:`set_notification` (True after reset)."""
        return self._notify

    def rewind(self, n: int) -> None:
        """Un-pop the last ``n`` popped (and not pushed) chains, as Firecracker does before a snapshot.

        They are popped again, from the avail ring, after resume. Raises ValueError if fewer than ``n`` chains
        are in flight.
        """
        if not 0 <= n <= self.in_flight:
            raise ValueError(f"cannot rewind {n} chains: {self.in_flight} in flight")
        self._next_avail = (self._next_avail - n) & _M
        self._shadow_avail = self._next_avail

    # -- snapshot

    def state(self) -> QueueState:
        """Plain-data snapshot (see :class:`QueueState`)."""
        return QueueState(
            max_size=self._max_size,
            size=self._size,
            ready=self._ready,
            desc_table=self._desc,
            avail_ring=self._avail,
            used_ring=self._used,
            next_avail=self._next_avail,
            next_used=self._next_used,
            event_idx=self._event_idx,
            indirect=self._indirect,
            signalled_used=self._signalled_used,
        )

    @classmethod
    def from_state(cls, mem: GuestMemory, state: QueueState) -> DeviceQueue:
        """Rebuild a queue from untrusted ``state``; :class:`InvalidStateError` names the bad field."""
        state.validate(mem)
        q = cls(mem, state.max_size)
        q._size = state.size
        q._desc = state.desc_table
        q._avail = state.avail_ring
        q._used = state.used_ring
        q._event_idx = state.event_idx
        q._indirect = state.indirect
        q._next_avail = state.next_avail
        q._next_used = state.next_used
        q._signalled_used = state.signalled_used
        q._num_added = (state.next_used - state.signalled_used) & _M
        q._cache()
        q._shadow_avail = state.next_avail
        if state.ready:
            q._bind()
            q._ready = True
            if not state.event_idx:
                flags: int = mem.unpack_from(_U16, q._used + VIRTQ_RING_FLAGS)[0]
                q._notify = not flags & VIRTQ_USED_F_NO_NOTIFY
        return q

"""Driver side of a split virtqueue, with Linux ``drivers/virtio/virtio_ring.c`` semantics.

Used by the guest-driver model and as the test mock (rust-vmm ``MockSplitQueue`` style): it writes real rings
into :class:`~pyvirtio.memory.GuestMemory`. Per-descriptor bookkeeping (free list, tokens, lengths) is kept on
the Python side, like Linux's ``desc_extra``/``desc_state``, so nothing the device writes can corrupt it; what
the device does write (used ring) is validated, and garbage marks the queue ``broken`` (Linux ``BAD_RING``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import QueueError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    VIRTQ_AVAIL_ELEM_SIZE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_ALIGN,
    VIRTQ_DESC_LEN_MAX,
    VIRTQ_DESC_SIZE,
    VIRTQ_IDX_MASK,
    VIRTQ_MAX_CHAIN_BYTES,
    VIRTQ_RING_ENTRIES,
    VIRTQ_RING_FLAGS,
    VIRTQ_RING_IDX,
    VIRTQ_USED_ELEM_SIZE,
    VIRTQ_USED_F_NO_NOTIFY,
    DescFlag,
)
from pyvirtio.virtqueue.chain import DESC_STRUCT
from pyvirtio.virtqueue.layout import (
    RingLayout,
    avail_event_offset,
    avail_ring_size,
    desc_table_size,
    used_event_offset,
    used_ring_size,
)

__all__ = ["CHAIN_BYTES_MAX", "DriverQueue", "QueueFull"]

_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_ADDR_LIMIT = 1 << 64
#: The most bytes one descriptor chain may describe in total (§2.7.5.2).
CHAIN_BYTES_MAX = VIRTQ_MAX_CHAIN_BYTES
_M = VIRTQ_IDX_MASK
_F_NEXT = int(DescFlag.NEXT)
_F_WRITE = int(DescFlag.WRITE)
_F_INDIRECT = int(DescFlag.INDIRECT)
_F_WRITE_NEXT = _F_WRITE | _F_NEXT
_NO_TABLE = -1
# bound methods of precompiled Structs: the hot path calls them directly on the ring buffers
_U16_PACK = _U16.pack_into
_U16_UNPACK = _U16.unpack_from
_USED_UNPACK = _USED_ELEM.unpack_from
_DESC_PACK = DESC_STRUCT.pack_into
_TABLE2_PACK = struct.Struct("<" + DESC_STRUCT.format.lstrip("<") * 2).pack_into  # two descriptors at once


class QueueFull(QueueError):
    """Not enough free descriptors for the buffer (Linux ``virtqueue_add`` returning -ENOSPC)."""


class DriverQueue:
    """One split virtqueue as the guest driver sees it.

    ``add`` publishes a buffer at once (descriptors, avail ring entry, avail.idx); ``kick_prepare`` says
    whether the device wants a notification; ``get_used`` reclaims completed buffers as ``(token, len)``.
    """

    def __init__(
        self,
        mem: GuestMemory,
        layout: RingLayout,
        *,
        event_idx: bool = False,
        indirect: bool = False,
        alloc: GuestAllocator | None = None,
    ) -> None:
        problem = layout.problem(mem)
        # spec: drv:split/alignment#1
        if problem is not None:
            raise QueueError(problem[1])
        if indirect and alloc is None:
            raise ValueError("indirect descriptors need a GuestAllocator for the tables")
        self.mem = mem
        self.layout = layout
        self.event_idx = event_idx
        self.indirect = indirect
        self.alloc = alloc
        n = layout.size
        self._n = n
        self._mask = n - 1
        self._desc = layout.desc
        self._avail_flags_addr = layout.avail + VIRTQ_RING_FLAGS
        self._avail_idx_addr = layout.avail + VIRTQ_RING_IDX
        self._avail_entries = layout.avail + VIRTQ_RING_ENTRIES
        self._used_event_addr = layout.avail + used_event_offset(n)
        self._used_flags_addr = layout.used + VIRTQ_RING_FLAGS
        self._used_idx_addr = layout.used + VIRTQ_RING_IDX
        self._used_entries = layout.used + VIRTQ_RING_ENTRIES
        self._avail_event_addr = layout.used + avail_event_offset(n)
        # the three parts were checked to lie inside guest memory: resolve them to buffers once (hot path)
        self._dbuf, self._doff = mem.locate(layout.desc, desc_table_size(n))
        self._abuf, aoff = mem.locate(layout.avail, avail_ring_size(n))
        self._ubuf, uoff = mem.locate(layout.used, used_ring_size(n))
        self._aidx_off = aoff + VIRTQ_RING_IDX
        self._aent_off = aoff + VIRTQ_RING_ENTRIES
        self._uevt_off = aoff + used_event_offset(n)
        self._uflags_off = uoff + VIRTQ_RING_FLAGS
        self._uidx_off = uoff + VIRTQ_RING_IDX
        self._uent_off = uoff + VIRTQ_RING_ENTRIES
        self._aevt_off = uoff + avail_event_offset(n)
        self._init_rings()

    def _init_rings(self) -> None:
        """Zero the three parts (§2.7.10: the driver MUST initialise used.flags to 0) and the bookkeeping."""
        lay, n = self.layout, self._n
        # spec: drv:split/avail-event#1
        self.mem.fill(lay.desc, desc_table_size(n))
        self.mem.fill(lay.avail, avail_ring_size(n))
        self.mem.fill(lay.used, used_ring_size(n))
        self._free_next = [*range(1, n), 0]  # Linux desc_extra[].next: free list, then chain links
        self._free_head = 0
        self._num_free = n
        # per head in flight: (token, descriptors used, indirect table or _NO_TABLE, device-writable bytes, the
        # chain's last descriptor)
        self._heads: list[tuple[object, int, int, int, int] | None] = [None] * n
        self._avail_idx = 0
        self._num_added = 0
        self._last_used = 0
        self._shadow_used = 0
        self._in_flight = 0
        self._cb_enabled = True
        self.broken = False

    # -- properties

    @property
    def num_free(self) -> int:
        """Descriptors not in use by an outstanding buffer."""
        return self._num_free

    @property
    def num_max(self) -> int:
        """Queue Size: the number of descriptors."""
        return self._n

    @property
    def in_flight(self) -> int:
        """Buffers added and not yet reclaimed."""
        return self._in_flight

    @property
    def avail_idx(self) -> int:
        """The driver's avail.idx (free-running u16)."""
        return self._avail_idx

    @property
    def last_used(self) -> int:
        """Index of the next used-ring entry to reclaim (free-running u16)."""
        return self._last_used

    @property
    def callbacks_enabled(self) -> bool:
        """Whether used buffer notifications are wanted (:meth:`enable_cb` / :meth:`disable_cb`)."""
        return self._cb_enabled

    # -- supplying buffers (§2.7.13)

    def add(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]], token: object) -> int:
        """Expose a buffer: ``out`` device-readable then ``in_`` device-writable segments; returns the head.

        Uses one indirect table when negotiated and the buffer has more than one segment (Linux
        ``virtqueue_use_indirect``), falling back to direct descriptors if the allocator is exhausted.
        Raises :class:`QueueFull` when descriptors run out, :class:`QueueError` when broken or when the chain
        would be longer than the Queue Size (§2.7.5.3.1), ValueError for a None token, a bad segment or a buffer
        of more than 2^32 bytes in total (§2.7.5.2).

        What it writes obeys the driver rules of §2.7: device-readable descriptors first (§2.7.4.2); INDIRECT only
        when negotiated, never with NEXT, never inside a table (§2.7.5.3.1); the descriptors and the ring entry
        before ``idx``, which only ever moves forward (§2.7.6.1, §2.7.13.3.1). Addresses are used as given: they
        are guest-physical (no VIRTIO_F_ACCESS_PLATFORM, §6.1).
        """
        if self.broken:
            raise QueueError("virtqueue is broken")
        if token is None:
            raise ValueError("token must not be None")
        n_out = len(out)
        total = n_out + len(in_)
        if total == 1:  # one segment: one descriptor, no table, no NEXT (the same checks, the same ring bytes)
            if n_out:
                addr, ln = out[0]
                flags = 0
                in_len = 0
            else:
                addr, ln = in_[0]
                flags = _F_WRITE
                in_len = ln
            # spec: drv:reserved-features#3
            if not (0 <= addr < _ADDR_LIMIT and 0 <= ln <= VIRTQ_DESC_LEN_MAX):
                raise ValueError(f"segment ({addr:#x}, {ln:#x}) is not a 64-bit address and 32-bit length")
            if self._num_free < 1:
                raise QueueFull(f"1 descriptors needed, {self._num_free} free")
            head = self._free_head
            nxt = self._free_next[head]
            _DESC_PACK(self._dbuf, self._doff + VIRTQ_DESC_SIZE * head, addr, ln, flags, nxt)
            self._free_head = nxt
            self._num_free -= 1
            self._heads[head] = (token, 1, _NO_TABLE, in_len, head)
            # spec: drv:split/avail-idx#1, drv:split/avail#1
            ai = self._avail_idx
            abuf = self._abuf
            _U16_PACK(abuf, self._aent_off + VIRTQ_AVAIL_ELEM_SIZE * (ai & self._mask), head)
            ai = (ai + 1) & _M
            _U16_PACK(abuf, self._aidx_off, ai)
            self._avail_idx = ai
            self._num_added += 1
            self._in_flight += 1
            return head
        if total == 0:
            raise ValueError("a buffer needs at least one segment")
        # spec: drv:split/indirect#3, drv:split/framing#2
        if total > self._n:
            raise QueueError(f"chain of {total} descriptors is longer than queue size {self._n} (§2.7.5.3.1)")
        # The descriptors are packed into a scratch buffer first: packing checks every segment's range (a 64-bit
        # address, a 32-bit length) in C, and nothing reaches guest memory unless the whole buffer is valid. Indirect
        # entries link to the next entry; direct descriptors follow the free list, and when their slots are
        # consecutive (the usual case) the scratch is copied in one piece.
        use_table = self.indirect and self._num_free > 0 and self.alloc is not None
        free_next = self._free_next
        head = last = i = self._free_head
        scratch = bytearray(VIRTQ_DESC_SIZE * total)
        o = 0
        consecutive = True
        out_len = in_len = 0
        try:
            if use_table and n_out == 1 and total == 2:  # one request, one response (a control command): one call
                (addr, out_len), (addr2, in_len) = out[0], in_[0]
                _TABLE2_PACK(scratch, 0, addr, out_len, _F_NEXT, 1, addr2, in_len, _F_WRITE_NEXT, 2)
                o = 2 * VIRTQ_DESC_SIZE
            elif use_table:
                j = 0
                for addr, ln in out:
                    j += 1
                    _DESC_PACK(scratch, o, addr, ln, _F_NEXT, j)
                    out_len += ln
                    o += VIRTQ_DESC_SIZE
                for addr, ln in in_:
                    j += 1
                    _DESC_PACK(scratch, o, addr, ln, _F_WRITE_NEXT, j)
                    in_len += ln
                    o += VIRTQ_DESC_SIZE
            else:
                hb = VIRTQ_DESC_SIZE * head
                for addr, ln in out:
                    nxt = free_next[i]
                    if VIRTQ_DESC_SIZE * i - hb != o:
                        consecutive = False
                    _DESC_PACK(scratch, o, addr, ln, _F_NEXT, nxt)
                    out_len += ln
                    o += VIRTQ_DESC_SIZE
                    last = i
                    i = nxt
                for addr, ln in in_:
                    nxt = free_next[i]
                    if VIRTQ_DESC_SIZE * i - hb != o:
                        consecutive = False
                    _DESC_PACK(scratch, o, addr, ln, _F_WRITE_NEXT, nxt)
                    in_len += ln
                    o += VIRTQ_DESC_SIZE
                    last = i
                    i = nxt
        except (struct.error, TypeError):
            self._check_segments(out, in_)  # the ValueError naming the segment (else the packing error stands)
            raise
        # spec: drv:reserved-features#3
        # (every address fits 64 bits and every length 32 bits: the packing above refused anything else)
        # spec: drv:split/desc#1
        if out_len + in_len > CHAIN_BYTES_MAX:
            raise ValueError(f"buffer of {out_len + in_len:#x} bytes is longer than 2^32 bytes (§2.7.5.2)")
        # spec: drv:split/framing#1
        # the last descriptor (or table entry) has no NEXT; a device-writable one keeps WRITE
        _U16_PACK(scratch, o - 4, _F_WRITE if in_ else 0)
        table = _NO_TABLE
        # spec: drv:split/indirect#1
        if use_table:
            alloc = self.alloc
            assert alloc is not None
            try:
                table = alloc.alloc(VIRTQ_DESC_SIZE * total, VIRTQ_DESC_ALIGN)
            except MemoryError:
                table = _NO_TABLE
            if table == _NO_TABLE:  # fall back to direct descriptors: the scratch follows the free list again
                return self._add_direct(out, in_, token, in_len)
            # spec: drv:split/framing#1, drv:split/indirect#2
            # the allocator's block lies in guest RAM (its window is checked at construction)
            t = alloc.window_off + table - alloc.base
            alloc.window_buf[t : t + o] = scratch
            nxt = free_next[head]
            # spec: drv:split/indirect#4
            _DESC_PACK(self._dbuf, self._doff + VIRTQ_DESC_SIZE * head, table, o, _F_INDIRECT, nxt)
            self._free_head = nxt
            self._num_free -= 1
            self._heads[head] = (token, 1, table, in_len, head)
        else:
            if self._num_free < total:
                raise QueueFull(f"{total} descriptors needed, {self._num_free} free")
            if consecutive:  # the slots follow each other: one copy
                o = self._doff + VIRTQ_DESC_SIZE * head
                self._dbuf[o : o + VIRTQ_DESC_SIZE * total] = scratch
            else:
                self._write_direct(scratch, head, total)
            self._free_head = i
            self._num_free -= total
            self._heads[head] = (token, total, _NO_TABLE, in_len, last)
        # §2.7.13.2-3: ring entry first, then idx; idx only moves forward
        # spec: drv:split/avail-idx#1, drv:split/avail#1
        ai = self._avail_idx
        abuf = self._abuf
        _U16_PACK(abuf, self._aent_off + VIRTQ_AVAIL_ELEM_SIZE * (ai & self._mask), head)
        ai = (ai + 1) & _M
        _U16_PACK(abuf, self._aidx_off, ai)
        self._avail_idx = ai
        self._num_added += 1
        self._in_flight += 1
        return head

    def _write_direct(self, scratch: bytearray, head: int, total: int) -> None:
        """Copy the packed descriptors of a direct chain to their slots along the free list, one by one."""
        dbuf, doff = self._dbuf, self._doff
        view = memoryview(scratch)
        free_next = self._free_next
        i = head
        for j in range(0, VIRTQ_DESC_SIZE * total, VIRTQ_DESC_SIZE):
            o = doff + VIRTQ_DESC_SIZE * i
            dbuf[o : o + VIRTQ_DESC_SIZE] = view[j : j + VIRTQ_DESC_SIZE]
            i = free_next[i]
        view.release()

    def _add_direct(self, out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]], token: object,
                    in_len: int) -> int:
        """:meth:`add` with direct descriptors when no indirect table could be allocated (segments checked)."""
        total = len(out) + len(in_)
        if self._num_free < total:
            raise QueueFull(f"{total} descriptors needed, {self._num_free} free")
        free_next = self._free_next
        head = i = last = self._free_head
        scratch = bytearray(VIRTQ_DESC_SIZE * total)
        o = 0
        for j, (addr, ln) in enumerate((*out, *in_)):
            flags = _F_WRITE_NEXT if j >= len(out) else _F_NEXT
            _DESC_PACK(scratch, o, addr, ln, flags if j < total - 1 else flags & ~_F_NEXT, free_next[i])
            o += VIRTQ_DESC_SIZE
            last = i
            i = free_next[i]
        self._write_direct(scratch, head, total)
        self._free_head = i
        self._num_free -= total
        self._heads[head] = (token, total, _NO_TABLE, in_len, last)
        ai = self._avail_idx
        _U16_PACK(self._abuf, self._aent_off + VIRTQ_AVAIL_ELEM_SIZE * (ai & self._mask), head)
        ai = (ai + 1) & _M
        _U16_PACK(self._abuf, self._aidx_off, ai)
        self._avail_idx = ai
        self._num_added += 1
        self._in_flight += 1
        return head

    @staticmethod
    def _check_segments(out: Sequence[tuple[int, int]], in_: Sequence[tuple[int, int]]) -> None:
        """ValueError naming the first segment that is not a 64-bit address and a 32-bit length."""
        for addr, ln in (*out, *in_):
            if not (0 <= addr < _ADDR_LIMIT and 0 <= ln <= VIRTQ_DESC_LEN_MAX):
                raise ValueError(f"segment ({addr:#x}, {ln:#x}) is not a 64-bit address and 32-bit length")

    def kick_prepare(self) -> bool:
        """Whether to notify the device about the buffers added since the last call (§2.7.10).

        Without EVENT_IDX: unless used.flags has VIRTQ_USED_F_NO_NOTIFY (``avail_event`` is not looked at). With
        EVENT_IDX: if the batch wrote the avail entry at ``avail_event`` (``vring_need_event``), whatever bit 0 of
        used.flags says. False when nothing was added. ``idx`` was published by :meth:`add` before either field
        is read here (§2.7.13.4.1).
        """
        # spec: drv:split/notify#1
        added = self._num_added
        self._num_added = 0
        if added == 0:
            return False
        new = self._avail_idx
        if self.event_idx:
            if added > _M:  # u16 arithmetic cannot tell; a spurious kick is allowed (§2.7.10)
                return True
            # spec: drv:split/avail-event#5, drv:split/avail-event#6, drv:split/avail-event#7
            event: int = _U16_UNPACK(self._ubuf, self._aevt_off)[0]
            # vring_need_event(event, new, old), inline: the batch wrote the entry at event
            return ((new - event - 1) & _M) < added
        # spec: drv:split/avail-event#2, drv:split/avail-event#3, drv:split/avail-event#4
        flags: int = _U16_UNPACK(self._ubuf, self._uflags_off)[0]
        return not flags & VIRTQ_USED_F_NO_NOTIFY

    # -- receiving used buffers (§2.7.14)

    def _bad_ring(self, why: str) -> QueueError:
        self.broken = True
        return QueueError(f"broken ring: {why}")

    def get_used(self) -> tuple[object, int] | None:
        """Reclaim the next used buffer as ``(token, len)``, or None if the device has returned nothing new (a
        spurious notification is harmless, §2.7.7.1).

        The device-written used.idx, id and len are validated; garbage marks the queue broken and raises
        :class:`QueueError`. ``len`` is at most the buffer's device-writable bytes: callers trust only that
        many (§2.7.8.3).
        """
        # spec: drv:split/used-event#3, drv:split/used#1
        if self.broken:
            raise QueueError("virtqueue is broken")
        ubuf = self._ubuf
        lu = self._last_used
        if lu == self._shadow_used:
            idx: int = _U16_UNPACK(ubuf, self._uidx_off)[0]
            if (idx - lu) & _M > self._in_flight:
                raise self._bad_ring(f"used idx {idx} is {(idx - lu) & _M} ahead, {self._in_flight} in flight")
            self._shadow_used = idx
            if idx == lu:
                return None
        head, ln = _USED_UNPACK(ubuf, self._uent_off + VIRTQ_USED_ELEM_SIZE * (lu & self._mask))
        info = self._heads[head] if head < self._n else None
        if info is None:
            raise self._bad_ring(f"used id {head} is not a head in flight")
        token, nd, table, in_len, tail = info
        if ln > in_len:
            raise self._bad_ring(f"used len {ln} exceeds the {in_len} device-writable bytes of {head}")
        # _detach, inline: the chain goes back to the front of the free list in one step (its tail is known)
        self._free_next[tail] = self._free_head
        self._free_head = head
        self._num_free += nd
        self._heads[head] = None
        if table != _NO_TABLE:
            assert self.alloc is not None
            self.alloc.free(table)
        self._in_flight -= 1
        lu = (lu + 1) & _M
        self._last_used = lu
        if self.event_idx and self._cb_enabled:
            # Linux virtqueue_get_buf_ctx_split: interrupt me when the next entry is written
            _U16_PACK(self._abuf, self._uevt_off, lu)
        return token, ln

    def drain_used(self) -> list[tuple[object, int]]:
        """Reclaim every used buffer available now."""
        out: list[tuple[object, int]] = []
        while (item := self.get_used()) is not None:
            out.append(item)
        return out

    def _detach(self, head: int) -> None:
        info = self._heads[head]
        assert info is not None
        _, nd, table, _, tail = info
        self._free_next[tail] = self._free_head
        self._free_head = head
        self._num_free += nd
        self._heads[head] = None
        if table != _NO_TABLE:
            assert self.alloc is not None
            self.alloc.free(table)
        self._in_flight -= 1

    # -- used buffer notification suppression (§2.7.7)

    def disable_cb(self) -> None:
        """Ask the device not to interrupt: avail.flags NO_INTERRUPT, or with EVENT_IDX park used_event
        just behind last_used (Linux writes 0 there as a self-declared hack)."""
        if not self._cb_enabled:
            return
        self._cb_enabled = False
        # spec: drv:split/used-event#1, drv:split/used-event#2
        if self.event_idx:
            self.mem.pack_into(_U16, self._used_event_addr, (self._last_used - 1) & _M)
        else:
            self.mem.pack_into(_U16, self._avail_flags_addr, VIRTQ_AVAIL_F_NO_INTERRUPT)

    def enable_cb(self) -> bool:
        """Re-enable used buffer notifications; False if used entries are already pending (process them).

        Linux ``virtqueue_enable_cb``: clear NO_INTERRUPT (or set used_event = last_used), then poll.
        """
        self._cb_enabled = True
        # spec: drv:split/used-event#1, drv:split/used-event#2
        if self.event_idx:
            self.mem.pack_into(_U16, self._used_event_addr, self._last_used)
        else:
            self.mem.pack_into(_U16, self._avail_flags_addr, 0)
        idx: int = self.mem.unpack_from(_U16, self._used_idx_addr)[0]
        return idx == self._last_used

    # -- reset

    def detach_unused(self) -> list[object]:
        """After a device reset or a reset of this queue, reclaim every outstanding token (Linux
        ``virtqueue_detach_unused_buf``).

        The caller makes sure the queue is not live any more (§3.3.1): exposed buffers are only reclaimed once
        the device can no longer use them. Like Linux, each detached buffer also takes avail.idx back by one: the
        device forgot the queue, so nothing is "unexposed" (§2.7.6.1) and :meth:`reinit` zeroes the ring anyway.
        """
        tokens: list[object] = []
        for head in range(self._n):
            info = self._heads[head]
            if info is not None:
                tokens.append(info[0])
                self._detach(head)
                self._avail_idx = (self._avail_idx - 1) & _M
        if tokens:
            self.mem.pack_into(_U16, self._avail_idx_addr, self._avail_idx)
        return tokens

    def reinit(self) -> None:
        """Re-initialise the rings for a device that was reset (Linux ``virtqueue_reinit_split``).

        Every token must have been reclaimed (:meth:`detach_unused`) first. Clears ``broken``.
        """
        if self._in_flight:
            raise QueueError(f"{self._in_flight} buffers still outstanding; detach_unused() first")
        self._init_rings()

"""Property tests: random valid traffic keeps the ring invariants; random garbage never escapes QueueError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from vq_helpers import ALLOC_BASE, RAM0, RAM1, Rig, changed_outside, make_memory

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import QueueError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import VIRTQ_MAX_CHAIN_BYTES, VIRTQ_MAX_INDIRECT_ENTRIES
from pyvirtio.virtqueue import DescriptorChain, DeviceQueue, QueueFull
from pyvirtio.virtqueue.chain import DESC_STRUCT

_U16 = struct.Struct("<H")


class Traffic(RuleBasedStateMachine):
    """virtio 1.4 §2.7.13/§2.7.14: any interleaving of driver adds, device pops/pushes (any completion order),
    snapshots and driver reclaims returns every token exactly once with the len the device pushed, with the
    buffer contents intact, and gives every descriptor back (num_free == num_max at the end)."""

    rig: Rig

    @initialize(
        size=st.sampled_from([1, 2, 4, 8, 16]),
        event_idx=st.booleans(),
        indirect=st.booleans(),
    )
    def setup(self, size: int, event_idx: bool, indirect: bool) -> None:
        self.rig = Rig(size, event_idx=event_idx, indirect=indirect)
        self.next_token = 0
        self.added: dict[int, tuple[list[bytes], list[int], list[tuple[int, int]]]] = {}  # token -> payload
        self.head_token: dict[int, int] = {}
        self.popped: list[tuple[int, DescriptorChain]] = []  # (token, chain) popped, not pushed
        self.pop_order: list[int] = []  # every token popped, in avail order
        self.pushed: dict[int, int] = {}  # token -> len pushed, not yet reclaimed
        self.returned: dict[int, int] = {}

    @rule(
        outs=st.lists(st.binary(min_size=1, max_size=24), max_size=3),
        ins=st.lists(st.integers(1, 24), max_size=3),
    )
    def add(self, outs: list[bytes], ins: list[int]) -> None:
        if not outs and not ins:
            return
        rig = self.rig
        segs_out = [(rig.alloc.alloc_bytes(b), len(b)) for b in outs]
        segs_in = [(rig.alloc.alloc(n), n) for n in ins]
        tok = self.next_token
        try:
            head = rig.drv.add(segs_out, segs_in, tok)
        except QueueError as e:
            assert isinstance(e, QueueFull) or len(outs) + len(ins) > rig.size
            for a, _ in segs_out + segs_in:
                rig.alloc.free(a)
            return
        self.next_token += 1
        self.added[tok] = (outs, ins, segs_out + segs_in)
        self.head_token[head] = tok
        rig.drv.kick_prepare()

    @rule()
    def pop(self) -> None:
        chain = self.rig.dev.pop()
        if chain is None:
            assert self.rig.dev.avail_pending() == 0
            return
        assert chain.error is None
        tok = self.head_token[chain.head]
        outs, ins, _ = self.added[tok]
        assert chain.read(self.rig.mem) == b"".join(outs)
        assert [n for _, n in chain.writable] == ins
        self.popped.append((tok, chain))
        self.pop_order.append(tok)

    @precondition(lambda self: self.popped)
    @rule(pick=st.integers(0, 1000), frac=st.floats(0, 1))
    def push(self, pick: int, frac: float) -> None:
        tok, chain = self.popped.pop(pick % len(self.popped))
        n = int(chain.writable_len * frac)
        written = chain.write(self.rig.mem, bytes([tok & 0xFF]) * n)
        assert written == n
        self.rig.dev.push(chain.head, n)
        self.pushed[tok] = n
        self.rig.dev.needs_notification()

    @rule()
    def reclaim_one(self) -> None:
        self._took(self.rig.drv.get_used())

    @rule()
    def reclaim_all(self) -> None:
        for item in self.rig.drv.drain_used():
            self._took(item)

    @rule(enable=st.booleans())
    def toggle_callbacks(self, enable: bool) -> None:
        if enable:
            self.rig.drv.enable_cb()
        else:
            self.rig.drv.disable_cb()

    @rule(enable=st.booleans())
    def toggle_kicks(self, enable: bool) -> None:
        self.rig.dev.set_notification(enable)

    @rule()
    def snapshot_restore(self) -> None:
        state = self.rig.dev.state()
        self.rig.dev = DeviceQueue.from_state(self.rig.mem, state)
        assert self.rig.dev.state() == state

    @precondition(lambda self: self.popped)
    @rule()
    def rewind_tail(self) -> None:
        """Un-pop the longest run of most recently popped chains that none was pushed (Firecracker quiesce)."""
        unpushed = {tok for tok, _ in self.popped}
        k = 0
        while k < len(self.pop_order) and self.pop_order[-1 - k] in unpushed:
            k += 1
        if k:
            self.rig.dev.rewind(k)
            gone = set(self.pop_order[-k:])
            del self.pop_order[-k:]
            self.popped = [(t, c) for t, c in self.popped if t not in gone]

    def _took(self, item: tuple[object, int] | None) -> None:
        if item is None:
            return
        tok, n = item
        assert isinstance(tok, int)
        assert tok not in self.returned, "token returned twice"
        assert self.pushed.pop(tok) == n
        self.returned[tok] = n
        outs, ins, segs = self.added.pop(tok)
        ins_total = sum(ins)
        data = b"".join(self.rig.mem.read(a, ln) for a, ln in segs[len(outs) :])
        assert data[:n] == bytes([tok & 0xFF]) * n and len(data) == ins_total
        for a, _ in segs:
            self.rig.alloc.free(a)

    @invariant()
    def descriptors_accounted(self) -> None:
        if not hasattr(self, "rig"):
            return
        drv = self.rig.drv
        assert 0 <= drv.num_free <= drv.num_max
        assert drv.in_flight == len(self.added)
        assert self.rig.dev.in_flight == len(self.popped)
        assert not drv.broken

    def teardown(self) -> None:
        if not hasattr(self, "rig"):
            return
        try:
            for tok, chain in self.popped:
                self.rig.dev.push(chain.head, 0)
                self.pushed[tok] = 0
            self.popped.clear()
            while (chain := self.rig.dev.pop()) is not None:
                tok = self.head_token[chain.head]
                self.rig.dev.push(chain.head, 0)
                self.pushed[tok] = 0
            for item in self.rig.drv.drain_used():
                self._took(item)
            assert self.added == {} and self.pushed == {}
            assert self.rig.drv.num_free == self.rig.drv.num_max
            assert set(self.returned) == set(range(self.next_token))
            assert self.rig.mem.misses == []
        finally:
            self.rig.mem.close()


Traffic.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestTraffic = Traffic.TestCase


# -- garbage ---------------------------------------------------------------------------------------------------

_ADDRS = st.one_of(
    st.integers(0, RAM0[1] + 0x100),
    st.integers(RAM1[0] - 0x100, RAM1[0] + RAM1[1] + 0x100),
    st.sampled_from([0, RAM0[1] - 16, RAM0[1] - 1, RAM1[0], (1 << 64) - 16, (1 << 63), ALLOC_BASE]),
    st.integers(0, (1 << 64) - 1),
)
_LENS = st.one_of(
    st.integers(0, 64),
    st.sampled_from([16, 32, 48, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 16 * 0xFFFF, 16 * 0x10000]),
    st.integers(0, 0xFFFFFFFF),
)
_FLAGS = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]) | st.integers(0, 0xFFFF)


def _mostly(n: int) -> st.SearchStrategy[int]:
    """Mostly 0..n (plausible indices), sometimes any u16."""
    return st.integers(0, 9).flatmap(lambda k: st.integers(0, n) if k else st.integers(0, 0xFFFF))


def _descs(size: int, n: int) -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    """``n`` descriptors: random ones, and ones that point at the indirect table written at ALLOC_BASE."""
    nxt = _mostly(size)
    random_desc = st.tuples(_ADDRS, _LENS, _FLAGS, nxt)
    to_table = st.tuples(
        st.sampled_from([ALLOC_BASE] * 4 + [RAM0[1] - 16, RAM1[0] + RAM1[1] - 32, 1 << 63]),
        st.sampled_from([16, 32, 48, 64, 24, 0]),
        st.sampled_from([4, 6, 5]),
        nxt,
    )
    return st.lists(random_desc | to_table, min_size=n, max_size=n)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([1, 2, 4, 8]),
    indirect=st.booleans(),
    event_idx=st.booleans(),
    data=st.data(),
)
@pytest.mark.spec("dev:split/desc#2")
def test_structured_garbage_never_escapes(size, indirect, event_idx, data):
    """virtio 1.4 §2.7 (device side treats the rings as untrusted): garbage descriptor tables, indirect tables
    and avail rings make pop return chains or None or raise QueueError — nothing else — every returned segment
    lies in guest RAM, valid chains obey §2.7.4.2/§2.7.5 limits, and only the used ring is written."""
    rig = Rig(size, event_idx=event_idx, indirect=indirect)
    try:
        for i, d in enumerate(data.draw(_descs(size, size), label="descs")):
            rig.desc(i, *d)
        table = data.draw(_descs(4, 4), label="indirect table")
        raw = b"".join(DESC_STRUCT.pack(*d) for d in table)
        rig.mem.write(ALLOC_BASE, raw)  # an indirect table at a well-known address that _ADDRS hits
        ring = data.draw(st.lists(_mostly(size - 1), min_size=size, max_size=size), label="avail ring")
        for k, head in enumerate(ring):
            rig.mem.pack_into(_U16, rig.layout.avail + 4 + 2 * k, head)
        rig.set_avail_idx(data.draw(_mostly(size), label="avail idx"))
        _pop_everything(rig)
    finally:
        rig.mem.close()


def _reference_walk(mem: GuestMemory, desc: int, size: int, indirect: bool, head: int) -> DescriptorChain:
    """The device walk written plainly (one bounds query per descriptor, every rule of §2.7.4-§2.7.5.3 in order):
    what the optimised walk must give, chain for chain and error for error."""
    readable: list[tuple[int, int]] = []
    writable: list[tuple[int, int]] = []
    total = 0
    i = head
    hops = 0
    addr, ln, flags, nxt = mem.unpack_from(DESC_STRUCT, desc + 16 * i)
    while True:
        if flags & 4:
            if not indirect:
                return DescriptorChain(head, error="INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)")
            if flags & 1:
                return DescriptorChain(head, error="descriptor has both INDIRECT and NEXT (§2.7.5.3.1)")
            if ln == 0 or ln % 16:
                return DescriptorChain(head, error=f"indirect table length {ln} is not a non-zero multiple of 16")
            n = ln // 16
            if n > VIRTQ_MAX_INDIRECT_ENTRIES:
                return DescriptorChain(head, error=f"indirect table of {n} entries exceeds "
                                                   f"{VIRTQ_MAX_INDIRECT_ENTRIES}")
            if not mem.contains(addr, ln):
                return DescriptorChain(head, error=f"indirect table [{addr:#x}, +{ln:#x}) is outside guest memory")
            table, budget, j, thops = addr, size - len(readable) - len(writable), 0, 0
            while True:
                a, n_, f, nx = mem.unpack_from(DESC_STRUCT, table + 16 * j)
                if f & 4:
                    return DescriptorChain(head, error=f"INDIRECT flag inside indirect table entry {j} (§2.7.5.3.1)")
                if not mem.contains(a, n_):
                    return DescriptorChain(head, error=f"indirect entry {j} [{a:#x}, +{n_:#x}) is outside guest "
                                                       "memory")
                if f & 2:
                    writable.append((a, n_))
                elif writable:
                    return DescriptorChain(head, error=f"device-readable indirect entry {j} after a device-writable "
                                                       "descriptor")
                else:
                    readable.append((a, n_))
                total += n_
                budget -= 1
                if budget < 0:
                    return DescriptorChain(head, error=f"chain of {len(readable) + len(writable)}+ descriptors is "
                                                       f"longer than queue size {size}")
                if not f & 1:
                    break
                if nx >= n:
                    return DescriptorChain(head, error=f"indirect entry {j} next {nx} >= table size {n}")
                thops += 1
                if thops >= n:
                    return DescriptorChain(head, error=f"indirect table at {table:#x} loops (> {n} descriptors)")
                j = nx
            break
        if not mem.contains(addr, ln):
            return DescriptorChain(head, error=f"descriptor {i} [{addr:#x}, +{ln:#x}) is outside guest memory")
        if flags & 2:
            writable.append((addr, ln))
        elif writable:
            return DescriptorChain(head, error=f"device-readable descriptor {i} after a device-writable one")
        else:
            readable.append((addr, ln))
        total += ln
        if not flags & 1:
            break
        if nxt >= size:
            return DescriptorChain(head, error=f"descriptor {i} next {nxt} >= queue size {size}")
        hops += 1
        if hops >= size:
            return DescriptorChain(head, error=f"descriptor chain at head {head} loops (> {size} descriptors)")
        i = nxt
        addr, ln, flags, nxt = mem.unpack_from(DESC_STRUCT, desc + 16 * i)
    count = len(readable) + len(writable)
    if count > size:
        return DescriptorChain(head, error=f"chain of {count} descriptors is longer than queue size {size}")
    if total > VIRTQ_MAX_CHAIN_BYTES:
        return DescriptorChain(head, error=f"chain of {total} bytes is longer than 2^32 bytes")
    return DescriptorChain(head, readable, writable)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([1, 2, 4, 8]), indirect=st.booleans(), data=st.data())
@pytest.mark.spec("dev:split/desc#2")
def test_pop_gives_what_the_reference_walk_gives(size, indirect, data):
    """virtio 1.4 §2.7.4-§2.7.5.3: over garbage descriptor and indirect tables, every head pops as the plain
    reference walk says: the same segments, or the same error for the same first broken rule."""
    rig = Rig(size, indirect=indirect)
    # besides garbage, plausible descriptors (in RAM, small, the four direct flag values, next in range), so that
    # long chains and each rule's edge come up often
    # (next -1: the following slot)
    plausible = st.tuples(st.sampled_from([ALLOC_BASE + 0x1000, RAM0[1] - 8, RAM1[0], RAM1[0] + RAM1[1] - 8]),
                          st.sampled_from([0, 8, 9]), st.sampled_from([0, 1, 2, 3, 1, 3, 4]),
                          st.sampled_from([-1, -1, -1]) | st.integers(0, size))
    try:
        for i, (a, n, f, nx) in enumerate(data.draw(st.lists(plausible | _descs(size, 1).map(lambda x: x[0]),
                                                             min_size=size, max_size=size), label="descs")):
            rig.desc(i, a, n, f, i + 1 if nx < 0 else nx)
        table = data.draw(st.lists(plausible | _descs(4, 1).map(lambda x: x[0]), min_size=4, max_size=4),
                          label="indirect table")
        rig.mem.write(ALLOC_BASE, b"".join(DESC_STRUCT.pack(a, n, f, j + 1 if nx < 0 else nx)
                                           for j, (a, n, f, nx) in enumerate(table)))
        for head in range(size):
            rig.publish(head)
            want = _reference_walk(rig.mem, rig.layout.desc, size, indirect, head)
            assert rig.dev.pop() == want
            rig.dev.push(head, 0)
        assert rig.mem.misses == []
    finally:
        rig.mem.close()


@pytest.mark.spec("dev:split/desc#2")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([1, 4, 16]), indirect=st.booleans(), data=st.data())
def test_raw_garbage_never_escapes(size, indirect, data):
    """virtio 1.4 §2.7: raw random bytes over the descriptor table and the avail ring (flags, idx, ring,
    used_event) never make pop raise anything but QueueError or return a segment outside guest RAM."""
    rig = Rig(size, indirect=indirect)
    try:
        rig.mem.write(rig.layout.desc, data.draw(st.binary(min_size=16 * size, max_size=16 * size)))
        rig.mem.write(rig.layout.avail, data.draw(st.binary(min_size=6 + 2 * size, max_size=6 + 2 * size)))
        rig._raw_avail = rig.u16(rig.layout.avail + 2)
        _pop_everything(rig)
    finally:
        rig.mem.close()


def _pop_everything(rig: Rig) -> None:
    before = rig.mem.snapshot()
    mem = rig.mem
    for _ in range(rig.size + 2):
        try:
            chain = rig.dev.pop()
        except QueueError:
            break
        if chain is None:
            break
        for a, n in chain.readable + chain.writable:
            assert mem.contains(a, n)
        if chain.error is None:
            assert len(chain.readable) + len(chain.writable) <= rig.size
            assert chain.readable_len + chain.writable_len <= VIRTQ_MAX_CHAIN_BYTES
        else:
            assert chain.readable == [] and chain.writable == []
        assert 0 <= chain.head < rig.size
        rig.dev.push(chain.head, 0)
        rig.dev.needs_notification()
    assert changed_outside(mem, before, [rig.used_ring_span()]) == []
    assert mem.misses == []


# -- guest allocator -------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.booleans(), st.integers(1, 0x3000), st.sampled_from([1, 2, 8, 16, 64, 4096]), st.integers(0, 1000)
        ),
        max_size=60,
    )
)
def test_allocator_never_leaves_its_window(ops):
    """pyvirtio.dma: allocations are aligned, disjoint, inside [base, base+size); free coalesces, so freeing
    everything gives back the whole window; exhaustion is MemoryError."""
    mem = make_memory()
    base, size = ALLOC_BASE + 0x10, 0x8000
    try:
        al = GuestAllocator(mem, base, size)
        live: dict[int, int] = {}
        for is_alloc, n, align, pick in ops:
            if is_alloc or not live:
                try:
                    a = al.alloc(n, align)
                except MemoryError:
                    continue
                assert a % align == 0 and base <= a and a + n <= base + size
                assert all(a + n <= b or b + m <= a for b, m in live.items())
                live[a] = n
            else:
                a = sorted(live)[pick % len(live)]
                al.free(a)
                del live[a]
            assert al.free_bytes + al.allocated_bytes == size
        for a in list(live):
            al.free(a)
        assert al.alloc(size, 1) == base
    finally:
        mem.close()


def _first_fit(live: dict[int, int], base: int, size: int, n: int, align: int) -> int | None:
    """The reference: the lowest ``align``-aligned address whose ``n`` bytes fit a gap between live blocks."""
    cursor = base
    for a, m in [*sorted(live.items()), (base + size, 0)]:
        addr = (cursor + align - 1) & ~(align - 1)
        if addr + n <= a:
            return addr
        cursor = max(cursor, a + m)
    return None


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.booleans(), st.integers(1, 0x3000), st.sampled_from([1, 2, 8, 16, 64, 4096]), st.integers(0, 1000)
        ),
        max_size=80,
    )
)
def test_allocator_is_exactly_first_fit(ops):
    """pyvirtio.dma: every allocation is the lowest aligned address that fits (what the guest's rings, requests and
    indirect tables are placed at depends on it), and the state round-trips at every step."""
    mem = make_memory()
    base, size = ALLOC_BASE + 0x10, 0x8000
    try:
        al = GuestAllocator(mem, base, size)
        live: dict[int, int] = {}
        for is_alloc, n, align, pick in ops:
            if is_alloc or not live:
                want = _first_fit(live, base, size, n, align)
                try:
                    got: int | None = al.alloc(n, align)
                except MemoryError:
                    got = None
                assert got == want
                if got is not None:
                    live[got] = n
            else:
                a = sorted(live)[pick % len(live)]
                al.free(a)
                del live[a]
            again = GuestAllocator.from_state(mem, al.save_state())
            assert again.state() == al.state() and again._free_starts == al._free_starts
            assert again._free_sizes == al._free_sizes
    finally:
        mem.close()


# -- batches: pop_many and push_many are pop and push, faster --------------------------------------------------


def _drain(rig: Rig, many: bool) -> list[object]:
    """Everything the device takes from the ring: chains as tuples, a QueueError as its message."""
    seen: list[object] = []
    for _ in range(rig.size + 2):
        try:
            chains = rig.dev.pop_many() if many else [c for c in [rig.dev.pop()] if c is not None]
        except QueueError as e:
            seen.append(str(e))
            break
        if not chains:
            break
        seen += [(c.head, c.readable, c.writable, c.error) for c in chains]
    return seen


@pytest.mark.spec("dev:split/desc#2")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([1, 4, 16]), indirect=st.booleans(), event_idx=st.booleans(), data=st.data())
def test_pop_many_and_push_many_are_pop_and_push(size, indirect, event_idx, data):
    """The batch forms take the same chains (or raise the same ring-level error at the same chain) as one pop at
    a time from the same garbage, and push_many leaves the used ring exactly as pushes one at a time."""
    desc = data.draw(st.binary(min_size=16 * size, max_size=16 * size))
    avail = data.draw(st.binary(min_size=6 + 2 * size, max_size=6 + 2 * size))
    rigs = [Rig(size, indirect=indirect, event_idx=event_idx) for _ in range(2)]
    try:
        for rig in rigs:
            rig.mem.write(rig.layout.desc, desc)
            rig.mem.write(rig.layout.avail, avail)
        one, many = _drain(rigs[0], False), _drain(rigs[1], True)
        assert one == many
        heads = [c[0] for c in one if isinstance(c, tuple)]
        lens = data.draw(st.lists(st.integers(0, 0xFFFFFFFF), min_size=len(heads), max_size=len(heads)))
        for h, n in zip(heads, lens, strict=True):
            rigs[0].dev.push(h, n)
        rigs[1].dev.push_many(list(zip(heads, lens, strict=True)))
        assert rigs[0].mem.snapshot() == rigs[1].mem.snapshot()
        assert rigs[0].dev.state() == rigs[1].dev.state()
        assert rigs[0].dev.needs_notification() == rigs[1].dev.needs_notification()
    finally:
        for rig in rigs:
            rig.mem.close()


def test_push_many_checks_every_item_before_writing(make_rig) -> None:
    rig = make_rig(4)
    for k in range(2):
        rig.drv.add([], [(rig.buf(8), 8)], k)
    heads = [c.head for c in rig.dev.pop_many()]
    before = rig.mem.snapshot()
    for bad in ([(heads[0], 1), (9, 1)], [(heads[0], 1), (heads[1], 1 << 32)], [(heads[0], 1)] * 3):
        with pytest.raises(QueueError):
            rig.dev.push_many(bad)
        assert rig.mem.snapshot() == before
    rig.dev.push_many([(h, 8) for h in heads])
    assert rig.drv.drain_used() == [(0, 8), (1, 8)]

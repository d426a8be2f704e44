"""QueueState: plain, untrusted snapshot data; round trips exactly and every bad field is named on the way in."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vq_helpers import RAM0, RAM1, Rig, make_memory

from pyvirtio.errors import InvalidStateError
from pyvirtio.virtqueue import DeviceQueue, QueueState


def busy_rig(make_rig) -> Rig:
    """A ready queue with EVENT_IDX and INDIRECT, chains in flight and a pending notification mark."""
    rig = make_rig(8, event_idx=True, indirect=True)
    a = rig.buf(32)
    for i in range(5):
        rig.drv.add([(a, 8)], [(a, 8), (a, 8)], i)
    for _ in range(3):
        chain = rig.dev.pop()
        assert chain is not None
    rig.dev.push(0, 4)
    rig.dev.needs_notification()
    rig.dev.push(1, 4)
    return rig


def test_round_trip_fresh_and_busy(make_rig):
    """rust-vmm QueueState / crosvm snapshot(restore(snapshot)) == snapshot: from_state(state()).state() is
    the identity, for a queue never configured and for a busy ready one."""
    rig = busy_rig(make_rig)
    for q in (DeviceQueue(rig.mem, 256), rig.dev):
        s = q.state()
        assert DeviceQueue.from_state(rig.mem, s).state() == s


def test_round_trip_through_json_and_continue(make_rig):
    """QueueState is JSON-able via dataclasses.asdict; the restored queue carries on exactly where the first
    stopped (next pending chain, used ring position, notification mark)."""
    rig = busy_rig(make_rig)
    s = rig.dev.state()
    data = json.loads(json.dumps(dataclasses.asdict(s)))
    restored = DeviceQueue.from_state(rig.mem, QueueState.from_dict(data))
    assert restored.state() == s
    assert restored.avail_pending() == 2
    assert restored.needs_notification() is False  # entry 1 (pushed after the mark) != used_event 0
    chain = restored.pop()
    assert chain is not None and chain.head == 3 and chain.writable_len == 16
    restored.push(2, 0)
    restored.push(3, 0)
    got = rig.drv.drain_used()
    assert [t for t, _ in got] == [0, 1, 2, 3]


def test_from_dict_rejects_unknown_and_missing_keys():
    """Untrusted input: a snapshot with extra or missing fields is rejected, not half-applied."""
    good = dataclasses.asdict(DeviceQueue(make_memory(), 8).state())
    with pytest.raises(InvalidStateError, match="unknown"):
        QueueState.from_dict({**good, "evil": 1})
    del good["size"]
    with pytest.raises(InvalidStateError, match="missing"):
        QueueState.from_dict(good)
    with pytest.raises(InvalidStateError):
        QueueState.from_dict([])  # type: ignore[arg-type]


# Every field, with values the setters / activate() would refuse (the queue under test is ready, size 8 of 16).
BAD_VALUES: list[tuple[str, object]] = [
    ("max_size", 12),
    ("max_size", 0),
    ("max_size", 65536),
    ("max_size", 4),  # smaller than size 8: the check on size fires
    ("size", 6),
    ("size", 32),
    ("size", 0),
    ("size", True),
    ("ready", 1),
    ("ready", "yes"),
    ("desc_table", 0x1008),
    ("desc_table", -16),
    ("desc_table", 1 << 64),
    ("desc_table", RAM0[1] - 0x40),
    ("avail_ring", 0x2001),
    ("avail_ring", RAM1[0] - 0x10),
    ("avail_ring", "0x2000"),
    ("used_ring", 0x3002),
    ("used_ring", RAM1[0] + RAM1[1] - 8),
    ("next_avail", 0x10000),
    ("next_avail", -1),
    ("next_avail", 9),  # 9 chains in flight on a queue of 8
    ("next_used", 0x10000),
    ("next_used", 1.0),
    ("event_idx", 1),
    ("event_idx", "true"),
    ("indirect", None),
    ("indirect", 0),
    ("signalled_used", 0x10000),
    ("signalled_used", -1),
]


def test_every_field_has_bad_values():
    assert {f for f, _ in BAD_VALUES} == {f.name for f in dataclasses.fields(QueueState)}


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_single_bad_field_is_rejected(field, value):
    """rust-vmm TryFrom<QueueState>: each field goes through the same checks as the setters (§2.7 size and
    alignment, §2.7.6 in-flight <= Queue Size, u16 indices, u64 addresses, bools); the error names the field."""
    mem = make_memory()
    try:
        q = DeviceQueue(mem, 16)
        q.set_size(8)
        q.desc_table, q.avail_ring, q.used_ring = 0x1000, 0x2000, 0x3000
        q.event_idx = True
        q.activate()
        good = q.state()
        DeviceQueue.from_state(mem, good)
        bad = dataclasses.replace(good, **{field: value})
        with pytest.raises(InvalidStateError) as exc:
            DeviceQueue.from_state(mem, bad)
        named = "size" if (field, value) == ("max_size", 4) else field  # size 8 > max_size 4 blames size
        assert repr(named) in str(exc.value)
    finally:
        mem.close()


_ints = st.one_of(
    st.integers(-2, 40000),
    st.sampled_from([0, 1, 2, 8, 16, 0xFFFF, 0x10000, 0x1000, 0x2000, 0x3000, 1 << 64]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    vals=st.fixed_dictionaries(
        {
            "max_size": _ints,
            "size": _ints,
            "ready": st.one_of(st.booleans(), st.just(1)),
            "desc_table": _ints,
            "avail_ring": _ints,
            "used_ring": _ints,
            "next_avail": _ints,
            "next_used": _ints,
            "event_idx": st.booleans(),
            "indirect": st.booleans(),
            "signalled_used": _ints,
        }
    )
)
def test_arbitrary_state_is_rejected_or_round_trips(vals):
    """Untrusted snapshot data: any QueueState either fails with InvalidStateError or restores to a queue whose
    state() is the same QueueState — never another exception, never a half-built queue."""
    mem = make_memory()
    try:
        s = QueueState(**vals)
        try:
            q = DeviceQueue.from_state(mem, s)
        except InvalidStateError:
            return
        assert q.state() == s
    finally:
        mem.close()

"""The time-travel calendar: what UML sends, answered as the protocol wants; the kernel's waiting state as data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyvirtio.uml.calendar import DEFAULT_TOD, MESSAGE, MESSAGE_SIZE, NEVER, Calendar, TtOp, pack


def ack(reply: bytes | None) -> tuple[int, int, int]:
    assert reply is not None
    op, seq, t = MESSAGE.unpack(reply)
    assert op == TtOp.ACK
    return op, seq, t


def test_a_kernel_boots_and_waits() -> None:
    c = Calendar()
    assert ack(c.handle(pack(TtOp.START, 1, 0xFFFFFFFFFFFFFFFF), 0))[1] == 1
    assert c.started
    assert ack(c.handle(pack(TtOp.GET_TOD, 2, 0), 5))[2] == DEFAULT_TOD + 5
    assert ack(c.handle(pack(TtOp.GET, 3, 0), 5))[2] == 5
    assert c.runnable_at is None
    ack(c.handle(pack(TtOp.REQUEST, 4, 10_000), 5))
    assert c.runnable_at is None  # not waiting yet
    ack(c.handle(pack(TtOp.WAIT, 5, 0), 5))
    assert c.runnable_at == 10_000
    run = MESSAGE.unpack(c.grant(10_000))
    assert run[0] == TtOp.RUN and run[2] == 10_000
    assert not c.waiting and c.request is None
    assert c.handle(pack(TtOp.ACK, run[1], 0), 10_000) is None  # the kernel's ACK of RUN needs no answer


def test_waiting_for_nothing_and_never() -> None:
    c = Calendar()
    c.handle(pack(TtOp.START, 1, 0), 0)
    c.handle(pack(TtOp.WAIT, 2, 0), 0)
    assert c.waiting and c.runnable_at is None
    c.handle(pack(TtOp.REQUEST, 3, (1 << 63) - 1), 0)
    assert c.runnable_at is None and c.request is not None and c.request >= NEVER


def test_problems_are_recorded_not_raised() -> None:
    c = Calendar()
    assert c.handle(b"\x01\x02", 0) is None
    ack(c.handle(pack(TtOp.REQUEST, 1, 5), 0))  # before START
    ack(c.handle(MESSAGE.pack(77, 2, 0), 0))
    ack(c.handle(pack(TtOp.RUN, 3, 0), 0))
    c.handle(pack(TtOp.START, 4, 0), 10)
    ack(c.handle(pack(TtOp.UPDATE, 5, 3), 10))
    assert len(c.problems) == 6
    ack(c.handle(pack(TtOp.BROADCAST, 6, 0xAB), 10))
    assert c.broadcasts == [0xAB]


@given(st.binary(min_size=MESSAGE_SIZE, max_size=MESSAGE_SIZE), st.integers(0, 1 << 62))
def test_any_message_is_answered_or_ignored(raw: bytes, now: int) -> None:
    reply = Calendar().handle(raw, now)
    assert reply is None or len(reply) == MESSAGE_SIZE

"""The deterministic machine: virtual time, seeded determinism, interrupt delivery."""

from __future__ import annotations

import pytest

from pyvirtio import Machine
from pyvirtio.clock import MS, Scheduler
from pyvirtio.devices import Rng
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.rng import RngDriver


def scenario(seed: int) -> list[str]:
    m = Machine(16 << 20, seed=seed)
    fn = m.plug(Rng(seed=seed))
    drv = RngDriver(m, fn, GuestAllocator(m.memory, 1 << 20, 8 << 20), name="rng")
    drv.probe()
    for _ in range(3):
        drv.read(100)
    drv.suspend_bit()
    drv.resume_bit()
    return [str(e) for e in m.trace]


def test_same_inputs_same_trace() -> None:
    a, b = scenario(7), scenario(7)
    assert a == b and len(a) > 100


def test_run_until_times_out_at_the_deadline() -> None:
    s = Scheduler()
    fired: list[int] = []
    s.schedule(5 * MS, lambda: fired.append(s.now))
    assert not s.run_until(lambda: False, 2 * MS)
    assert s.now == 2 * MS and fired == []
    assert s.run_until(lambda: bool(fired), 10 * MS)
    assert fired == [5 * MS]


def test_run_until_is_not_reentrant() -> None:
    s = Scheduler()
    s.schedule(0, lambda: s.run_until(lambda: True, 1))
    with pytest.raises(RuntimeError):
        s.run_until(lambda: False, 10)


def test_interrupts_held_while_cpu_stopped() -> None:
    m = Machine(16 << 20)
    fn = m.plug(Rng())
    drv = RngDriver(m, fn, GuestAllocator(m.memory, 1 << 20, 8 << 20), name="rng")
    drv.probe()
    req = drv.request(64)
    m.stop_cpu()
    m.run_for(10 * MS)
    assert not req.done and m.interrupts == []
    m.start_cpu()
    m.run_for(1 * MS)
    assert req.done and len(m.interrupts) == 1


def test_public_api_driver_on_four_accessors() -> None:
    """Done-when: a driver written only against the four accessors and guest memory reads entropy."""
    import struct

    import pyvirtio
    from pyvirtio.devices import Rng as PublicRng

    m = pyvirtio.Machine(4 << 20)
    f = m.plug(PublicRng(seed=5))
    f.config_write(4, 2, 6)  # memory + bus master
    caps = {}
    pos = f.config_read(0x34, 1)
    while pos:
        if f.config_read(pos, 1) == 9:
            caps[f.config_read(pos + 3, 1)] = (f.config_read(pos + 4, 1), f.config_read(pos + 8, 4))
        pos = f.config_read(pos + 1, 1)
    bar, common = caps[1]
    nbar, notify = caps[2]

    def w(off: int, size: int, v: int) -> None:
        f.bar_write(bar, common + off, size, v)

    def r(off: int, size: int) -> int:
        return f.bar_read(bar, common + off, size)

    w(20, 1, 0)
    for s in (1, 3):
        w(20, 1, s)
    w(8, 4, 1)
    w(12, 4, 1)  # VERSION_1 only
    w(20, 1, 0x0B)
    assert r(20, 1) == 0x0B
    desc, avail, used, buf = 0x10000, 0x11000, 0x12000, 0x20000
    w(22, 2, 0)
    w(24, 2, 8)
    w(32, 4, desc)
    w(40, 4, avail)
    w(48, 4, used)
    w(28, 2, 1)
    w(20, 1, 0x0F)
    m.memory.write(desc, struct.pack("<QIHH", buf, 32, 2, 0))
    m.memory.write(avail, struct.pack("<HHH", 0, 1, 0))
    f.bar_write(nbar, notify, 2, 0)
    assert m.run_until(lambda: struct.unpack("<H", m.memory.read(used + 2, 2))[0] == 1, 10 * MS)
    _, length = struct.unpack("<II", m.memory.read(used + 4, 8))
    assert length == 32 and m.memory.read(buf, 32) != bytes(32)

"""One round trip per stateful class of the guest core and the virtqueues (crosvm ``suspendable_virtio_tests``):
after a real workload on a real :class:`~pyvirtio.Machine` with real devices, ``state(restore(state(x))) ==
state(x)``, through JSON as the S4 image stores it; and every field of the plain-data state is re-validated on
the way in (rust-vmm ``QueueState``: untrusted), failing with a one-line
:class:`~pyvirtio.errors.InvalidStateError` that names the field.

Adding a class is one entry in :data:`CASES` (a name and a function that runs a workload and returns a
:class:`Subject`) and, for the rejection tests, its rows in :data:`BAD_FIELDS`. Other test files can reuse
:class:`RoundTripCase`, :class:`Subject` and :func:`assert_round_trip`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from pyvirtio.clock import MS
from pyvirtio.devices import Rng, TestDevice
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import InvalidStateError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.guest.rng import RngDriver
from pyvirtio.machine import Machine
from pyvirtio.virtqueue import DeviceQueue, QueueState

State = dict[str, Any]


@dataclass
class Subject:
    """One object after a workload: its state, the state a fresh object has, and how to restore one."""

    state: State  # state(x) after the workload
    fresh: State  # state of the same kind of object before any workload (the workload must change it)
    restore: Callable[[State], State]  # build a new object from a state; return that object's state
    rejects_unknown_keys: bool = True


@dataclass(frozen=True)
class RoundTripCase:
    """A stateful class: ``build`` runs a real workload and returns the :class:`Subject`."""

    name: str
    build: Callable[[], Subject]


def through_json(state: State) -> State:
    """What an S4 image does to a state: JSON out and back in."""
    return json.loads(json.dumps(state))  # type: ignore[no-any-return]


def assert_round_trip(case: RoundTripCase) -> None:
    """``state(restore(state(x))) == state(x)`` after a non-trivial workload (the state differs from fresh)."""
    subject = case.build()
    assert subject.state != subject.fresh, f"{case.name}: the workload left the state as fresh"
    assert subject.restore(through_json(subject.state)) == subject.state


# -- a real workload --------------------------------------------------------------------------------------------------


@dataclass
class World:
    machine: Machine
    guest: Guest
    rng: RngDriver
    test: VirtioDriver
    rng_dev: Rng


def world() -> World:
    """A q35 machine with virtio-rng (slow, so a request stays in flight) and the test device, a guest kernel
    that probed both, entropy read, a request left in flight, a config change seen."""
    m = Machine(32 << 20, seed=3)
    rdev = Rng(bytes_per_us=1)
    rfn = m.plug(rdev, pcie_port=True)
    tdev = TestDevice()
    tfn = m.plug(tdev)
    g = Guest(m, KernelConfig())
    rng = RngDriver(m, rfn, g.alloc, name="rng")
    g.bind(rng)
    test = VirtioDriver(m, tfn, g.alloc, name="testdev")
    g.bind(test)
    for n in (16, 64, 8):
        assert len(rng.read(n, timeout=50 * MS)) == n
    rng.request(4096)
    assert m.run_until(lambda: rdev.inflight() == 1, 1 * MS)
    test.config_disable()
    tdev.host_set_value(7)
    m.run_for(1 * MS)
    assert test.config_change_pending
    return World(m, g, rng, test, rdev)


def allocator_case() -> Subject:
    w = world()
    mem = w.machine.memory
    fresh = GuestAllocator(mem, w.guest.alloc.base, w.guest.alloc.size)
    return Subject(w.guest.alloc.save_state(), fresh.save_state(),
                   lambda s: GuestAllocator.from_state(mem, s).save_state())


def virtio_driver_case() -> Subject:
    w = world()
    fn = w.machine.functions[1]

    def restore(s: State) -> State:
        drv = VirtioDriver(w.machine, fn, w.guest.alloc, name="testdev")
        drv.load_state(s)
        return drv.save_state()

    fresh = VirtioDriver(w.machine, fn, w.guest.alloc, name="testdev").save_state()
    return Subject(w.test.save_state(), fresh, restore, rejects_unknown_keys=False)


def rng_driver_case() -> Subject:
    w = world()
    fn = w.machine.functions[0]
    alloc_state = w.guest.alloc.save_state()

    def restore(s: State) -> State:  # the image kernel: the allocator first, then the driver
        alloc = GuestAllocator.from_state(w.machine.memory, alloc_state)
        drv = RngDriver(w.machine, fn, alloc, name="rng")
        drv.load_state(s)
        return drv.save_state()

    fresh = RngDriver(w.machine, fn, w.guest.alloc, name="rng").save_state()
    assert w.rng.outstanding, "the workload leaves a request in flight"
    return Subject(w.rng.save_state(), fresh, restore)


def device_queue_case() -> Subject:
    w = world()
    mem = w.machine.memory
    q = w.rng_dev.queues[0]
    return Subject(asdict(q.state()), asdict(DeviceQueue(mem, q.max_size).state()),
                   lambda s: asdict(DeviceQueue.from_state(mem, QueueState.from_dict(s)).state()))


#: Every guest-core stateful class (DriverQueue keeps no state of its own to save: its rings are guest RAM and
#: its bookkeeping is rebuilt when the driver re-creates the queue).
CASES = [
    RoundTripCase("GuestAllocator", allocator_case),
    RoundTripCase("VirtioDriver", virtio_driver_case),
    RoundTripCase("RngDriver", rng_driver_case),
    RoundTripCase("DeviceQueue", device_queue_case),
]
_BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def subjects() -> dict[str, Subject]:
    return {c.name: c.build() for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_round_trip(case: RoundTripCase) -> None:
    """crosvm snapshot(restore(snapshot)) == snapshot, after a real workload, through JSON."""
    assert_round_trip(case)


# -- rejection, field by field -----------------------------------------------------------------------------------------

_OUT_OF_RAM = 1 << 40


class Edit:
    """A bad value built from the real state, so it is bad for exactly one reason."""

    def __init__(self, label: str, edit: Callable[[State], None]) -> None:
        self.label, self.edit = label, edit

    def __repr__(self) -> str:
        return self.label


def _overlap(field: str) -> Edit:
    def edit(s: State) -> None:
        a, n = s[field][-1]
        s[field] = [*s[field], [a + n - 1, 8]]
    return Edit("overlap", edit)


def _set(field: str, value: Callable[[State], object], label: str) -> Edit:
    return Edit(label, lambda s: s.__setitem__(field, value(s)))


def _window_outside_ram(s: State) -> None:
    s["base"], s["allocated"] = _OUT_OF_RAM, []


#: (case, field, bad value or Edit): each must be refused with a one-line InvalidStateError naming the field
BAD_FIELDS: list[tuple[str, str, object]] = [
    ("GuestAllocator", "base", "0x100000"),
    ("GuestAllocator", "base", -4096),
    ("GuestAllocator", "base", Edit("outside-RAM", _window_outside_ram)),
    ("GuestAllocator", "size", 0),
    ("GuestAllocator", "size", True),
    ("GuestAllocator", "allocated", {"0": 16}),
    ("GuestAllocator", "allocated", [[0, 16]]),  # before the window
    ("GuestAllocator", "allocated", _overlap("allocated")),
    ("GuestAllocator", "allocated", _set("allocated", lambda s: [[s["base"] + 64, 0]], "zero-length")),
    ("GuestAllocator", "allocated", _set("allocated", lambda s: [[s["base"] + s["size"] - 8, 16]], "past-window")),
    ("GuestAllocator", "allocated", [["a", 1]]),
    ("VirtioDriver", "features", -1),
    ("VirtioDriver", "features", 1 << 64),
    ("VirtioDriver", "features", 0),  # no VERSION_1
    ("VirtioDriver", "features", 1.5),
    ("VirtioDriver", "failed", 1),
    ("VirtioDriver", "config_change_pending", "yes"),
    ("RngDriver", "features", None),
    ("RngDriver", "submitting", 0),
    ("RngDriver", "outstanding", None),
    ("RngDriver", "outstanding", [[1, 2, 3]]),
    ("RngDriver", "outstanding", [[0x100000, 0]]),
    ("RngDriver", "outstanding", [[-8, 8]]),
    ("RngDriver", "outstanding", _overlap("outstanding")),
    ("RngDriver", "outstanding", [[_OUT_OF_RAM, 16]]),  # not a block of the allocator
    ("DeviceQueue", "size", 3),
    ("DeviceQueue", "max_size", 0),
    ("DeviceQueue", "ready", 1),
    ("DeviceQueue", "desc_table", _OUT_OF_RAM),
    ("DeviceQueue", "next_avail", 1 << 16),
    ("DeviceQueue", "used_ring", "0"),
]


@pytest.mark.parametrize(("name", "field", "value"), BAD_FIELDS, ids=[f"{n}-{f}-{v!r}"[:60] for n, f, v in BAD_FIELDS])
def test_bad_field_is_rejected_naming_it(subjects: dict[str, Subject], name: str, field: str, value: object) -> None:
    """Untrusted state (rust-vmm QueueState): each bad field -> InvalidStateError, one line, naming the field."""
    subject = subjects[name]
    state = copy.deepcopy(subject.state)
    if isinstance(value, Edit):
        value.edit(state)
    else:
        state[field] = value
    with pytest.raises(InvalidStateError) as e:
        subject.restore(state)
    msg = str(e.value)
    assert "\n" not in msg and field in msg, msg


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_missing_and_unknown_fields_are_rejected(subjects: dict[str, Subject], case: RoundTripCase) -> None:
    """Every field is required; an unknown one is refused (except where a subclass owns further keys: the
    VirtioDriver core leaves them to it); a state that is not an object is refused."""
    subject = subjects[case.name]
    for key in subject.state:
        state = {k: v for k, v in subject.state.items() if k != key}
        with pytest.raises(InvalidStateError, match=key):
            subject.restore(state)
    if subject.rejects_unknown_keys:
        with pytest.raises(InvalidStateError, match="bogus"):
            subject.restore({**subject.state, "bogus": 1})
    else:
        assert subject.restore({**subject.state, "bogus": 1}) == subject.state
    with pytest.raises(InvalidStateError):
        subject.restore([1, 2])  # type: ignore[arg-type]


def test_every_case_has_rejection_rows() -> None:
    """Adding a class to CASES without BAD_FIELDS rows is caught here."""
    assert {n for n, _, _ in BAD_FIELDS} == set(_BY_NAME)

"""Register traces decoded into driver steps, and pyvirtio's model driver run as Linux 6.12 (no UML needed)."""

from __future__ import annotations

from pyvirtio.machine import Machine
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.uml.model import model_run
from pyvirtio.uml.regtrace import Cat, Step, compare, driver_steps, phases, side_by_side
from pyvirtio.uml.scenarios import DeviceSpec


def test_the_model_driver_as_linux_612_negotiates_what_linux_612_does() -> None:
    m = model_run((DeviceSpec("rng", True, True), DeviceSpec("gpu", True, True)), sleep=True)
    assert set(m.cuts) == {"probe", "suspend", "resume"}
    rng = [s.text for s in m.steps("rng", "probe")]
    assert "driver_feature[1] <- 0x00000101" in rng  # VERSION_1 + RING_RESET: no SUSPEND (6.12 lacks it)
    assert rng.index("MSI-X control <- enable|mask-all") < rng.index("MSI-X control <- enable")
    assert rng.index("queue 0 vector <- 0x1") < rng.index("MSI-X entry 1 unmasked") < rng.index("queue 0 enable <- 1")
    gpu = [s.text for s in m.steps("gpu", "probe")]
    assert "driver_feature[0] <- 0x3000000e" in gpu  # no BLOB_ALIGNMENT (6.12 lacks it)
    assert gpu.index("queue 1 enable <- 1") < gpu.index("device config read 0x8/4")  # config after the queues
    assert [s.text for s in m.steps("rng", "suspend")] == ["PMCSR <- D3hot"]  # No_Soft_Reset: nothing else
    assert next(s.text for s in m.steps("rng", "resume")) == "PMCSR <- D0"
    assert m.steps("nope", "probe") == [] and m.steps("rng", "nope") == []


def test_decoding_is_the_same_for_any_trace() -> None:
    machine = Machine(16 << 20)
    m = model_run((DeviceSpec("rng"),))
    steps = m.steps("rng", "probe")
    assert steps[0].cat is Cat.COMMAND and any(s.cat is Cat.STATUS for s in steps)
    assert all(isinstance(s, Step) and str(s) == s.text for s in steps)
    fn = m.functions["rng"]
    notify = [TraceEvent(t, Kind.BAR_WRITE, "rng", {"bar": 4, "offset": 0x3000, "size": 2, "value": 0})
              for t in (1, 2, 3)]
    assert [s.text for s in driver_steps(fn, notify)] == ["notify queue 0"]  # repeats collapse
    assert driver_steps(fn, notify, since=5) == []
    del machine


def test_compare_and_phases() -> None:
    a = [Step(1, Cat.STATUS, "status <- 0x00"), Step(2, Cat.ENUMERATION, "cfg 0x10 <- sizing"),
         Step(3, Cat.STATUS, "status <- 0x01"), Step(9, Cat.NOTIFY, "notify queue 0")]
    b = [Step(1, Cat.STATUS, "status <- 0x00"), Step(3, Cat.STATUS, "status <- 0x01")]
    diffs = compare(a, b)
    assert [(d.kind, d.real) for d in diffs] == [("only-real", ("notify queue 0",))]  # enumeration not compared
    assert compare(b, b) == []
    assert diffs[0].lines() == ["  - real:  notify queue 0"]
    lines = side_by_side(a, b)
    assert lines[1].startswith("= status <- 0x00") and lines[-1].startswith("< notify queue 0")
    ph = phases(a, [("probe", 0), ("late", 5)])
    assert [s.t for s in ph["probe"]] == [1, 2, 3] and [s.t for s in ph["late"]] == [9] and ph["before"] == []

"""How a real-VM cell is put together from its cycles (no QEMU needed): per-device notes are routed by the field
they were recorded in, never by parsing their text; outcome and resources are the report's enums."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyvirtio.report import REAL_VM_PROFILE, Outcome, SleepState, Source
from pyvirtio.vm.probes import DeviceState, ProbeResult, QmpQueueStatus
from pyvirtio.vm.scenario import DEVICES, CellRun, CycleData, cell_name
from pyvirtio.vm.stacks import DEFAULT_STACK, SYSTEM


def _state(avail: int) -> DeviceState:
    return DeviceState(0x0F, (QmpQueueStatus(0, 0x1000, avail, avail),))


def _cycle(index: int, slept: bool) -> CycleData:
    cyc = CycleData(index, slept=slept, suspend_ms=10.0, resume_ms=20.0, display_restored=False, new_frame=False)
    for k, name in enumerate(DEVICES):
        cyc.before[name], cyc.after[name], cyc.after_probe[name] = _state(k), _state(k), _state(k + 1)
        cyc.note(name, f"whatever {name} said, with a colon: and no prefix")
    cyc.probes = {n: ProbeResult(True, "fine") for n in ("blk", "rng", "input")}
    cyc.notes.append("before anything: a cell-level note that starts like a device note")
    return cyc


def test_notes_go_where_they_were_recorded(tmp_path: Path) -> None:
    assets: Any = SimpleNamespace(stack=DEFAULT_STACK, stack_info=SYSTEM, frame_size=(1280, 800))  # no QEMU
    run = CellRun(assets, "S3", "pc", cycles=2, out_dir=tmp_path)
    try:
        cell = run._finish([_cycle(1, True), _cycle(2, False)])
    finally:
        run.scratch.rmdir()
    assert (cell.source, cell.profile, cell.sleep) == (Source.REAL_VM, REAL_VM_PROFILE, SleepState.S3)
    assert cell.outcome is Outcome.ABORTED  # one of two cycles did not sleep
    for name in DEVICES:
        notes = cell.devices[name].notes
        assert notes[:2] == [f"cycle 1: whatever {name} said, with a colon: and no prefix",
                             f"cycle 2: whatever {name} said, with a colon: and no prefix"]
    assert "cycle 1: before anything: a cell-level note that starts like a device note" in cell.notes
    assert not any("whatever" in n for n in cell.notes)
    assert cell.devices["rng"].queues_alive is True and cell.devices["gpu"].functional_after is False
    assert (tmp_path / cell_name("S3", "pc")).is_dir() and cell_name(SleepState.S2IDLE, "q35") == "s2idle-q35"

"""S4 resumes on a machine built from the image file only: the matrix's note "resumed machine built from the image
file only (no shared objects)" is true by construction, and this walk of both object graphs proves it."""

from __future__ import annotations

import enum
import gc
import sys
from pathlib import Path

import pytest

from pyvirtio.pm import scenario
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import DEFAULT_PROFILES, parse_profile
from pyvirtio.pm.system import System, build_system
from pyvirtio.report import CellResult, SleepState, Source

_IMMUTABLE = (int, float, str, bytes, bool, type(None), tuple, frozenset, type, enum.Enum)


def _shared_by_design() -> set[int]:
    """Module-level values of pyvirtio (constants, tables) and class attributes: shared by every machine."""
    ids: set[int] = set()
    for name, module in list(sys.modules.items()):
        if name.startswith("pyvirtio"):
            for v in vars(module).values():
                ids.add(id(v))
                if isinstance(v, type):
                    ids.update(id(x) for x in vars(v).values())
    return ids


def object_ids(system: System) -> set[int]:
    """ids of the mutable objects reachable from a system: pyvirtio objects with a ``__dict__`` and the
    containers they hold (lists, dicts, sets, bytearrays), minus what is shared by design."""
    skip = _shared_by_design()
    seen: set[int] = set()
    stack: list[object] = [system.machine, system.guest, system.gpu_dev, system.gpu_drv, system.rng_drv]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip or isinstance(obj, _IMMUTABLE):
            continue
        if callable(obj) and not hasattr(obj, "__dict__"):
            continue
        stateful = type(obj).__module__.startswith("pyvirtio") and hasattr(obj, "__dict__")
        if not (stateful or isinstance(obj, (list, dict, set, bytearray))):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    assert len(seen) > 100, "the walk must reach the machine's state"
    return seen


def _hibernate(profile: str, tmp_path: Path) -> tuple[System, System, CellResult]:
    cfg = ScenarioConfig(resources=2)
    old = build_system(parse_profile(profile), cfg)
    cell = CellResult(source=Source.MODEL, profile=profile, sleep=SleepState.S4)
    earlier = {n: [old.machine.function(n).device.status] for n in ("gpu", "rng")}
    new = scenario._hibernate_and_resume(old, cell, tmp_path, earlier, len(old.machine.trace))
    return old, new, cell


@pytest.mark.parametrize("profile", DEFAULT_PROFILES)
def test_resumed_system_shares_no_object_with_the_hibernated_one(profile: str, tmp_path: Path) -> None:
    """Every profile's S4 path (freeze, thaw, write the image, power off, boot from the file): no mutable object
    of the resumed system is reachable from the one that hibernated, and the cell says so."""
    old, new, cell = _hibernate(profile, tmp_path)
    assert object_ids(old) & object_ids(new) == set()
    assert scenario.S4_ISOLATION_NOTE in cell.notes
    assert cell.notes[-1] == "resumed machine built from the image file only (no shared objects)"


def test_the_walk_finds_a_shared_object(tmp_path: Path) -> None:
    """The proof can fail: one object handed from the old system to the new one is found."""
    old, new, _ = _hibernate("s4-replay", tmp_path)
    new.gpu_dev.leak = old.guest.drivers  # type: ignore[attr-defined]
    shared = object_ids(old) & object_ids(new)
    assert id(old.guest.drivers) in shared

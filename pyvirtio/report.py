"""The report format shared by the model (``pyvirtio pm matrix``) and the real VM (``pyvirtio vm``).

Contract:

* one :class:`CellResult` per (source, profile, sleep state, machine type); ``None`` means "not measured here";
* the vocabulary both sides use is defined here, once: :class:`SleepState`, :class:`Source`, :class:`Outcome`,
  :class:`ResourceFate` and :data:`REAL_VM_PROFILE`. They are string enums, so ``report.json`` holds their
  values (``"S3"``, ``"ok"``, ``"re-created"``) and a report written before they existed reads the same;
* notes (``CellResult.notes``, ``DeviceOutcome.notes``) are prose for people: no code reads data out of them;
* a report read from a file is untrusted: :meth:`Report.read` reads at most :data:`MAX_REPORT_BYTES` of bounded
  JSON (:func:`~pyvirtio.atomicio.loads_json`: UTF-8, strict, nested at most
  :data:`~pyvirtio.atomicio.MAX_JSON_DEPTH` deep), and :meth:`Report.from_dict` re-validates every field by
  type and range (:meth:`CellResult.from_dict`, :meth:`DeviceOutcome.from_dict`: an unknown key, a missing
  required one, a wrong type or an out-of-range value fails) with one :class:`~pyvirtio.errors.UserInputError`
  line naming the field by its path (``cells[0].devices['gpu'].status_sequence[2]``) and its value cut short;
  strings it accepts may hold anything (rich markup too): whoever prints them disables markup;
* the JSON keys of version 1 never change (readers outside pyvirtio depend on them); a key that is absent
  takes its default (``None``: not measured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pyvirtio.atomicio import brief, loads_json, write_text_atomic
from pyvirtio.errors import UserInputError

REPORT_FORMAT = "pyvirtio-pm-report"
#: The values of :attr:`CellResult.placement`: on the root bus, behind a PCIe root port, and behind one with the
#: function's PMCSR No_Soft_Reset set.
ROOT_BUS, ROOT_PORT, ROOT_PORT_NSR = "pcie.0", "root-port", "root-port, No_Soft_Reset"


def placement(pcie_port: bool, no_soft_reset: bool) -> str:
    """The :attr:`CellResult.placement` value of a function plugged so."""
    return (ROOT_PORT_NSR if no_soft_reset else ROOT_PORT) if pcie_port else ROOT_BUS
REPORT_VERSION = 1
#: Largest report file :meth:`Report.read` reads.
MAX_REPORT_BYTES = 64 << 20
#: Largest count a report field holds (``config_events_after_resume``).
MAX_COUNT = 1 << 32

_E = TypeVar("_E", bound=StrEnum)


class SleepState(StrEnum):
    """The system sleep states a cell goes through (ACPI S3, Linux s2idle, ACPI S4 hibernation)."""

    S3 = "S3"
    S2IDLE = "s2idle"
    S4 = "S4"


class Source(StrEnum):
    """Where a cell was measured."""

    MODEL = "model"
    REAL_VM = "real-vm"


class Outcome(StrEnum):
    """How the sleep attempt itself ended (what survived it is in the other fields)."""

    OK = "ok"  # the guest slept and woke
    REFUSED = "refused"  # a PM notifier refused the transition: the guest never tried to sleep
    ABORTED = "aborted"  # a device's suspend/freeze callback failed, or the sleep command returned early
    ERROR = "error"  # the cell could not be run or measured (see its notes)


class ResourceFate(StrEnum):
    """What became of the host's virtio-gpu resources across the cycle."""

    KEPT = "kept"  # the same objects, never destroyed
    RECREATED = "re-created"  # destroyed (reset or power-off) and rebuilt by the driver, all of them
    PARTIAL = "partial"  # some of them are back
    LOST = "lost"  # none of them are back


#: The model profile that matches the real VM (Debian's QEMU 7.2 with a Linux 6.1 guest): real-VM cells carry it.
REAL_VM_PROFILE = "baseline"


@dataclass
class DeviceOutcome:
    """What happened to one virtio device across the sleep cycle."""

    name: str  # "gpu", "rng", "blk", "input"
    status_sequence: list[int] = field(default_factory=list)  # device-status values presented, no repeats
    queues_alive: bool | None = None  # every queue the driver set up is configured and serviced after resume
    functional_after: bool | None = None  # a functional probe after resume succeeded
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: object, where: str = "device") -> DeviceOutcome:
        """Parse one device of ``report.json``, re-validated field by field (``where`` names it in errors)."""
        r = _Fields(data, where, cls, required=("name",))
        seq = r.value("status_sequence", [])
        if not isinstance(seq, list):
            raise r.bad("status_sequence", seq, "not a list of status bytes")
        for i, v in enumerate(seq):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
                raise _bad(f"{where}.status_sequence[{i}]", v, "not a status byte 0..255")
        return cls(name=r.text("name"), status_sequence=[int(v) for v in seq], queues_alive=r.flag("queues_alive"),
                   functional_after=r.flag("functional_after"), notes=r.texts("notes"))


@dataclass
class CellResult:
    """One profile through one sleep state on one machine type, as measured by one source."""

    source: Source
    profile: str  # "baseline", "gpu-freezing", "freeze-mode", "no-soft-reset", "suspend-bit", "s4-replay", "a+b"
    sleep: SleepState
    machine_type: str = "q35"  # "pc" or "q35" (pyvirtio.machine.MachineType values)
    outcome: Outcome = Outcome.OK
    display_restored: bool | None = None  # scanout pixel-identical before and after
    new_frame_after_resume: bool | None = None  # a frame drawn after resume reached the screen
    resources: ResourceFate | None = None
    queues_alive: bool | None = None
    inflight_completed: bool | None = None  # requests in flight at suspend all completed, none lost
    config_events_after_resume: int | None = None  # deliveries of the change made while asleep (want 1)
    violations: list[str] = field(default_factory=list)  # spec statements broken, by device or driver
    suspend_ms: float | None = None
    resume_ms: float | None = None
    devices: dict[str, DeviceOutcome] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # "before"/"after" -> PNG path
    notes: list[str] = field(default_factory=list)
    #: where each device sat: "pcie.0" (the root bus), "root-port", or "root-port, No_Soft_Reset" (PLACEMENTS)
    placement: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # plain strings (a report read from JSON, a caller's literal) become the enums; anything else is a
        # ValueError naming the value
        self.source = Source(self.source)
        self.sleep = SleepState(self.sleep)
        self.outcome = Outcome(self.outcome)
        if self.resources is not None:
            self.resources = ResourceFate(self.resources)

    @classmethod
    def from_dict(cls, data: object, where: str = "cell") -> CellResult:
        """Parse one cell of ``report.json``, re-validated field by field (``where`` names it in errors)."""
        r = _Fields(data, where, cls, required=("source", "profile", "sleep"))
        raw_devices = r.value("devices", {})
        if not isinstance(raw_devices, dict):
            raise r.bad("devices", raw_devices, "not an object of devices")
        devices = {k: DeviceOutcome.from_dict(v, f"{where}.devices[{brief(k)}]") for k, v in raw_devices.items()}
        return cls(
            source=r.enum("source", Source), profile=r.text("profile"), sleep=r.enum("sleep", SleepState),
            machine_type=r.text("machine_type", "q35"), outcome=r.enum("outcome", Outcome, Outcome.OK),
            display_restored=r.flag("display_restored"), new_frame_after_resume=r.flag("new_frame_after_resume"),
            resources=r.enum("resources", ResourceFate, None), queues_alive=r.flag("queues_alive"),
            inflight_completed=r.flag("inflight_completed"),
            config_events_after_resume=r.count("config_events_after_resume"), violations=r.texts("violations"),
            suspend_ms=r.millis("suspend_ms"), resume_ms=r.millis("resume_ms"), devices=devices,
            images=r.text_map("images"), notes=r.texts("notes"), placement=r.text_map("placement"))

    @property
    def key(self) -> tuple[str, str, str]:
        """(profile, sleep state, machine type): what identifies the cell within one source."""
        return (self.profile, self.sleep.value, self.machine_type)


@dataclass
class Report:
    """A list of cells and free-form metadata (who measured, with which versions and configuration)."""

    cells: list[CellResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (enums as their values)."""
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "meta": self.meta,
                "cells": [asdict(c) for c in self.cells]}

    def write(self, path: str | Path) -> None:
        """Write the report atomically as sorted, indented JSON."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """Parse and re-validate a report document; one-line :class:`UserInputError` naming the bad field."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise UserInputError("not a pyvirtio report (missing or wrong 'format')")
        version = data.get("version")
        if type(version) is not int or version != REPORT_VERSION:
            raise UserInputError(f"unsupported report version {brief(version)}")
        unknown = sorted(str(k) for k in data if k not in ("format", "version", "meta", "cells"))
        if unknown:
            raise UserInputError(f"malformed report: unknown field(s) {brief(unknown)}")
        raw_cells, meta = data.get("cells"), data.get("meta", {})
        if not isinstance(raw_cells, list):
            raise _bad("cells", raw_cells, "not a list of cells")
        if not isinstance(meta, dict):
            raise _bad("meta", meta, "not an object")
        return cls(cells=[CellResult.from_dict(c, f"cells[{i}]") for i, c in enumerate(raw_cells)], meta=dict(meta))

    @classmethod
    def read(cls, path: str | Path) -> Report:
        """Read and parse ``path``; one-line :class:`UserInputError` if it cannot be read or is not a report."""
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_REPORT_BYTES + 1)
        except OSError as e:
            raise UserInputError(f"cannot read report {path}: {e.strerror}") from None
        if len(raw) > MAX_REPORT_BYTES:
            raise UserInputError(f"report {path} is larger than {MAX_REPORT_BYTES >> 20} MiB")
        return cls.from_dict(loads_json(raw, f"report {path}"))


# -- validation of untrusted reports ---------------------------------------------------------------------------


def _bad(where: str, value: object, why: str) -> UserInputError:
    return UserInputError(f"malformed report: {where} = {brief(value)}: {why}")


class _Fields:
    """The fields of one JSON object that should be a ``cls`` dataclass: no unknown key, every ``required`` key
    present; typed accessors with the dataclass's defaults for absent keys."""

    def __init__(self, data: object, where: str, cls: type[Any], required: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise _bad(where, data, "not an object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names)
        missing = [k for k in required if k not in data]
        if unknown or missing:
            raise UserInputError(f"malformed report: {where}: unknown field(s) {brief(unknown)}, "
                                 f"missing field(s) {missing}")
        self.data: Mapping[str, object] = data
        self.where = where

    def bad(self, name: str, value: object, why: str) -> UserInputError:
        """The error for field ``name``."""
        return _bad(f"{self.where}.{name}", value, why)

    def value(self, name: str, default: object) -> object:
        """The raw value of ``name``, ``default`` when absent."""
        return self.data.get(name, default)

    def enum(self, name: str, kind: type[_E], default: object = ...) -> Any:
        """A value of the string enum ``kind`` (``default`` when absent; ``None`` allowed when it is the
        default)."""
        v = self.data[name] if default is ... else self.data.get(name, default)
        if v is None and default is None:
            return None
        if isinstance(v, str):
            try:
                return kind(v)
            except ValueError:
                pass
        raise self.bad(name, v, f"not one of {', '.join(k.value for k in kind)}")

    def text(self, name: str, default: str | None = None) -> str:
        """A string."""
        v = self.data[name] if default is None else self.data.get(name, default)
        if not isinstance(v, str):
            raise self.bad(name, v, "not a string")
        return v

    def flag(self, name: str) -> bool | None:
        """``true``, ``false`` or ``null`` (absent: ``null``, not measured)."""
        v = self.data.get(name)
        if v is not None and type(v) is not bool:
            raise self.bad(name, v, "not true, false or null")
        return v

    def count(self, name: str) -> int | None:
        """A count ``0 <= n < 2^32`` or ``null``."""
        v = self.data.get(name)
        if v is not None and (type(v) is not int or not 0 <= v < MAX_COUNT):
            raise self.bad(name, v, "not a count 0..2^32-1 or null")
        return v

    def millis(self, name: str) -> float | None:
        """A finite non-negative duration in ms (an integer is taken as a float) or ``null``."""
        v = self.data.get(name)
        if v is None:
            return None
        try:
            ms = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        except OverflowError:  # an integer beyond the float range
            ms = math.nan
        if not (math.isfinite(ms) and ms >= 0):
            raise self.bad(name, v, "not a finite duration >= 0 in ms or null")
        return ms

    def texts(self, name: str) -> list[str]:
        """A list of strings (absent: empty)."""
        v = self.data.get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.bad(name, v, "not a list of strings")
        return list(v)

    def text_map(self, name: str) -> dict[str, str]:
        """An object whose values are strings (absent: empty)."""
        v = self.data.get(name, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise self.bad(name, v, "not an object of strings")
        return dict(v)

"""The report format shared by the model (``pyvirtio pm matrix``) and the real VM (``pyvirtio vm``).

Contract:

* one :class:`CellResult` per (source, profile, sleep state, machine type); ``None`` means "not measured here";
* the vocabulary both sides use is defined here, once: :class:`SleepState`, :class:`Source`, :class:`Outcome`,
  :class:`ResourceFate` and :data:`REAL_VM_PROFILE`. They are string enums, so ``report.json`` holds their
  values (``"S3"``, ``"ok"``, ``"re-created"``) and a report written before they existed reads the same;
* notes (``CellResult.notes``, ``DeviceOutcome.notes``) are prose for people: no code reads data out of them;
* :meth:`Report.from_dict` re-validates everything and fails with one :class:`~pyvirtio.errors.UserInputError`
  line; the JSON keys of version 1 never change (readers outside pyvirtio depend on them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.errors import UserInputError

REPORT_FORMAT = "pyvirtio-pm-report"
REPORT_VERSION = 1


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

    def __post_init__(self) -> None:
        # plain strings (a report read from JSON, a caller's literal) become the enums; anything else is a
        # ValueError naming the value
        self.source = Source(self.source)
        self.sleep = SleepState(self.sleep)
        self.outcome = Outcome(self.outcome)
        if self.resources is not None:
            self.resources = ResourceFate(self.resources)

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
        """Parse and re-validate a report document; one-line :class:`UserInputError` on anything wrong."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise UserInputError("not a pyvirtio report (missing or wrong 'format')")
        if data.get("version") != REPORT_VERSION:
            raise UserInputError(f"unsupported report version {data.get('version')!r}")
        cells = []
        try:
            for raw in data["cells"]:
                fields = dict(raw)
                devices = {k: DeviceOutcome(**v) for k, v in fields.pop("devices", {}).items()}
                cells.append(CellResult(**fields, devices=devices))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserInputError(f"malformed report cell: {e}") from None
        return cls(cells=cells, meta=dict(data.get("meta", {})))

    @classmethod
    def read(cls, path: str | Path) -> Report:
        """Read and parse ``path``; one-line :class:`UserInputError` if it cannot be read or is not a report."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise UserInputError(f"cannot read report {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise UserInputError(f"report {path} is not JSON: {e.msg} at line {e.lineno}") from None
        return cls.from_dict(data)

"""The report format shared by the model (``pyvirtio pm matrix``) and the real VM (``pyvirtio vm``).

One :class:`CellResult` per (source, profile, sleep state, machine type). ``None`` means "not measured here".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.errors import UserInputError

REPORT_FORMAT = "pyvirtio-pm-report"
REPORT_VERSION = 1


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
    source: str  # "model" or "real-vm"
    profile: str  # "baseline", "gpu-freezing", "freeze-mode", "no-soft-reset", "suspend-bit", "s4-replay", "a+b"
    sleep: str  # "S3", "s2idle", "S4"
    machine_type: str = "q35"  # "pc" or "q35"
    outcome: str = "ok"  # "ok", "refused" (guest would not sleep), "aborted" (suspend failed), "error"
    display_restored: bool | None = None  # scanout pixel-identical before and after
    new_frame_after_resume: bool | None = None  # a frame drawn after resume reached the screen
    resources: str | None = None  # "kept", "re-created", "lost", "partial"
    queues_alive: bool | None = None
    inflight_completed: bool | None = None  # requests in flight at suspend all completed, none lost
    config_events_after_resume: int | None = None  # deliveries of the change made while asleep (want 1)
    violations: list[str] = field(default_factory=list)  # spec statements broken, by device or driver
    suspend_ms: float | None = None
    resume_ms: float | None = None
    devices: dict[str, DeviceOutcome] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # "before"/"after" -> PNG path
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.profile, self.sleep, self.machine_type)


@dataclass
class Report:
    cells: list[CellResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "meta": self.meta,
                "cells": [asdict(c) for c in self.cells]}

    def write(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise UserInputError("not a pyvirtio report (missing or wrong 'format')")
        if data.get("version") != REPORT_VERSION:
            raise UserInputError(f"unsupported report version {data.get('version')!r}")
        cells = []
        try:
            for raw in data["cells"]:
                devices = {k: DeviceOutcome(**v) for k, v in raw.pop("devices", {}).items()}
                cells.append(CellResult(**raw, devices=devices))
        except (KeyError, TypeError) as e:
            raise UserInputError(f"malformed report cell: {e}") from None
        return cls(cells=cells, meta=dict(data.get("meta", {})))

    @classmethod
    def read(cls, path: str | Path) -> Report:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise UserInputError(f"cannot read report {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise UserInputError(f"report {path} is not JSON: {e.msg} at line {e.lineno}") from None
        return cls.from_dict(data)

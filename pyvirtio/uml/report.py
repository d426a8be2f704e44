"""A UML run as a report: JSON for files, lines for the terminal, and the determinism check of two runs.

Contract. :func:`run_report` is the JSON-ready record of a scenario run (versions, mode, seed, how it ended, the
timings, every check, every violation the device models and the driver monitors recorded, the kernel's warnings,
the bridge's counters, the whole register-level trace and, when given, the comparison with the model driver);
:func:`write_report` writes it atomically. :func:`trace_lines` formats the register-level trace.
:func:`first_difference` compares two runs event by event (the register-level trace with its virtual times, then
the machine trace) and names the first place they differ, or None when they are the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.uml.model import PhaseComparison
from pyvirtio.uml.runner import RunResult
from pyvirtio.uml.scenarios import ScenarioResult
from pyvirtio.vm.uml_kernel import UmlAssets

REPORT_FORMAT = "pyvirtio-uml-report/1"


def _jsonable(v: object) -> object:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    return str(v)


def violations(r: RunResult) -> list[dict[str, Any]]:
    """Every violation of the run: the device models' (rules the kernel broke, seen by the device), the driver
    monitors' (driver statements checked at register level) and the PCI-over-virtio carriers'."""
    out: list[dict[str, Any]] = []
    for e in r.device_violations:
        out.append({"source": "device", "device": e.src, "t": e.t, "rule": str(e.detail.get("rule", "")),
                    "detail": _jsonable({k: v for k, v in e.detail.items() if k != "rule"})})
    for name, vs in r.driver_violations.items():
        for v in vs:
            out.append({"source": "driver-monitor", "device": name, "rule": v.rule.name,
                        "statements": list(v.rule.ids), "detail": v.detail, "access": v.access})
    for f in r.carrier_findings:
        out.append({"source": "virt-pci", **{k: _jsonable(x) for k, x in f.items()}})
    return out


def trace_lines(r: RunResult, limit: int | None = None) -> list[str]:
    """The register-level trace, one line per command or event (the first ``limit``)."""
    recs = r.wire if limit is None else r.wire[:limit]
    return [w.line() for w in recs]


def run_report(res: ScenarioResult, assets: UmlAssets | None = None,
               comparison: Sequence[PhaseComparison] = ()) -> dict[str, Any]:
    """The JSON record of a scenario run (see the module contract)."""
    r = res.run
    return {
        "format": REPORT_FORMAT,
        "scenario": res.scenario.name,
        "about": res.scenario.about,
        "meta": {**(assets.versions() if assets else {}), "mode": r.mode.value, "seed": r.seed},
        "ended": r.ended,
        "guest_rc": r.guest_rc,
        "ok": res.ok,
        "timings": {"wall_s": round(r.wall_seconds, 3),
                    "init_reached_s": None if r.boot_seconds is None else round(r.boot_seconds, 3),
                    "virtual_ms": round(r.virtual_ns / 1e6, 3)},
        "checks": [{"name": c.name, "ok": c.ok, "seen": c.seen} for c in res.checks],
        "violations": violations(r),
        "warnings": r.warnings,
        "notes": r.notes,
        "bridge": _jsonable(vars(r.stats)),
        "devices": {f.name: {"status_final": f.device.status, "features": f.device.driver_features}
                    for f in r.functions},
        "comparison": [{"device": c.device, "phase": c.phase, "real": [s.text for s in c.real],
                        "model": [s.text for s in c.model],
                        "differences": [{"kind": d.kind, "real": list(d.real), "model": list(d.model)}
                                        for d in c.differences]} for c in comparison],
        "register_trace": [w.to_dict() for w in r.wire],
    }


def write_report(path: Path, data: dict[str, Any]) -> None:
    """Write the report atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def first_difference(a: RunResult, b: RunResult) -> str | None:
    """Where two runs first differ (register-level trace, then machine trace), or None (see the module
    contract)."""
    for i, (x, y) in enumerate(zip(a.wire, b.wire, strict=False)):
        if x != y:
            return f"register trace entry {i}: {x.line().strip()} | {y.line().strip()}"
    if len(a.wire) != len(b.wire):
        return f"register traces have {len(a.wire)} and {len(b.wire)} entries"
    for i, (e, f) in enumerate(zip(a.trace, b.trace, strict=False)):
        if (e.t, e.kind, e.src, e.detail) != (f.t, f.kind, f.src, f.detail):
            return f"machine trace event {i}: {e} | {f}"
    if len(a.trace) != len(b.trace):
        return f"machine traces have {len(a.trace)} and {len(b.trace)} events"
    return None


__all__ = ["REPORT_FORMAT", "first_difference", "run_report", "trace_lines", "violations", "write_report"]

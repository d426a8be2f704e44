"""Where a matrix cell's behaviour was checked: the ledger of the latest real runs.

Contract. A real run that checks a (profile, sleep state) of the PM matrix against reality records one
:class:`Evidence`: ``vm compare`` (a real VMM and kernel: QEMU and Debian's Linux, pyvirtio's model beside it) and
the UML scenarios that name a profile (a real Linux kernel, User-Mode Linux, driving pyvirtio's own PCI functions;
for SUSPEND, freeze_mode and FREEZING, with our kernel patches). The ledger keeps the latest record per
(kind, stack, profile, sleep, machine): one JSON file each under ``<dir>``, written atomically, so an interrupted
run never leaves half a record and a newer run replaces the older one. :func:`latest` reads them back; a file that
is not a record is skipped and named in the returned problems, never fatal (the ledger is user-editable input).

A cell's provenance (:func:`provenance_of`) is the strongest evidence there is for it: ``model`` (no real run),
``uml`` (real kernel, pyvirtio's device), ``qemu`` (real VMM and kernel); each with whether it agreed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pyvirtio.atomicio import write_text_atomic

LEDGER_FORMAT = "pyvirtio-real-run/1"
#: ``$PYVIRTIO_REAL_RUNS`` or ``~/.cache/pyvirtio/real-runs``.
LEDGER_ENV = "PYVIRTIO_REAL_RUNS"
_MAX_RECORD = 1 << 20


class Kind(StrEnum):
    """What was real in a run, weakest first."""

    MODEL = "model"  # nothing: the model alone
    UML = "uml"  # a real Linux kernel (User-Mode Linux) driving pyvirtio's PCI functions
    QEMU = "qemu"  # a real VMM and a real kernel, pyvirtio's model configured like them


@dataclass(frozen=True)
class Evidence:
    """One real run of one matrix cell: what ran, and whether it agreed with the model (every check held, and
    the register-level or behaviour comparison found no unexplained difference)."""

    kind: Kind
    stack: str  # "qemu10.0-linux6.12", "uml-linux6.12"
    profile: str  # a pm profile name ("suspend-bit", "no-soft-reset", ...)
    sleep: str  # "S3", "s2idle", "S4"
    machine: str  # "q35", "pc", "uml"
    agrees: bool
    detail: str = ""  # e.g. "kernel variant suspend, 3 checks, 0 register differences"
    when: str = ""  # ISO 8601 UTC
    report: str = ""  # where the full record of the run is

    def key(self) -> str:
        """The ledger file name (without extension)."""
        return re.sub(r"[^A-Za-z0-9.+-]", "_", f"{self.kind.value}-{self.stack}-{self.profile}-{self.sleep}-"
                                                  f"{self.machine}")



def utc_now() -> str:
    """Now, ISO 8601 in UTC to the second: when a real run was recorded."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_ledger_dir() -> Path:
    """``$PYVIRTIO_REAL_RUNS`` or ``~/.cache/pyvirtio/real-runs``."""
    env = os.environ.get(LEDGER_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyvirtio" / "real-runs"


def record(ev: Evidence, directory: Path | None = None) -> Path:
    """Write ``ev`` as the latest record of its cell (atomically); the file."""
    d = directory or default_ledger_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{ev.key()}.json"
    data = {"format": LEDGER_FORMAT, **asdict(ev), "kind": ev.kind.value}
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


def _parse(data: object) -> Evidence:
    if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
        raise ValueError(f"not a {LEDGER_FORMAT} record")
    fields = {k: data.get(k) for k in ("stack", "profile", "sleep", "machine", "detail", "when", "report")}
    if not all(isinstance(fields[k], str) for k in ("stack", "profile", "sleep", "machine")):
        raise ValueError("stack, profile, sleep and machine must be strings")
    if not isinstance(data.get("agrees"), bool):
        raise ValueError("agrees must be true or false")
    return Evidence(kind=Kind(str(data.get("kind"))), agrees=bool(data["agrees"]),
                    **{k: str(v) if v is not None else "" for k, v in fields.items()})


def latest(directory: Path | None = None) -> tuple[list[Evidence], list[str]]:
    """Every record in the ledger (sorted by key), and one line per file that is not a record."""
    d = directory or default_ledger_dir()
    out: list[Evidence] = []
    problems: list[str] = []
    if not d.is_dir():
        return out, problems
    for path in sorted(d.glob("*.json")):
        try:
            if path.stat().st_size > _MAX_RECORD:
                raise ValueError("larger than 1 MiB")
            out.append(_parse(json.loads(path.read_bytes())))
        except (OSError, ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            problems.append(f"{path.name}: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}")
    out.sort(key=Evidence.key)
    return out, problems


def provenance_of(evidence: list[Evidence], profile: str, sleep: str) -> tuple[Kind, list[Evidence]]:
    """The strongest kind of evidence for the cell (``model`` when none) and every record of it, strongest
    first."""
    mine = [e for e in evidence if e.profile == profile and e.sleep == sleep]
    order = list(Kind)
    mine.sort(key=lambda e: (-order.index(e.kind), e.key()))
    return (mine[0].kind if mine else Kind.MODEL), mine


__all__ = ["LEDGER_ENV", "LEDGER_FORMAT", "Evidence", "Kind", "default_ledger_dir", "latest", "provenance_of",
           "record", "utc_now"]

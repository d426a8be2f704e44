"""Model versus reality: does the model, configured like the real VM, predict what QEMU + Linux did?

The real VM on this machine is Debian's QEMU 7.2 with a Linux 6.1 guest: the ``baseline`` profile, on the same
machine type. For each device both have (virtio-gpu, virtio-rng) the model must predict the device-status byte
sequence across the sleep cycle, and whether the display and the queues survive. Status sequences are compared
after the same normalisation on both sides: consecutive repeats collapsed and leading zeros (the power-on reset)
dropped.

Contract: :func:`compare` returns every check, matching or not, as strings on both sides; it never raises for a
cell that lacks a device (the check says "missing"). Imports of :mod:`pyvirtio.pm` are deferred to
:func:`model_cell`, so reading and comparing reports does not build the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyvirtio.report import REAL_VM_PROFILE, CellResult, SleepState
from pyvirtio.trace import dedup

#: devices the model has and the real VM has too
COMPARED_DEVICES = ("gpu", "rng")
__all__ = ["COMPARED_DEVICES", "REAL_VM_PROFILE", "Check", "compare", "differences", "model_cell", "normalise"]


@dataclass(frozen=True)
class Check:
    """One compared property: what it is and how each side rendered it."""

    what: str
    model: str
    real: str

    @property
    def ok(self) -> bool:
        """The two sides agree."""
        return self.model == self.real


def normalise(seq: Sequence[int]) -> list[int]:
    """Consecutive repeats collapsed, the leading power-on zeros dropped."""
    out = dedup(seq)
    return out[1:] if out[:1] == [0] else out


def _seq(seq: Sequence[int]) -> str:
    return " ".join(f"{v:02x}" for v in normalise(seq)) or "-"


def _b(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _placement(cell: CellResult) -> str:
    return ", ".join(f"{n} {cell.placement[n]}" for n in COMPARED_DEVICES if n in cell.placement) or "-"


def model_cell(sleep: SleepState | str, machine_type: str, profile: str = REAL_VM_PROFILE, *,
               rng_behind_port: bool = True, gpu_behind_port: bool = False,
               timeline_dir: Path | None = None) -> CellResult:
    """The model's prediction for the real VM's configuration (``profile``: :data:`REAL_VM_PROFILE`, or
    ``no-soft-reset`` beside a real cell with the gpu's No_Soft_Reset; same machine; ``rng_behind_port`` False
    when the real VM keeps virtio-rng on the root bus, as the second stack does unless asked; ``gpu_behind_port``
    when the real gpu sits behind a root port whatever the profile, as on the second stack). ``timeline_dir``:
    where the model's timeline picture goes (none when ``None``)."""
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.profiles import parse_profile
    from pyvirtio.pm.scenario import run_cell

    cfg = ScenarioConfig(machine_type=machine_type, rng_behind_port=rng_behind_port, gpu_behind_port=gpu_behind_port)
    return run_cell(parse_profile(profile), sleep, cfg, timeline_dir=timeline_dir)


def compare(model: CellResult, real: CellResult) -> list[Check]:
    """Every check, matching or not (``Check.ok``)."""
    checks = [
        Check("placement", _placement(model), _placement(real)),
        Check("outcome", model.outcome.value, real.outcome.value),
        Check("display restored", _b(model.display_restored), _b(real.display_restored)),
        Check("new frame reaches the screen", _b(model.new_frame_after_resume), _b(real.new_frame_after_resume)),
    ]
    for name in COMPARED_DEVICES:
        m, r = model.devices.get(name), real.devices.get(name)
        checks.append(Check(f"{name} status sequence", _seq(m.status_sequence) if m else "missing",
                            _seq(r.status_sequence) if r else "missing"))
        checks.append(Check(f"{name} queues alive", _b(m.queues_alive) if m else "missing",
                            _b(r.queues_alive) if r else "missing"))
    return checks


def differences(checks: Sequence[Check]) -> list[Check]:
    """The checks that differ, in order."""
    return [c for c in checks if not c.ok]

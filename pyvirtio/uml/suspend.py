"""The virtio 1.4 SUSPEND bit on a real kernel: our Linux 6.12 patch (``guest/linux/virtio-suspend.patch``, the
``suspend`` kernel build) drives pyvirtio's rng and gpu through S3.

Contract. :data:`SCENARIOS` are the ``suspend-bit`` profile's scenarios (every device built and plugged from the
profile's plan: behind a PCIe port with No_Soft_Reset, VIRTIO_F_SUSPEND offered); :mod:`~pyvirtio.uml.catalog`
collects them. ``s3-suspend``: S3 with requests in flight and a display event while the guest sleeps;
``s3-suspend-timeout``: the rng never finishes quiescing, so the patch's time-out and freeze fallback run.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.uml.runner import RunResult
from pyvirtio.uml.scenarios import Check, DeviceSpec, Frames, Scenario, profile_plan, sleep_checks, sleep_script

PROFILE = "suspend-bit"
PLAN = profile_plan(PROFILE)


def display_event(devices: Mapping[str, VirtioDevice]) -> None:
    """The host's display of scanout 0 reports a change (same mode): EVENT_DISPLAY, deferred while suspended."""
    gpu = devices.get("gpu")
    if isinstance(gpu, Gpu):
        gpu.hotplug(0, True)


def _s3_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return sleep_checks(r, sc, frames)


def _timeout_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return sleep_checks(r, sc, frames)


_RNG, _GPU = DeviceSpec.from_plan("rng", PLAN), DeviceSpec.from_plan("gpu", PLAN)

#: The suspend-bit profile's scenarios, by name.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("s3-suspend", "SUSPEND bit (our patch): S3 with rng and gpu behind ports with No_Soft_Reset, requests in "
             "flight, a display event while asleep", (_RNG, _GPU), sleep_script(), _s3_checks, profile=PROFILE,
             while_asleep=display_event),
    Scenario("s3-suspend-timeout", "SUSPEND bit (our patch): the rng never finishes quiescing; the time-out falls "
             "back to freeze", (DeviceSpec.from_plan("rng", PLAN, faults=("quiesce-never-ends",)), _GPU),
             sleep_script(), _timeout_checks, profile=PROFILE),
)}

__all__ = ["PLAN", "PROFILE", "SCENARIOS", "display_event"]

"""The 2023 freeze_mode and FREEZING proposals on a real kernel: our Linux 6.12 patches
(``guest/linux/virtio-pci-freeze-mode.patch``, ``guest/linux/virtio-gpu-freezing.patch``) drive pyvirtio's rng and
gpu through S3 (reference §2.9).

Contract. :data:`SCENARIOS` are the ``freeze-mode`` and ``gpu-freezing`` profiles' scenarios, every device built
and plugged from the profile's plan (:meth:`FreezeDeviceSpec.from_plan`), behind a PCIe port (UML's S3 moves a
function to D3hot only through the PM capability), with requests in flight (a hwrng reader, a framebuffer loop)
while the guest goes to sleep; :mod:`~pyvirtio.uml.catalog` collects them and :func:`kernel_build` names the
kernel each one runs. Each run is checked (:class:`~pyvirtio.uml.scenarios.Check`) for: the handshake of the
proposal at the right place of the freeze and the restore (register level and the device's own record), the
display kept (the scanout the gpu showed when it was frozen equals, pixel for pixel, the one the restore's
modeset shows, and the resources were kept across the reset), a new frame after resume, live queues, every gpu
request in flight answered before the reset, and a display event delivered after resume as often as pyvirtio's
model drivers deliver it on the same devices (:func:`model_deliveries`).

The freeze-mode profile's gpu runs the 2023 series' virtio-gpu hooks (the profile's model driver,
``basic-hooks``): its kernel is our freeze_mode patch on top of our virtio-gpu patch (:func:`kernel_build`), and
its gpu offers no feature bit 5 (that driver reads bit 5 as FREEZING; Linux 6.12 does not know BLOB_ALIGNMENT,
so the model's Linux 6.12 drivers never take it either). ``s3-gpu-freezing-collision`` shows the collision: a
device that means BLOB_ALIGNMENT by bit 5 meets the 2023 driver.

Two timings of the display event: ``while_asleep`` (the device was already reset by the freeze: no
notification can be sent, the change is seen by nobody — in the model as on the real kernel) and during the
freeze (``event_when_kept``: the device raises it as soon as it is asked to keep its state, while the virtio
core holds configuration changes back; the change is delivered once after restore).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pyvirtio.errors import PyvirtioError
from pyvirtio.guest.kernel import SleepAborted
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.base import Pending, Reply
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.host.rng import Rng
from pyvirtio.pm.profiles import BuildPlan
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GPU_CTRL_HDR_SIZE, QEMU_DEVICE_OFFSET, QEMU_MODERN_BAR, GpuCfg, GpuCmd
from pyvirtio.spec.gpu_formats import Image
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.uml.model import model_run, model_setup, real_phases
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.uml.regtrace import Step
from pyvirtio.uml.runner import RunResult
from pyvirtio.uml.scenarios import (
    Check,
    DeviceSpec,
    FaultyGpu,
    Frames,
    Scenario,
    common_checks,
    console_has,
    entropy_served,
    frame_check,
    mark_pos,
    profile_plan,
    sleep_script,
    status_writes,
    step_rc,
)
from pyvirtio.vhost_user.faults import FaultPlan
from pyvirtio.vm.uml_kernel import PATCH_DIR, PROPOSAL_VARIANTS, KernelVariant

FREEZE_MODE = "freeze-mode"
GPU_FREEZING = "gpu-freezing"
FM_PLAN = profile_plan(FREEZE_MODE)
FZ_PLAN = profile_plan(GPU_FREEZING)
#: Our virtio-gpu patch (freeze/restore, STATUS_FREEZING): the freeze-mode profile's gpu needs its hooks too.
GPU_PATCH = PATCH_DIR / "virtio-gpu-freezing.patch"
#: The state a gpu reports when it must not finish freezing in time: 64 GiB, 16 s at the freeze_mode device's
#: 4 GiB/s (the kernel waits 10 s).
HUGE_STATE = 64 << 30
#: Console lines of the kernel around the sleep (printed with ``pm_debug_messages``).
SUSPEND_ENTRY = "PM: suspend entry"
#: Seen as device config writes: the driver acknowledging a display event (``events_clear``).
_EVENTS_CLEAR = QEMU_DEVICE_OFFSET + GpuCfg.EVENTS_CLEAR


def kernel_build(scenario: Scenario) -> KernelVariant:
    """The UML kernel a scenario of this module runs: its profile's :data:`PROPOSAL_VARIANTS` entry, with our
    virtio-gpu patch added for ``freeze-mode`` (the profile's gpu driver is the 2023 series' hooks; freeze_mode
    alone leaves Linux 6.12's virtio-gpu without ``.restore``). Same name as the catalog's, so
    :func:`~pyvirtio.uml.scenarios.run_scenario` accepts it."""
    v = PROPOSAL_VARIANTS[scenario.variant]
    if scenario.profile == FREEZE_MODE and GPU_PATCH not in v.patches:
        return KernelVariant(v.name, (GPU_PATCH, *v.patches))
    return v


# -- devices ------------------------------------------------------------------------------------------------------


@dataclass
class Captures:
    """What the gpu showed when it was frozen and when the restore showed it again (scanout 0, and the host's
    resources as (id, width, height, format))."""

    armed: bool = False
    before: Image | None = None
    before_resources: set[tuple[int, int, int, int]] = field(default_factory=set)
    after: Image | None = None
    after_resources: set[tuple[int, int, int, int]] = field(default_factory=set)
    seen_before: bool = False
    seen_after: bool = False


def _resources(dev: Gpu) -> set[tuple[int, int, int, int]]:
    return {(r.resource_id, r.width, r.height, int(r.format)) for r in dev.resources.values()}


def _copy(img: Image | None) -> Image | None:
    return None if img is None else img.copy()


class _ResetRecord:
    """Mixin: every reset is recorded with the requests the device still held (taken, not answered)."""

    def reset(self) -> None:
        dev: Any = self
        dev.trace(Kind.DEVICE, event="reset_inflight", inflight=dev.inflight())
        super().reset()  # type: ignore[misc]


class FreezeRng(_ResetRecord, Rng):
    """pyvirtio's rng, recording what it held at each reset."""


class FreezeGpu(_ResetRecord, FaultyGpu):
    """pyvirtio's gpu (with the 2023 proposals' device side) for these scenarios: records what it held at each
    reset; ``event_when_kept`` raises a display event (scanout 0, same mode) once, as soon as it is asked to keep
    its state (freeze_mode FREEZE_S3 reached, or STATUS_FREEZING 1); ``huge_state`` makes a freeze_mode freeze
    take longer than the kernel waits; when armed (:meth:`arm`) it captures scanout 0 at the first scanout
    disable of the freeze and at the first scanout the restore shows again (:class:`Captures`)."""

    def __init__(self, name: str = "gpu", *, event_when_kept: bool = False, huge_state: bool = False,
                 **kw: Any) -> None:
        self.event_when_kept = event_when_kept
        self.huge_state = huge_state
        self._event_sent = False
        self._retain = False
        super().__init__(name, **kw)
        self.captures = Captures()

    @property
    def retain_state_on_reset(self) -> bool:
        """The device core's policy (see :class:`~pyvirtio.host.device.VirtioDevice`); it is set to True the
        moment the device is asked to keep its state (freeze_mode reached FREEZE_S3, or STATUS_FREEZING 1)."""
        return self._retain

    @retain_state_on_reset.setter
    def retain_state_on_reset(self, value: bool) -> None:
        self._retain = value
        if value:
            self.state_kept()

    def state_kept(self) -> None:
        """The device was asked to keep its state: raise the display event now, once, when asked to."""
        if self.event_when_kept and not self._event_sent:
            self._event_sent = True
            self.ctx.scheduler.schedule(0, lambda: self.hotplug(0, True), label=f"{self.name}:event-when-kept")

    def state_bytes(self) -> int:
        """The host memory a freeze must preserve (:data:`HUGE_STATE` when asked to be slow)."""
        return HUGE_STATE if self.huge_state else super().state_bytes()

    def arm(self) -> None:
        """Start looking for the freeze's scanout disable (the guest began to suspend)."""
        self.captures.armed = True

    def _dispatch(self, p: Pending) -> Reply:
        c = self.captures
        scanout_cmd = p.hdr is not None and p.hdr.type in (GpuCmd.SET_SCANOUT, GpuCmd.SET_SCANOUT_BLOB)
        rid = -1
        if scanout_cmd and len(p.raw) >= GPU_CTRL_HDR_SIZE + gpu_wire.SET_SCANOUT_BODY.size:
            *_, sid, rid = gpu_wire.SET_SCANOUT_BODY.unpack_from(p.raw, GPU_CTRL_HDR_SIZE)
            scanout_cmd = sid == 0
        if c.armed and scanout_cmd and rid == 0 and not c.seen_before:
            c.seen_before = True
            c.before, c.before_resources = _copy(self.scanout_image(0)), _resources(self)
        reply = super()._dispatch(p)
        if c.seen_before and scanout_cmd and rid > 0 and not c.seen_after:
            c.seen_after = True
            c.after, c.after_resources = _copy(self.scanout_image(0)), _resources(self)
        return reply


@dataclass(frozen=True)
class FreezeDeviceSpec(DeviceSpec):
    """A :class:`~pyvirtio.uml.scenarios.DeviceSpec` that builds :class:`FreezeRng` / :class:`FreezeGpu`:
    ``offer_blob_alignment`` (None: the device's default, bit 5 as BLOB_ALIGNMENT unless it offers FREEZING),
    ``event_when_kept`` and ``huge_state`` (see :class:`FreezeGpu`)."""

    offer_blob_alignment: bool | None = None
    event_when_kept: bool = False
    huge_state: bool = False

    @classmethod
    def of(cls, kind: str, plan: BuildPlan, **kw: Any) -> FreezeDeviceSpec:
        """The ``rng`` or ``gpu`` of ``plan``, behind a PCIe port, with these extra options."""
        base = DeviceSpec.from_plan(kind, plan, pcie_port=True)
        return cls(**{**{f: getattr(base, f) for f in DeviceSpec.__dataclass_fields__}, **kw})

    def build(self, seed: int) -> tuple[VirtioDevice, FaultPlan]:
        """The device model and its (empty) fault plan."""
        dev, plan = super().build(seed)  # the fault plan, and the kinds this module does not instrument
        if self.kind == "rng":
            return FreezeRng("rng", seed=seed), plan
        if self.kind == "gpu":
            return FreezeGpu("gpu", offer_freezing=self.offer_freezing, offer_blob_alignment=self.offer_blob_alignment,
                             event_when_kept=self.event_when_kept, huge_state=self.huge_state), plan
        return dev, plan


# -- what a run shows ---------------------------------------------------------------------------------------------

def arm_on_suspend(line: str, machine: UmlMachine, state: dict[str, object]) -> None:
    """Console hook: when the kernel starts to suspend, arm the gpu's captures (once per run)."""
    if SUSPEND_ENTRY in line and not state.get("captures-armed"):
        state["captures-armed"] = True
        for f in machine.functions:
            if isinstance(f.device, FreezeGpu):
                f.device.arm()


def gpu_of(r: RunResult) -> FreezeGpu | None:
    """The run's gpu, when it is one of this module's."""
    for f in r.functions:
        if isinstance(f.device, FreezeGpu):
            return f.device
    return None


def device_events(r: RunResult, dev: str, event: str, lo: int = 0, hi: int | None = None) -> list[TraceEvent]:
    """The machine-trace events of ``dev`` called ``event`` (``detail["event"]``), between two positions."""
    return [e for e in r.trace[lo:hi] if e.src == dev and e.detail.get("event") == event]


def first_index(r: RunResult, pred: Any, lo: int = 0) -> int | None:
    """The position of the first machine-trace event from ``lo`` that satisfies ``pred``."""
    for i in range(lo, len(r.trace)):
        if pred(r.trace[i]):
            return i
    return None


def _resets(r: RunResult, dev: str, lo: int = 0, hi: int | None = None) -> list[int]:
    return [i for i in range(lo, len(r.trace) if hi is None else hi)
            if r.trace[i].kind is Kind.RESET and r.trace[i].src == dev]


def _status_at(r: RunResult, dev: str, value: int, lo: int) -> int | None:
    return first_index(r, lambda e: e.kind is Kind.STATUS and e.src == dev and e.detail.get("status") == value, lo)


def events_clear_writes(events: list[TraceEvent], dev: str = "gpu") -> int:
    """How many times the driver acknowledged a display event (a device-config write of ``events_clear``)."""
    return sum(1 for e in events if e.src == dev and e.kind is Kind.BAR_WRITE
               and int(e.detail.get("bar", -1)) == QEMU_MODERN_BAR and int(e.detail.get("offset", -1)) == _EVENTS_CLEAR)


def model_deliveries(sc: Scenario, seed: int) -> int | None:
    """How many display events pyvirtio's model drivers acknowledge after resume on the scenario's devices (None:
    the model's suspend was aborted)."""
    try:
        pt = model_run(sc.devices, seed=seed, sleep=True, setup=model_setup(sc.profile, sc.model_gpu_driver),
                       while_asleep=sc.while_asleep, asleep_after=sc.asleep_after)
    except SleepAborted:
        return None
    lo, _ = pt.cuts["resume"]
    return events_clear_writes(pt.events[lo:])


def model_suspend_refusal(sc: Scenario, seed: int) -> str | None:
    """The model's answer to the scenario's suspend: the message of the abort, or None when it slept."""
    try:
        model_run(sc.devices, seed=seed, sleep=True, setup=model_setup(sc.profile, sc.model_gpu_driver))
    except SleepAborted as e:
        return str(e)
    except PyvirtioError as e:
        return f"error: {e}"
    return None


def _steps(r: RunResult, dev: str, phase: str) -> list[Step]:
    return real_phases(r).steps(dev, phase)


def _texts(steps: list[Step]) -> list[str]:
    return [s.text for s in steps]


def _seq(seq: list[int]) -> str:
    return " ".join(f"{s:#04x}" for s in seq) or "no status change"


def _before(texts: list[str], a: str, b: str) -> bool:
    return a in texts and b in texts and texts.index(a) < texts.index(b)


# -- checks -------------------------------------------------------------------------------------------------------


def _sleep_common(r: RunResult, sc: Scenario) -> list[Check]:
    out = common_checks(r)
    out.append(Check("the guest suspended and resumed (echo mem > /sys/power/state returned 0)",
                     step_rc(r, "resumed") == 0 and mark_pos(r, "suspend") is not None,
                     f"rc={step_rc(r, 'resumed')}"))
    p_s, p_r = mark_pos(r, "suspend"), mark_pos(r, "resumed")
    for spec in sc.devices:
        pm = [e for e in r.trace if e.kind is Kind.PM and e.src == spec.kind and e.detail.get("event") == "power_state"]
        seen = " ".join(f"{e.detail.get('frm')}->{e.detail.get('to')}" for e in pm)
        out.append(Check(f"{spec.kind}: the PCI core moved the function D0 -> D3hot -> D0",
                         "D0->D3hot" in seen and seen.rstrip().endswith("->D0"), seen or "no PMCSR change"))
        seq = status_writes(r, spec.kind, p_s or 0, p_r)
        want = [0x00, 0x01, 0x03, 0x0B, 0x0F]
        out.append(Check(f"{spec.kind}: freeze, then restore resets and renegotiates (0 1 3 b f)",
                         [s for s in seq if s in want][-5:] == want, _seq(seq)))
    if any(d.kind == "rng" for d in sc.devices):
        out.append(entropy_served(r, "after resume (the rng's queue is alive)", r.seed,
                                  _file(r, "entropy-after.bin")))
    return out


def _file(r: RunResult, name: str) -> bytes | None:
    try:
        return (r.directory / name).read_bytes()
    except OSError:
        return None


def display_kept_checks(r: RunResult, kept: bool = True) -> list[Check]:
    """The display across the freeze: the scanout and resources before and after (``kept``: both kept; else both
    lost, as the model predicts for a plain freeze)."""
    gpu = gpu_of(r)
    if gpu is None:
        return [Check("gpu: the display across the freeze", False, "no gpu")]
    c = gpu.captures
    if not c.seen_before:
        return [Check("gpu: the freeze disabled the scanout (drm_mode_config_helper_suspend)", False,
                      "no SET_SCANOUT 0 after the suspend began")]
    same = (c.before is not None and c.after is not None and c.before.shape == c.after.shape
            and bool(np.array_equal(c.before, c.after)))
    if c.before is not None and c.after is not None and c.before.shape == c.after.shape:
        diff = int(np.count_nonzero(np.any(c.before[..., :3] != c.after[..., :3], axis=-1)))
        seen = f"{c.before.shape[1]}x{c.before.shape[0]}, {diff} pixels differ" if diff else \
            f"{c.before.shape[1]}x{c.before.shape[0]}, pixel-exact"
    else:
        seen = (f"before: {'dark' if c.before is None else c.before.shape}, after: "
                f"{'dark' if c.after is None else c.after.shape}")
    kept_res = bool(c.before_resources) and c.before_resources <= c.after_resources
    res_seen = f"{len(c.before_resources)} resources before, {len(c.after_resources)} after the restore's modeset"
    destroyed = [e for e in device_events(r, "gpu", "resources_destroyed", mark_pos(r, "suspend") or 0,
                                          mark_pos(r, "resumed")) if e.detail.get("count")]
    if kept:
        return [Check("gpu: display kept: the frame shown when the gpu froze is the scanout the restore shows, "
                      "pixel-exact", same, seen),
                Check("gpu: resources kept across the freeze's reset", kept_res and not destroyed,
                      res_seen + (f"; destroyed: {destroyed[0].detail}" if destroyed else ""))]
    return [Check("gpu: display lost, as the model predicts for a plain freeze: the restore's modeset finds no "
                  "resource", not same, seen),
            Check("gpu: resources destroyed by the freeze's reset", bool(destroyed) and not kept_res,
                  res_seen + (f"; destroyed: {destroyed[0].detail.get('count')}" if destroyed else ""))]


def inflight_checks(r: RunResult) -> list[Check]:
    """Every request in flight when the guest went to sleep (the hwrng reader's, the framebuffer loop's) was
    answered before the device's freeze reset: the device held nothing it had taken (the gpu drains its queues;
    the rng's reader is answered before the freezer stops it)."""
    p_s = mark_pos(r, "suspend") or 0
    out = []
    for dev in ("rng", "gpu"):
        held = [int(e.detail.get("inflight", -1)) for e in device_events(r, dev, "reset_inflight", p_s)]
        out.append(Check(f"{dev}: requests in flight completed: nothing left unanswered at the freeze's reset",
                         bool(held) and held[0] == 0, f"held at the resets: {held}"))
    return out


def new_frame_check(frames: Frames, r: RunResult, *, reaches: bool = True) -> Check:
    """A frame drawn after resume (seed 11) reaches the scanout (or, ``reaches`` False, does not)."""
    fc = frame_check(frames, "drawn-after", "gpu: a new frame drawn after resume reaches the scanout "
                     "(the control queue is alive)", 11, r.directory)
    if reaches:
        return fc
    return Check("gpu: a frame drawn after resume does not reach the scanout (its resource is gone)", not fc.ok,
                 fc.seen)


def config_event_check(r: RunResult, sc: Scenario, *, want: int | None = None) -> Check:
    """The display event: acknowledged after resume as often as the model drivers acknowledge it (``want``
    overrides the model's count)."""
    p_s = mark_pos(r, "suspend") or 0
    real = events_clear_writes(r.trace[p_s:])
    model = model_deliveries(sc, r.seed)
    expect = want if want is not None else model
    how = "while the gpu is asked to keep its state" if any(
        isinstance(d, FreezeDeviceSpec) and d.event_when_kept for d in sc.devices) else "while the guest sleeps"
    return Check(f"gpu: the display event raised {how} is delivered after resume {expect} time(s), as the model "
                 "drivers deliver it", real == expect and model == expect,
                 f"real kernel: {real} events_clear write(s) after the suspend; model: {model}")


def freeze_mode_checks(r: RunResult, *, reached: bool = True) -> list[Check]:
    """The freeze_mode handshake: the gpu's FREEZE_S3 before its reset and UNFREEZE after DRIVER_OK (register level
    and the device's record); the rng, whose common config has no field, offers no bit and gets no write."""
    out: list[Check] = []
    sus, res = _texts(_steps(r, "gpu", "suspend")), _texts(_steps(r, "gpu", "resume"))
    w3, w0 = "common 0x40 <- 0x3", "common 0x40 <- 0x0"
    out.append(Check("gpu: FREEZE_S3 written to common config offset 64 before the freeze's reset",
                     _before(sus, w3, "status <- 0x00"), " | ".join(t for t in sus if "0x40" in t or "status" in t)))
    out.append(Check("gpu: UNFREEZE written as the restore's last step, after DRIVER_OK",
                     _before(res, "status <- 0x0f", w0), " | ".join(t for t in res if "0x40" in t or "status" in t)))
    p_s = mark_pos(r, "suspend") or 0
    modes = [int(e.detail.get("mode", -1)) for e in device_events(r, "gpu", "freeze_mode", p_s)]
    resets = _resets(r, "gpu", p_s)
    reach3 = next((i for i in range(p_s, len(r.trace)) if r.trace[i].src == "gpu"
                   and r.trace[i].detail.get("event") == "freeze_mode" and r.trace[i].detail.get("mode") == 3), None)
    if reached:
        out.append(Check("gpu: the device reached FREEZE_S3 before the reset, then UNFREEZE",
                         modes[:2] == [3, 0] and reach3 is not None and bool(resets) and reach3 < resets[0],
                         f"modes reached: {modes}"))
        lines = console_has(r, "freeze-mode: FREEZE_S3 reached") + console_has(r, "freeze-mode: UNFREEZE reached")
        out.append(Check("the kernel logged both handshakes (freeze-mode:)", len(lines) == 2,
                         "; ".join(ln.split("] ", 1)[-1] for ln in lines) or "no line"))
    else:
        lines = console_has(r, "freeze-mode: FREEZE_S3 not reached")
        fell_back = bool(lines) and bool(resets) and (reach3 is None or reach3 > resets[0])
        out.append(Check("gpu: FREEZE_S3 not reached in time: the kernel logs it and freezes plainly (reset before "
                         "the device reached the mode)", fell_back,
                         (lines[0].split("] ", 1)[-1] if lines else "no time-out line") + f"; modes reached: {modes}"))
        fm = r.function("gpu").freeze_mode
        final = None if fm is None else fm.mode
        out.append(Check("gpu: after the restore's UNFREEZE the device is not left in FREEZE_S3",
                         final == 0 and not r.function("gpu").device.retain_state_on_reset,
                         f"mode {final}, keeps state on reset: {r.function('gpu').device.retain_state_on_reset}"))
    accepted = console_has(r, "freeze-mode: feature bit")
    out.append(Check("the kernel accepted the freeze_mode bit from the gpu only (its common config covers offset 64)",
                     len(accepted) == 1 and "virtio_gpu" in accepted[0] and "accepted" in accepted[0],
                     "; ".join(ln.split("] ", 1)[-1] for ln in accepted) or "no line"))
    if any(f.name == "rng" for f in r.functions):
        rng = _texts(_steps(r, "rng", "suspend")) + _texts(_steps(r, "rng", "resume"))
        out.append(Check("rng: no freeze_mode field, no bit: a plain freeze, offset 64 never written",
                         not any("0x40" in t for t in rng), f"{len(rng)} steps, none at offset 64"))
    return out


def gpu_freezing_checks(r: RunResult) -> list[Check]:
    """STATUS_FREEZING: 1 before the freeze's reset, 0 after the restore re-created the queues and set
    DRIVER_OK (the device's record), logged by the kernel."""
    p_s = mark_pos(r, "suspend") or 0
    ev = [(i, int(r.trace[i].detail.get("freezing", -1))) for i in range(p_s, len(r.trace))
          if r.trace[i].src == "gpu" and r.trace[i].detail.get("event") == "gpu_freezing"]
    resets = _resets(r, "gpu", p_s)
    ok1 = bool(ev) and ev[0][1] == 1 and bool(resets) and ev[0][0] < resets[0]
    after_ok = _status_at(r, "gpu", 0x0F, resets[0]) if resets else None
    enables = [i for i in range(resets[0] if resets else len(r.trace), len(r.trace))
               if r.trace[i].src == "gpu" and r.trace[i].kind is Kind.QUEUE
               and r.trace[i].detail.get("event") == "enabled"]
    ok0 = (len(ev) >= 2 and ev[1][1] == 0 and after_ok is not None and ev[1][0] > after_ok
           and (not enables or ev[1][0] > enables[-1]))
    lines = console_has(r, "gpu-freezing:")
    return [Check("gpu: STATUS_FREEZING 1 answered before the freeze's reset", ok1,
                  f"freezing events {[v for _, v in ev]} at {[i for i, _ in ev]}, resets at {resets[:2]}"),
            Check("gpu: STATUS_FREEZING 0 after the restore re-created the queues and set DRIVER_OK", ok0,
                  f"DRIVER_OK at {after_ok}, freezing 0 at {ev[1][0] if len(ev) > 1 else None}"),
            Check("the kernel negotiated bit 5 as FREEZING and logged freeze and restore (gpu-freezing:)",
                  any("negotiated as FREEZING" in ln for ln in lines)
                  and any("freeze: STATUS_FREEZING 1 answered OK_NODATA" in ln for ln in lines)
                  and any("restore: virtqueues re-created, STATUS_FREEZING 0" in ln for ln in lines),
                  "; ".join(ln.split("] ", 1)[-1] for ln in lines) or "no line")]


def _freeze_mode_s3(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return [*_sleep_common(r, sc), *freeze_mode_checks(r), *display_kept_checks(r), new_frame_check(frames, r),
            *inflight_checks(r), config_event_check(r, sc)]


def _freeze_mode_timeout(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return [*_sleep_common(r, sc), *freeze_mode_checks(r, reached=False), *display_kept_checks(r, kept=False),
            new_frame_check(frames, r, reaches=False), *inflight_checks(r)]


def _gpu_freezing_s3(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return [*_sleep_common(r, sc), *gpu_freezing_checks(r), *display_kept_checks(r), new_frame_check(frames, r),
            *inflight_checks(r), config_event_check(r, sc)]


def _collision(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = common_checks(r)
    rc = step_rc(r, "resumed")
    lines = console_has(r, "gpu-freezing:")
    aborted = [ln for ln in lines if "freeze aborted: STATUS_FREEZING 1 answered 0x1200" in ln]
    out.append(Check("bit 5 offered as BLOB_ALIGNMENT: the 2023 driver takes it as FREEZING",
                     any("negotiated as FREEZING" in ln for ln in lines), "; ".join(
                         ln.split("] ", 1)[-1] for ln in lines[:1]) or "no line"))
    out.append(Check("the device answers STATUS_FREEZING ERR_UNSPEC (it does not know the command): the gpu's "
                     "freeze is aborted and the system does not sleep", bool(aborted) and rc not in (0, None),
                     f"{aborted[0].split('] ', 1)[-1] if aborted else 'no abort line'}; echo mem rc={rc}"))
    resets = _resets(r, "gpu", mark_pos(r, "suspend") or 0, mark_pos(r, "resumed"))
    out.append(Check("gpu: never reset while the guest tried to sleep: its state stays", not resets,
                     f"{len(resets)} reset(s) between the suspend and its end"))
    out.append(frame_check(frames, "drawn-after", "gpu: a frame drawn after the refused suspend reaches the scanout",
                           11, r.directory))
    why = model_suspend_refusal(sc, r.seed)
    out.append(Check("the model refuses the same suspend (FreezingGpuDriver: STATUS_FREEZING answered "
                     "ERR_UNSPEC aborts the freeze)", why is not None and "STATUS_FREEZING" in why,
                     why or "the model slept"))
    return out


# -- the scenarios ------------------------------------------------------------------------------------------------


def display_event(devices: Mapping[str, VirtioDevice]) -> None:
    """The host's display of scanout 0 reports a change (same mode): EVENT_DISPLAY."""
    gpu = devices.get("gpu")
    if isinstance(gpu, Gpu):
        gpu.hotplug(0, True)


_FM_RNG = FreezeDeviceSpec.of("rng", FM_PLAN)
#: the freeze-mode profile's gpu: the field at offset 64 behind the plan's bit, no feature bit 5 (see the module)
_FM_GPU = FreezeDeviceSpec.of("gpu", FM_PLAN, offer_blob_alignment=False)
_FZ_RNG = FreezeDeviceSpec.of("rng", FZ_PLAN)
_FZ_GPU = FreezeDeviceSpec.of("gpu", FZ_PLAN)
_HOOKS = (arm_on_suspend,)
#: The S3 script with the RTC alarm 20 s out: the kernel waits 10 s for FREEZE_S3 before it freezes plainly, and an
#: alarm that fires meanwhile is an early wake event that aborts the suspend.
SLOW_FREEZE_SCRIPT = sleep_script().replace("echo +2 > /sys/class/rtc/rtc0/wakealarm",
                                            "echo +20 > /sys/class/rtc/rtc0/wakealarm")

#: Register-level differences from the model both freeze paths explain (the README; on top of the stock ones):
#: drm_mode_config_helper_suspend's scanout disables before the freeze and the NO_VECTOR writes of both queues
#: after its reset (the model has no modeset to suspend); the held display event's events_clear, written by
#: virtio-gpu's config work item after the restore's last step (UNFREEZE), inline in the model.
FREEZE_EXPLAINED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("suspend", (r"(queue [01]|config) vector <- 0xffff",)),
    ("resume", (r"common 0x40 <- 0x0", r"device config write 0x4/4")),
)

#: The freeze-mode and gpu-freezing profiles' scenarios, by name.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("s3-freeze-mode", "freeze_mode (our patch): S3 with rng and gpu behind ports, the gpu's common config "
             "with the field at offset 64; requests in flight, a display event while asleep",
             (_FM_RNG, _FM_GPU), sleep_script(), _freeze_mode_s3, profile=FREEZE_MODE, on_line=_HOOKS,
             while_asleep=display_event, cell="S3", explained=FREEZE_EXPLAINED),
    Scenario("s3-freeze-mode-held", "freeze_mode (our patch): the display changes as the gpu reaches FREEZE_S3 "
             "(configuration changes held back by the virtio core): delivered once after restore",
             (_FM_RNG, replace(_FM_GPU, event_when_kept=True)), sleep_script(), _freeze_mode_s3,
             profile=FREEZE_MODE, on_line=_HOOKS, explained=FREEZE_EXPLAINED),
    Scenario("s3-freeze-mode-timeout", "freeze_mode (our patch): the gpu cannot make 64 GiB persistent within the "
             "kernel's 10 s: the kernel logs it and freezes plainly; the restore's UNFREEZE withdraws the request",
             (_FM_RNG, replace(_FM_GPU, huge_state=True)), SLOW_FREEZE_SCRIPT, _freeze_mode_timeout,
             profile=FREEZE_MODE, on_line=_HOOKS, timeout=120.0, explained=FREEZE_EXPLAINED),
    Scenario("s3-gpu-freezing", "FREEZING (our patch): S3 with rng and gpu behind ports, the gpu offering bit 5 as "
             "FREEZING; requests in flight, a display event while asleep",
             (_FZ_RNG, _FZ_GPU), sleep_script(), _gpu_freezing_s3, profile=GPU_FREEZING, on_line=_HOOKS,
             while_asleep=display_event, cell="S3", explained=FREEZE_EXPLAINED),
    Scenario("s3-gpu-freezing-held", "FREEZING (our patch): the display changes as the gpu takes STATUS_FREEZING 1 "
             "(configuration changes held back by the virtio core): delivered once after restore",
             (_FZ_RNG, replace(_FZ_GPU, event_when_kept=True)), sleep_script(), _gpu_freezing_s3,
             profile=GPU_FREEZING, on_line=_HOOKS, explained=FREEZE_EXPLAINED),
    Scenario("s3-gpu-freezing-collision", "FREEZING (our patch) on a gpu whose bit 5 means BLOB_ALIGNMENT: the 2023 "
             "driver takes it as FREEZING, the device refuses STATUS_FREEZING, the suspend is aborted",
             (_FZ_RNG, replace(_FZ_GPU, offer_freezing=False, offer_blob_alignment=True)), sleep_script(),
             _collision, profile=GPU_FREEZING, on_line=_HOOKS),
)}

__all__ = ["FM_PLAN", "FREEZE_EXPLAINED", "FREEZE_MODE", "FZ_PLAN", "GPU_FREEZING", "GPU_PATCH", "SCENARIOS",
           "Captures", "FreezeDeviceSpec", "FreezeGpu", "FreezeRng", "arm_on_suspend", "config_event_check",
           "display_event", "display_kept_checks", "events_clear_writes", "freeze_mode_checks", "gpu_freezing_checks",
           "gpu_of", "kernel_build", "model_deliveries", "model_suspend_refusal"]

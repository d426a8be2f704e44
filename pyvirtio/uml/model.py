"""pyvirtio's own model driver on the devices of a UML scenario, and its register-level sequence beside the
real kernel's.

Contract. :func:`model_run` builds the deterministic machine with the scenario's devices plugged exactly as in
the UML run (same device classes, PCIe port and No_Soft_Reset), binds pyvirtio's Linux-modelled drivers
(:class:`~pyvirtio.guest.rng.RngDriver`, the no-hooks :class:`~pyvirtio.guest.gpu.driver.GpuDriver`: Linux 6.12's
virtio-gpu has no freeze/restore) configured as Linux 6.12's — which knows neither VIRTIO_F_SUSPEND nor
VIRTIO_GPU_F_BLOB_ALIGNMENT, so the model drivers are built not to accept them (their defaults model newer
kernels) — under a kernel configured as Linux 6.12 (``pm_no_reset``: the No_Soft_Reset skip), probes, and —
for a sleeping scenario — suspends and resumes the guest as UML's S3 does (no wake-up reset: UML has no platform
that resets devices on wake). It returns the machine trace cut into phases.
:func:`real_phases` cuts a UML run's trace the same way, from the guest's marks. :func:`compare_run` decodes both
with :func:`~pyvirtio.uml.regtrace.driver_steps` and lists, per device and phase, where they differ.

A scenario with a pm profile runs our patched Linux 6.12 (:attr:`~pyvirtio.uml.scenarios.Scenario.variant`), so
the model is configured as that kernel (:func:`model_setup`): Linux 6.12 plus the profile's mechanism from its
build plan (the kernel's SUSPEND use or freeze_mode, the drivers' extra features, the gpu driver flavour), and the
model drivers accept exactly what the patched kernel accepts (SUSPEND from virtio-rng and virtio-gpu with the
suspend-bit patch). A scenario's host event while the guest sleeps (``while_asleep``) runs between the model
guest's suspend and resume, ``asleep_after`` ns after the suspend (the model then runs :data:`RESUME_SETTLE` after its
resume); the devices' fault switches that need no
counting (latency, the SUSPEND faults) are armed as in the UML run.

Devices without a pyvirtio driver (the test device) are probed by nobody in the model; they are left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pyvirtio.clock import MS
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind
from pyvirtio.guest.kernel import Guest, KernelConfig
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine, MachineType
from pyvirtio.pm.profiles import parse_profile
from pyvirtio.provenance import Evidence
from pyvirtio.provenance import Kind as ProvKind
from pyvirtio.trace import TraceEvent
from pyvirtio.uml.regtrace import Difference, Step, compare, driver_steps, side_by_side
from pyvirtio.uml.runner import RunResult
from pyvirtio.uml.scenarios import STEP, DeviceSpec, HostEvent, Scenario, ScenarioResult, profile_plan
from pyvirtio.vhost_user.faults import FaultEngine

#: Linux 6.12 as pyvirtio's guest models it: the No_Soft_Reset skip (6.8+), no SUSPEND, no freeze_mode.
LINUX_612 = KernelConfig(name="linux-6.12", pm_no_reset=True)
PHASES = ("probe", "suspend", "resume")
#: How long the model guest runs after its resume when a host event happened while it slept: the configuration
#: interrupt the device sends on resuming is taken, and its handling done, after the resume (Linux: in a work
#: item), so the comparison's resume phase includes it.
RESUME_SETTLE = 10 * MS
#: Console lines that mark the start of the resume (printed with pm_debug_messages).
RESUME_LINES = ("Timekeeping suspended for", "PM: noirq resume of devices")


@dataclass(frozen=True)
class ModelSetup:
    """How the model guest is configured for a kernel build: its kernel, the gpu driver flavour, whether the
    drivers accept VIRTIO_F_SUSPEND, and the transport bits every driver offers besides its own."""

    kernel: KernelConfig
    gpu_driver: GpuDriverKind = GpuDriverKind.NO_HOOKS
    accept_suspend: bool = False
    driver_features: int = 0


def model_setup(profile: str | None = None, gpu_driver: GpuDriverKind | None = None) -> ModelSetup:
    """The model of the UML kernel build for ``profile`` (None: stock :data:`LINUX_612`): Linux 6.12 with the
    plan's mechanism (``suspend_bit``, ``freeze_mode`` and its bit), the plan's gpu driver flavour unless
    ``gpu_driver`` says otherwise, SUSPEND accepted exactly when the kernel uses it."""
    if profile is None:
        return ModelSetup(LINUX_612, gpu_driver or GpuDriverKind.NO_HOOKS)
    plan = profile_plan(profile)
    k = plan.kernel
    kernel = replace(LINUX_612, name=f"linux-6.12+{profile}", suspend_bit=k.suspend_bit, freeze_mode=k.freeze_mode,
                     freeze_mode_bit=k.freeze_mode_bit)
    return ModelSetup(kernel, gpu_driver or plan.gpu_driver, accept_suspend=kernel.suspend_bit,
                      driver_features=kernel.driver_features())


@dataclass
class PhasedTrace:
    """A machine trace and, per phase, the index range of its events."""

    events: list[TraceEvent]
    functions: dict[str, VirtioPciFunction]
    cuts: dict[str, tuple[int, int]]

    def steps(self, device: str, phase: str) -> list[Step]:
        """The decoded steps of ``device`` in ``phase`` (empty when the phase did not happen)."""
        if phase not in self.cuts or device not in self.functions:
            return []
        lo, hi = self.cuts[phase]
        return driver_steps(self.functions[device], self.events[lo:hi])


def model_run(devices: Sequence[DeviceSpec], *, seed: int = 0, sleep: bool = False, setup: ModelSetup | None = None,
              while_asleep: HostEvent | None = None, asleep_after: int = 0) -> PhasedTrace:
    """pyvirtio's drivers on ``devices`` under ``setup`` (default: stock Linux 6.12; see the module contract)."""
    ms = setup or model_setup()
    machine = Machine(128 << 20, seed=seed, machine_type=MachineType.Q35)
    fns: dict[str, VirtioPciFunction] = {}
    for spec in devices:
        dev, plan = spec.build(seed)
        if plan.specs:  # the device's own switches (latency, SUSPEND faults); counted faults need a UML run
            FaultEngine(plan, dev, lambda _what, _detail: None).arm()
        fns[spec.kind] = machine.plug(dev, pcie_port=spec.pcie_port, no_soft_reset=spec.no_soft_reset,
                                      freeze_mode_bit=spec.freeze_mode_bit)
    guest = Guest(machine, ms.kernel)
    t = machine.trace  # len() brings the recorded events into the list (Trace records lazily)
    cuts: dict[str, tuple[int, int]] = {}
    start = len(t)
    for spec in devices:
        drv: VirtioDriver
        if spec.kind == "rng":
            drv = RngDriver(machine, fns["rng"], guest.alloc, name="rng", accept_suspend=ms.accept_suspend,
                            extra_features=ms.driver_features)
        elif spec.kind == "gpu":
            drv = FLAVOURS[ms.gpu_driver](machine, fns["gpu"], guest.alloc, name="gpu",
                                          accept_suspend=ms.accept_suspend, want_blob_alignment=False,
                                          extra_features=ms.driver_features)
        else:
            continue
        guest.bind(drv)
    cuts["probe"] = (start, len(t))
    if sleep:
        s0 = len(t)
        guest.suspend()
        cuts["suspend"] = (s0, len(t))
        if while_asleep is not None:
            machine.run_for(asleep_after)
            while_asleep({k: f.device for k, f in fns.items()})
        r0 = len(t)
        guest.resume()
        if while_asleep is not None:  # the deferred change's interrupt is taken after the resume, as in Linux
            machine.run_for(RESUME_SETTLE)
        cuts["resume"] = (r0, len(t))
    return PhasedTrace(t.events, {k: v for k, v in fns.items() if k in ("rng", "gpu")}, cuts)


def real_phases(r: RunResult, resume_until: str = "resumed") -> PhasedTrace:
    """The UML run's machine trace cut at the guest's ``suspend`` mark and at the start of the resume (a resume
    line of the kernel, else the longest quiet time between the suspend and ``resumed`` marks), the resume ending
    at the guest's ``resume_until`` mark; without a suspend the probe ends at the guest's ``probed`` mark."""
    events = r.trace
    n = len(events)
    def mark(name: str) -> int | None:
        return next((pos for line, pos in zip(r.console, r.console_pos, strict=True)
                     if STEP in line and line.split(STEP, 1)[1].split()[:1] == [name]), None)

    suspend = mark("suspend")
    fns = {f.name: f for f in r.functions if f.name in ("rng", "gpu")}
    if suspend is None:  # the probe is what happened before the guest's first mark
        return PhasedTrace(events, fns, {"probe": (0, mark("probed") or n)})
    resumed = mark("resumed") or n
    resume = next((pos for line, pos in zip(r.console, r.console_pos, strict=True)
                   if pos >= suspend and any(m in line for m in RESUME_LINES)), None)
    if resume is None:  # the sleep: the longest quiet time between the guest's suspend and resumed marks
        best, resume = -1, resumed
        for i in range(max(suspend, 1), resumed):
            gap = events[i].t - events[i - 1].t
            if gap > best:
                best, resume = gap, i
    end = mark(resume_until) or n
    return PhasedTrace(events, fns, {"probe": (0, mark("probed") or suspend), "suspend": (suspend, resume),
                                     "resume": (resume, max(resume, end))})


#: The differences between the real kernel's register-level sequence and pyvirtio's model driver's that the README
#: explains, per phase: patterns of the step texts allowed to differ (``re.fullmatch``).
EXPLAINED: dict[str, tuple[str, ...]] = {
    # the PCI core's enumeration (BAR sizing) and pci_enable_device before pci_set_master; the hwrng core's first read
    "probe": (r"COMMAND <- (INTX_DISABLE|0|MEMORY)", r"notify queue 0"),
    # a reader's request before the freezer; vp_del_vqs's NO_VECTOR writes after the reset (a finding of Linux)
    "suspend": (r"notify queue 0", r"(queue 0|config) vector <- 0xffff"),
    # pci_restore_state: COMMAND and the whole MSI-X table restored; the model re-reads the device features; a
    # resume that fails (SUSPEND patch) freezes there: the same NO_VECTOR writes
    "resume": (r"notify queue 0", r"COMMAND <- MEMORY(\|MASTER)?(\|INTX_DISABLE)?",
               r"MSI-X control <- (0|enable\|mask-all)", r"MSI-X entry \d+ (masked|programmed|unmasked)",
               r"device_feature\[[01]\] = 0x[0-9a-f]{8}", r"(queue 0|config) vector <- 0xffff"),
}


@dataclass
class PhaseComparison:
    """One device in one phase: the two step lists and their differences."""

    device: str
    phase: str
    real: list[Step]
    model: list[Step]
    differences: list[Difference]

    def lines(self, *, full: bool = False) -> list[str]:
        """A heading, then the two columns (``full``) or only the differences."""
        head = (f"{self.device} / {self.phase}: {len(self.real)} real steps, {len(self.model)} model steps, "
                f"{len(self.differences)} difference(s)")
        if full:
            return [head, *side_by_side(self.real, self.model)]
        out = [head]
        for d in self.differences:
            out += d.lines()
        return out


def unexplained(comparison: Sequence[PhaseComparison], scenario: Scenario | None = None
                ) -> list[tuple[PhaseComparison, Difference]]:
    """The differences of ``comparison`` that :data:`EXPLAINED` (and ``scenario.explained``) do not cover (every
    step text of a difference, real and model, must match a pattern of its phase)."""
    extra = dict(scenario.explained) if scenario is not None else {}
    out = []
    for c in comparison:
        allowed = EXPLAINED.get(c.phase, ()) + extra.get(c.phase, ())
        for d in c.differences:
            if not all(any(re.fullmatch(p, text) for p in allowed) for text in (*d.real, *d.model)):
                out.append((c, d))
    return out


def cell_evidence(res: ScenarioResult, comparison: Sequence[PhaseComparison], stack: str, *, when: str = "",
                  report: str = "") -> Evidence | None:
    """The ledger record (:mod:`pyvirtio.provenance`) of a run that checks a PM-matrix cell (a scenario with a
    profile and a ``cell``): it agrees when every check held and no register-level difference is unexplained.
    None for any other scenario."""
    sc = res.scenario
    if sc.profile is None or sc.cell is None:
        return None
    bad = unexplained(comparison, sc)
    detail = (f"kernel variant {sc.variant}, scenario {sc.name}, {sum(c.ok for c in res.checks)}/{len(res.checks)} "
              f"checks, {len(bad)} unexplained register differences")
    return Evidence(ProvKind.UML, stack, parse_profile(sc.profile).name, sc.cell, "uml",
                    agrees=res.ok and bool(comparison) and not bad, detail=detail, when=when, report=report)


def compare_run(r: RunResult, scenario: Scenario) -> list[PhaseComparison]:
    """The real kernel's register-level sequence beside pyvirtio's model driver's, per device and phase."""
    real = real_phases(r, scenario.resume_until)
    model = model_run(scenario.devices, seed=r.seed, sleep=scenario.sleeps,
                      setup=model_setup(scenario.profile, scenario.model_gpu_driver),
                      while_asleep=scenario.while_asleep, asleep_after=scenario.asleep_after)
    out: list[PhaseComparison] = []
    for dev in ("rng", "gpu"):
        if dev not in real.functions or dev not in model.functions:
            continue
        for ph in PHASES:
            if ph not in real.cuts and ph not in model.cuts:
                continue
            a, b = real.steps(dev, ph), model.steps(dev, ph)
            out.append(PhaseComparison(dev, ph, a, b, compare(a, b)))
    return out


__all__ = ["EXPLAINED", "LINUX_612", "PHASES", "RESUME_SETTLE", "ModelSetup", "PhaseComparison", "PhasedTrace",
           "cell_evidence", "compare_run", "model_run", "model_setup", "real_phases", "unexplained"]

"""The UML scenarios: which pyvirtio devices are plugged, what the guest does, and what is checked afterwards.

Contract. A :class:`Scenario` is data: its devices (built from the seed, so a run is repeatable), the guest
script (busybox sh, run by the initramfs's ``/init`` from the run directory), the fault switches it arms, and a
check function that turns a :class:`~pyvirtio.uml.runner.RunResult` into :class:`Check` results — each one a
fact about the real kernel and pyvirtio's model named in one line, with what was seen. :data:`SCENARIOS` lists
the stock kernel's (the proposal scenarios live in their own modules; :mod:`~pyvirtio.uml.catalog` collects every
one); :func:`run_scenario` runs one. A scenario never raises on what the kernel did: a kernel that hangs, a
driver that did not bind, a frame that did not arrive are failed checks, not exceptions.

A scenario may name a power-management profile (``profile="suspend-bit"``; None: Linux 6.12 as shipped). The
profile decides three things, each from the profile's :class:`~pyvirtio.pm.profiles.BuildPlan`: which UML kernel
build runs (:attr:`Scenario.variant`, a name of :data:`PROFILE_VARIANTS`: the stock kernel with our patch for the
mechanism), how its devices are built and plugged (:meth:`DeviceSpec.from_plan`: PCIe port, No_Soft_Reset, the
freeze_mode field and its bit, the gpu's FREEZING offer), and how pyvirtio's model drivers are configured for the
register-level comparison (:mod:`~pyvirtio.uml.model`).

The guest marks its progress by writing ``PVUML-STEP <what>`` to ``/dev/kmsg``: the line carries the kernel's
own timestamp (virtual time under time travel), which is how a run's register trace is cut into phases.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as Image_

from pyvirtio.clock import MS, S
from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.base import Pending, Reply
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.host.rng import EntropySource, Rng
from pyvirtio.host.testdev import TestDevice
from pyvirtio.pm.profiles import BuildPlan, PlugOptions, parse_profile
from pyvirtio.spec.constants import GpuCmd, GpuResp, PowerState
from pyvirtio.spec.gpu_formats import Image
from pyvirtio.trace import Kind
from pyvirtio.uml.bridge import Bridge, Mode
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.uml.runner import Plug, RunResult, run
from pyvirtio.vhost_user.faults import FaultEngine, FaultPlan, parse_fault
from pyvirtio.vm.uml_guest import expected_frame
from pyvirtio.vm.uml_kernel import UmlAssets

Log = Callable[[str], None]
STEP = "PVUML-STEP"
#: Marks at which the scanout is captured (what the screen showed when the guest had drawn).
FRAME_MARKS = ("drawn", "drawn-after")
#: Scanout 0 captured at each mark of :data:`FRAME_MARKS` (None: it showed nothing).
Frames = dict[str, Image | None]
_PRINTK = re.compile(r"^\[\s*(\d+)\.(\d{6})\]\s*(.*)$")


@dataclass(frozen=True)
class Check:
    """One checked fact: its name, whether it held, and what was seen."""

    name: str
    ok: bool
    seen: str

    def line(self) -> str:
        """``ok``/``FAILED``, the name and what was seen."""
        return f"{'ok    ' if self.ok else 'FAILED'} {self.name}: {self.seen}"


class FaultyGpu(PmGpu):
    """A virtio-gpu (with the 2023 proposals' device side, :class:`~pyvirtio.host.gpu.freezing.PmGpu`: FREEZING
    is offered only with ``offer_freezing``) whose command ``fail_command`` always answers ERR_UNSPEC (``--fault
    error=CMD``); the fault is traced as a device event, not as a violation of the driver."""

    def __init__(self, name: str = "gpu", *, fail_command: int | None = None, **kw: object) -> None:
        super().__init__(name, **kw)
        self.fail_command = fail_command

    def _dispatch(self, p: Pending) -> Reply:
        if self.fail_command is not None and p.hdr is not None and p.hdr.type == self.fail_command:
            self.trace(Kind.DEVICE, event="fault_injected", cmd=GpuCmd(self.fail_command).name)
            return GpuResp.ERR_UNSPEC, b""
        return super()._dispatch(p)


#: The UML kernel build each profile runs (a :data:`~pyvirtio.vm.uml_kernel.PROPOSAL_VARIANTS` name): Linux 6.12
#: with our patch for that mechanism. A profile not listed here cannot run in UML.
PROFILE_VARIANTS: dict[str, str] = {
    "suspend-bit": "suspend",
    "freeze-mode": "freeze-mode",
    "gpu-freezing": "freezing",
}
#: The stock kernel's variant name (:data:`~pyvirtio.vm.uml_kernel.STOCK`).
STOCK_VARIANT = "stock"


def profile_plan(profile: str) -> BuildPlan:
    """The build plan of ``profile`` (a name :data:`PROFILE_VARIANTS` lists; ValueError otherwise)."""
    canonical = parse_profile(profile).name
    if canonical not in PROFILE_VARIANTS:
        raise ValueError(f"profile {profile!r} has no UML kernel build (known: {', '.join(PROFILE_VARIANTS)})")
    return parse_profile(canonical).plan()


@dataclass(frozen=True)
class DeviceSpec:
    """A device of a scenario: kind (``rng``, ``gpu``, ``testdev``), how it is plugged (PCIe port, No_Soft_Reset,
    the 2023 freeze_mode field behind feature bit ``freeze_mode_bit``, None: no field), how it is built (the gpu's
    2023 FREEZING offer, the VIRTIO_F_SUSPEND offer), its faults. :meth:`from_plan` takes the plug and build
    options from a profile's plan."""

    kind: str
    pcie_port: bool = False
    no_soft_reset: bool = False
    faults: tuple[str, ...] = ()
    freeze_mode_bit: int | None = None
    offer_freezing: bool = False
    offer_suspend: bool = True  # pyvirtio's devices offer VIRTIO_F_SUSPEND unless told not to

    @classmethod
    def from_plan(cls, kind: str, plan: BuildPlan, *, faults: tuple[str, ...] = (),
                  pcie_port: bool | None = None) -> DeviceSpec:
        """The ``rng`` or ``gpu`` of a profile's plan (its :class:`~pyvirtio.pm.profiles.PlugOptions`, and for the
        gpu its device configuration); ``pcie_port`` overrides the plan's (S3 in UML needs a port for PMCSR even
        when the profile needs no No_Soft_Reset)."""
        if kind not in ("rng", "gpu"):
            raise ValueError(f"a plan builds rng and gpu, not {kind!r}")
        opts: PlugOptions = plan.gpu_plug if kind == "gpu" else plan.rng_plug
        return cls(kind, pcie_port=opts.pcie_port if pcie_port is None else pcie_port,
                   no_soft_reset=opts.no_soft_reset, faults=faults,
                   freeze_mode_bit=opts.freeze_mode_bit if opts.freeze_mode else None,
                   offer_freezing=kind == "gpu" and plan.gpu_device.offer_freezing)

    def build(self, seed: int) -> tuple[VirtioDevice, FaultPlan]:
        """The device model and its parsed fault plan."""
        allowed = frozenset({"delay", "hang-after", "needs-reset-after", "quiesce-never-ends", "suspend-fails",
                             "resume-fails"})
        if self.kind == "gpu":
            allowed |= {"error"}
        plan = parse_fault(self.faults, allowed)
        dev: VirtioDevice
        if self.kind == "rng":
            dev = Rng("rng", seed=seed, offer_suspend=self.offer_suspend)
        elif self.kind == "gpu":
            cmd = GpuCmd[plan.error_command] if plan.error_command else None
            dev = FaultyGpu("gpu", fail_command=int(cmd) if cmd is not None else None,
                            offer_freezing=self.offer_freezing, offer_suspend=self.offer_suspend)
        elif self.kind == "testdev":
            dev = TestDevice("testdev")
        else:
            raise ValueError(f"unknown device kind {self.kind!r}")
        return dev, plan

    def plug(self, device: VirtioDevice) -> Plug:
        """How :func:`~pyvirtio.uml.runner.run` plugs ``device`` (the model's machine takes the same options)."""
        return Plug(device, self.pcie_port, self.no_soft_reset, self.freeze_mode_bit)


#: A scenario's hook into the run: called with each console line, the machine and the run's scratch state.
LineHook = Callable[[str, UmlMachine, dict[str, object]], None]
#: What the host does while the guest sleeps (a display event, say), given the scenario's devices by kind; run
#: in UML and in the model alike (:attr:`Scenario.while_asleep`).
HostEvent = Callable[[Mapping[str, VirtioDevice]], None]


@dataclass(frozen=True)
class Scenario:
    """One scenario (see the module contract). ``profile``: the pm profile (None: stock Linux 6.12);
    ``model_gpu_driver``: the gpu driver kind the model runs when it is not the plan's (a patch that gives the
    real driver other hooks than the profile's model driver has); ``on_line``: extra console-line hooks (a
    device event while the guest sleeps, say; the scratch state's ``frames`` is the run's :data:`Frames`, where a
    hook may store scanouts of its own); ``resume_until``: the guest mark where the register-level comparison's
    resume phase ends (later than ``resumed`` when the kernel finishes its resume in a work item, as a deferred
    configuration change's handling); ``cell``: the sleep state (``S3``) of the PM-matrix cell (profile, sleep)
    this run checks on a real kernel, recorded in the ledger of real runs (None: a fault or variant scenario).

    ``while_asleep`` runs ``asleep_after`` ns of virtual time after every function behind a PCIe port reached
    D3hot (in UML: seen before the kernel's next access; in the model: after the guest's suspend, before its
    resume), once: a host event the devices see while the guest sleeps."""

    name: str
    about: str
    devices: tuple[DeviceSpec, ...]
    script: str
    checks: Callable[[RunResult, Scenario, Frames], list[Check]]
    timeout: float = 60.0
    pme_after_suspend: int | None = None  # ns after "PM: suspend entry": the rng's function signals PME
    notes: tuple[str, ...] = field(default=())
    profile: str | None = None
    model_gpu_driver: GpuDriverKind | None = None
    on_line: tuple[LineHook, ...] = ()
    while_asleep: HostEvent | None = None
    asleep_after: int = 500 * MS
    resume_until: str = "resumed"
    cell: str | None = None
    #: register-level differences from the model this scenario's mechanism explains, per phase (patterns of
    #: step texts), on top of :data:`pyvirtio.uml.model.EXPLAINED`
    explained: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.profile is not None:
            profile_plan(self.profile)  # a profile without a kernel build is a programming error, found early

    @property
    def sleeps(self) -> bool:
        """The scenario suspends the guest (S3)."""
        return "/sys/power/state" in self.script

    @property
    def plan(self) -> BuildPlan | None:
        """The profile's build plan (None: stock)."""
        return None if self.profile is None else profile_plan(self.profile)

    @property
    def variant(self) -> str:
        """The name of the UML kernel build this scenario runs (:data:`PROFILE_VARIANTS`, or ``stock``)."""
        return STOCK_VARIANT if self.profile is None else PROFILE_VARIANTS[parse_profile(self.profile).name]


# -- guest scripts ----------------------------------------------------------------------------------------------

PRELUDE = r"""mark() { echo "PVUML-STEP $*" > /dev/kmsg; }
pci_list() {
  for d in /sys/bus/pci/devices/*; do
    if [ -e "$d/driver" ]; then drv=$(basename "$(readlink "$d/driver")"); else drv=-; fi
    echo "$(basename "$d") $(cat "$d/vendor") $(cat "$d/device") $drv"
  done
}
virtio_list() {
  for v in /sys/bus/virtio/devices/*; do
    if [ -e "$v/driver" ]; then drv=$(basename "$(readlink "$v/driver")"); else drv=-; fi
    echo "$(basename "$v") $(cat "$v/device") $(cat "$v/status") $drv"
  done
}
echo 1 > /sys/power/pm_debug_messages 2>/dev/null
mark probed
pci_list > /host/pci.txt
virtio_list > /host/virtio.txt
cat /proc/interrupts > /host/interrupts.txt
"""

BOOT_SCRIPT = PRELUDE + r"""
cat /sys/class/misc/hw_random/rng_available /sys/class/misc/hw_random/rng_current > /host/rng.txt 2>&1
dd if=/dev/hwrng of=/host/entropy.bin bs=64 count=1 2>/dev/null
mark entropy rc=$?
pvfb draw 7 300 > /host/pvfb.txt 2>&1
mark drawn rc=$?
cat /dev/fb0 > /host/fb0.bin
mark done
"""


def sleep_script(*, rtc_wake: bool = True, gpu: bool = True, in_flight: bool = True) -> str:
    """S3 with the rng read and (``gpu``) the screen redrawn while the guest goes to sleep; woken by the UML RTC
    alarm (``rtc_wake``) or by the device (PME); afterwards entropy is read and a new frame drawn."""
    s = PRELUDE + "dd if=/dev/hwrng of=/host/entropy.bin bs=64 count=1 2>/dev/null\n"
    if gpu:
        s += "pvfb draw 3 300 > /dev/null 2>&1\n"
    if in_flight:
        # one long reader, not a loop of short ones: under time travel a fork per read would burn real time
        # while the kernel's clock hardly moves
        s += "dd if=/dev/hwrng of=/dev/null bs=512 count=1000000 2>/dev/null &\nRP=$!\n"
        if gpu:
            s += "pvfb loop 20 1000 > /dev/null 2>&1 &\nFP=$!\n"
        s += "sleep 0.2\n"
    if rtc_wake:
        s += "echo 0 > /sys/class/rtc/rtc0/wakealarm\necho +2 > /sys/class/rtc/rtc0/wakealarm\n"
    s += "mark suspend\necho mem > /sys/power/state\nmark resumed rc=$?\n"
    if in_flight:
        # no `wait`: busybox sh's wait can spin on ECHILD, and a spinning guest stops the virtual clock
        s += "kill $RP" + (" $FP" if gpu else "") + " 2>/dev/null\nsleep 0.1\n"
    s += ("timeout 5 dd if=/dev/hwrng of=/host/entropy-after.bin bs=64 count=1 2>/dev/null\n"
          "mark entropy-after rc=$?\n")
    if gpu:
        s += "timeout 5 pvfb draw 11 300 > /host/pvfb-after.txt 2>&1\nmark drawn-after rc=$?\n"
    s += "virtio_list > /host/virtio-after.txt\ncat /proc/interrupts > /host/interrupts-after.txt\nmark done\n"
    return s


FAULT_SCRIPT = PRELUDE + r"""
timeout 5 dd if=/dev/hwrng of=/host/entropy.bin bs=64 count=1 2>/dev/null
mark entropy rc=$?
timeout 5 dd if=/dev/hwrng of=/host/entropy2.bin bs=64 count=4 2>/dev/null
mark entropy2 rc=$?
virtio_list > /host/virtio-after.txt
mark done
"""

GPU_FAULT_SCRIPT = PRELUDE + r"""
timeout 10 pvfb draw 5 300 > /host/pvfb.txt 2>&1
mark drawn rc=$?
virtio_list > /host/virtio-after.txt
mark done
"""


# -- reading a run ----------------------------------------------------------------------------------------------


def kernel_time(line: str) -> tuple[int, str] | None:
    """(ns, message) of a console line with a printk timestamp."""
    m = _PRINTK.match(line)
    if not m:
        return None
    return int(m.group(1)) * S + int(m.group(2)) * 1000, m.group(3)


def steps_seen(r: RunResult) -> list[tuple[int, str]]:
    """The guest's ``PVUML-STEP`` marks with their kernel time."""
    out = []
    for ln in r.console:
        kt = kernel_time(ln)
        if kt and kt[1].startswith(STEP):
            out.append((kt[0], kt[1][len(STEP):].strip()))
    return out


def step_time(r: RunResult, name: str) -> int | None:
    """Kernel time of the first mark starting with ``name``."""
    for t, what in steps_seen(r):
        if what.split()[0] == name:
            return t
    return None


def step_rc(r: RunResult, name: str) -> int | None:
    """The ``rc=`` of the first mark called ``name``."""
    for _, what in steps_seen(r):
        parts = what.split()
        if parts and parts[0] == name:
            for p in parts[1:]:
                if p.startswith("rc="):
                    try:
                        return int(p[3:])
                    except ValueError:
                        return None
    return None


def mark_pos(r: RunResult, name: str) -> int | None:
    """Where in the machine trace the guest's first mark called ``name`` falls (how many events came before it;
    under time travel exact: the console is read before each kick is served)."""
    for line, pos in zip(r.console, r.console_pos, strict=True):
        if STEP in line and line.split(STEP, 1)[1].split()[:1] == [name]:
            return pos
    return None


def status_writes(r: RunResult, fn: str, lo: int = 0, hi: int | None = None) -> list[int]:
    """The status bytes the device presented (machine trace), from event index ``lo`` up to ``hi``."""
    return [int(e.detail["status"]) for e in r.trace[lo:hi] if e.kind is Kind.STATUS and e.src == fn]


def _file(r: RunResult, name: str) -> bytes | None:
    try:
        return (r.directory / name).read_bytes()
    except OSError:
        return None


def entropy_served(r: RunResult, name: str, seed: int, data: bytes | None) -> Check:
    """The bytes the guest read are a run of the stream pyvirtio's rng served."""
    if not data:
        return Check(f"{name}: the guest read entropy from /dev/hwrng", False, "nothing was read")
    dev = r.function("rng").device
    served = dev.served if isinstance(dev, Rng) else 0
    stream = EntropySource(seed).read(max(served, len(data)))
    at = stream.find(data)
    return Check(f"{name}: the bytes the guest read from /dev/hwrng are bytes pyvirtio's rng served", at >= 0,
                 f"{len(data)} bytes at offset {at} of the {served} bytes served" if at >= 0
                 else f"{data[:8].hex()}... not in the {served} bytes served")


def frame_check(frames: dict[str, Image | None], mark: str, name: str, seed: int, directory: Path) -> Check:
    """pyvirtio's scanout 0, as it was when the guest printed ``mark``, equals the picture ``pvfb draw SEED``
    drew, pixel for pixel (saved as ``scanout-<mark>.png``)."""
    if mark not in frames:
        return Check(name, False, f"the guest never reached '{mark}'")
    img = frames[mark]
    if img is None:
        return Check(name, False, "scanout 0 showed nothing")
    h, w = img.shape[:2]
    want = expected_frame(w, h, seed)
    diff = int(np.count_nonzero(np.any(img[..., :3] != want[..., :3], axis=-1)))
    with contextlib.suppress(OSError):
        Image_.fromarray(img, "RGBA").save(directory / f"scanout-{mark}.png")
    return Check(name, diff == 0, f"{w}x{h}, {diff} pixels differ" if diff else f"{w}x{h}, pixel-exact")


def fb0_check(r: RunResult, name: str, seed: int, file: str = "fb0.bin") -> Check:
    """The guest's own /dev/fb0 bytes are the pattern (the XRGB8888 the kernel holds)."""
    data = _file(r, file)
    fn = r.function("gpu").device
    if not data or not isinstance(fn, Gpu):
        return Check(name, False, f"no {file}")
    w, h = fn.scanout_width(0), fn.scanout_height(0)
    if len(data) < w * h * 4:
        return Check(name, False, f"{len(data)} bytes, want {w * h * 4}")
    px = np.frombuffer(data[: w * h * 4], dtype="<u4").reshape(h, w)
    want = expected_frame(w, h, seed)
    rgb = np.stack([(px >> 16) & 0xFF, (px >> 8) & 0xFF, px & 0xFF], axis=-1).astype(np.uint8)
    diff = int(np.count_nonzero(np.any(rgb != want[..., :3], axis=-1)))
    return Check(name, diff == 0, "pixel-exact" if diff == 0 else f"{diff} pixels differ")


def bound(r: RunResult, devname: str, virtio_id: int, driver: str) -> Check:
    """A virtio device of ``virtio_id`` is bound to ``driver`` (guest sysfs)."""
    text = (_file(r, "virtio.txt") or b"").decode(errors="replace")
    lines = [ln.split() for ln in text.splitlines()]
    hit = [ln for ln in lines if len(ln) >= 4 and ln[1] == f"0x{virtio_id:04x}"]
    ok = any(ln[3] == driver for ln in hit)
    return Check(f"{devname}: the real {driver} driver bound pyvirtio's device", ok,
                 " ".join(" ".join(ln) for ln in hit) or "not listed in /sys/bus/virtio/devices")


def common_checks(r: RunResult) -> list[Check]:
    """What every run must show: the guest finished, no read timed out, the interrupts the kernel took."""
    out = [Check("the guest script ran to its end", r.guest_rc == 0, f"ended: {r.ended}, rc={r.guest_rc}"),
           Check("no config/BAR read timed out in the kernel (virt-pci delay)", not r.read_timeouts,
                 "; ".join(r.read_timeouts[:2]) or "none")]
    msis = [w for w in r.wire if w.op == "MSI"]
    out.append(Check("MSI-X messages reached the kernel with the data it programmed", bool(msis) or not r.functions,
                     f"{len(msis)} MSI messages, data {sorted({m.value for m in msis if m.value is not None})}"))
    return out


def _boot_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = common_checks(r)
    out.append(bound(r, "rng", 4, "virtio_rng"))
    out.append(bound(r, "gpu", 16, "virtio_gpu"))
    done = step_time(r, "done")
    for name in ("rng", "gpu"):
        seq = status_writes(r, name)
        out.append(Check(f"{name}: the device reached DRIVER_OK (status 0x0f)", 0x0F in seq,
                         " ".join(f"{s:#04x}" for s in seq)))
    seq = status_writes(r, "testdev")
    out.append(Check("testdev: probed by virtio_pci, no driver: status stays ACKNOWLEDGE", seq[:1] == [0x01]
                     and 0x03 not in seq, " ".join(f"{s:#04x}" for s in seq)))
    del done
    out.append(entropy_served(r, "boot", r.seed, _file(r, "entropy.bin")))
    out.append(frame_check(frames, "drawn", "gpu: the frame drawn into fb0 is pyvirtio's scanout, pixel-exact", 7,
                           r.directory))
    out.append(fb0_check(r, "gpu: the guest's fb0 holds the frame", 7))
    return out


def _sleep_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = common_checks(r)
    p_s = mark_pos(r, "suspend")
    p_r = mark_pos(r, "resumed")
    out.append(Check("the guest suspended and resumed (echo mem > /sys/power/state returned 0)",
                     step_rc(r, "resumed") == 0 and p_s is not None, f"rc={step_rc(r, 'resumed')}"))
    for spec in sc.devices:
        name = spec.kind
        fn = r.function(name)
        if spec.pcie_port:
            pm = [e for e in r.trace if e.kind is Kind.PM and e.src == name and e.detail.get("event") == "power_state"]
            seen = " ".join(f"{e.detail.get('frm')}->{e.detail.get('to')}" for e in pm)
            out.append(Check(f"{name}: the PCI core moved the function D0 -> D3hot -> D0", "D0->D3hot" in seen
                             and seen.rstrip().endswith("->D0"), seen or "no PMCSR change"))
        seq = status_writes(r, name, p_s or 0, p_r)
        if spec.no_soft_reset:
            out.append(Check(f"{name}: No_Soft_Reset: no virtio reset across S3 (virtio_pci_suspend skips freeze)",
                             0 not in seq, " ".join(f"{s:#04x}" for s in seq) or "no status change"))
        else:
            want = [0x00, 0x01, 0x03, 0x0B, 0x0F]
            got = [s for s in seq if s in want]
            out.append(Check(f"{name}: without No_Soft_Reset: freeze, then restore resets and renegotiates "
                             "(0 1 3 b f)", got[-5:] == want, " ".join(f"{s:#04x}" for s in seq)))
        del fn
    if any(d.kind == "rng" for d in sc.devices):
        out.append(entropy_served(r, "after resume", r.seed, _file(r, "entropy-after.bin")))
    gpu = next((d for d in sc.devices if d.kind == "gpu"), None)
    if gpu is not None:
        fc = frame_check(frames, "drawn-after", "gpu: a frame drawn after resume reaches the scanout", 11,
                         r.directory)
        if gpu.no_soft_reset:
            out.append(fc)
        else:
            out.append(Check("gpu: without No_Soft_Reset the frame drawn after resume is lost (model: baseline, "
                             "the restore re-creates no control queue)", not fc.ok, fc.seen))
    return out


#: The checks of an S3 scenario (what the stock scenarios check; a proposal's scenarios add their own).
sleep_checks = _sleep_checks

_KILLED = (124, 143)  # busybox timeout: the command was still running (SIGTERM)


def console_has(r: RunResult, text: str) -> list[str]:
    """Console lines containing ``text``."""
    return [ln for ln in r.console if text in ln]


def _hang_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return [Check("the guest script ran to its end", r.guest_rc == 0, f"ended: {r.ended}, rc={r.guest_rc}"),
            Check("the first read completes", step_rc(r, "entropy") == 0, f"rc={step_rc(r, 'entropy')}"),
            Check("a request that never completes: the real virtio-rng reader blocks until it is killed",
                  step_rc(r, "entropy2") in _KILLED, f"rc={step_rc(r, 'entropy2')}")]


def _needs_reset_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    seen = [w for w in r.wire if w.op == "MMIO_READ" and w.size == 1 and w.value is not None and w.value & 0x40]
    out = _hang_checks(r, sc, frames)
    out.append(Check("DEVICE_NEEDS_RESET: the real driver reads the status with the bit set and goes on "
                     "(Linux 6.12 has no recovery): its next read hangs", bool(seen),
                     f"status read {seen[0].value:#04x}" if seen else "no status read showed 0x40"))
    return out


def _gpu_error_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    errs = console_has(r, "response 0x1200 (command 0x104)")
    return [Check("the guest script ran to its end", r.guest_rc == 0, f"ended: {r.ended}, rc={r.guest_rc}"),
            Check("RESOURCE_FLUSH answered ERR_UNSPEC: virtio_gpu logs it (rate-limited) and carries on",
                  bool(errs) and step_rc(r, "drawn") == 0, f"{len(errs)} error line(s), draw rc={step_rc(r, 'drawn')}"),
            frame_check(frames, "drawn", "gpu: the frame still shows (the scanout reads the guest blob itself)", 5,
                        r.directory)]


def _slow_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = _sleep_checks(r, sc, frames)
    m = [re.search(r"elapsed ([0-9.]+) seconds", ln) for ln in console_has(r, "Freezing user space processes comp")]
    took = float(m[0].group(1)) if m and m[0] else None
    out.append(Check("a slow device: the freezer waits for the read in flight (virtio-rng waits killable)",
                     took is not None and took >= 0.02, f"user space frozen after {took} s"))
    return out


def _hang_sleep_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    failed = console_has(r, "Freezing user space processes aborted")
    return [Check("the guest script ran to its end", r.guest_rc == 0, f"ended: {r.ended}, rc={r.guest_rc}"),
            Check("a request that never completes blocks S3: the reader cannot be frozen, the suspend is aborted",
                  bool(failed) and step_rc(r, "resumed") not in (0, None),
                  f"{failed[0].strip() if failed else 'no freezer failure'}; echo mem rc={step_rc(r, 'resumed')}")]


def _pme_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = _sleep_checks(r, sc, frames)
    pme = [w for w in r.wire if w.op == "PME"]
    out.append(Check("the device woke the guest with PME (no RTC alarm set)", bool(pme) and
                     step_rc(r, "resumed") == 0, f"{len(pme)} PME message(s)"))
    return out


_RNG, _GPU = DeviceSpec("rng"), DeviceSpec("gpu")

#: Every scenario, by name.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("boot", "rng, gpu and the test device: real probe, entropy read, a frame drawn into fb0",
             (_RNG, _GPU, DeviceSpec("testdev")), BOOT_SCRIPT, _boot_checks),
    Scenario("s3", "S3 with rng and gpu each behind a PCIe port, without No_Soft_Reset, requests in flight",
             (DeviceSpec("rng", pcie_port=True), DeviceSpec("gpu", pcie_port=True)), sleep_script(), _sleep_checks),
    Scenario("s3-nsr", "S3 with rng and gpu each behind a PCIe port with No_Soft_Reset, requests in flight",
             (DeviceSpec("rng", True, True), DeviceSpec("gpu", True, True)), sleep_script(), _sleep_checks),
    Scenario("s3-pme", "S3 with the rng behind a port with No_Soft_Reset, woken by the device's PME",
             (DeviceSpec("rng", True, True),), sleep_script(rtc_wake=False, gpu=False, in_flight=False), _pme_checks,
             pme_after_suspend=2 * S),
    Scenario("fault-slow", "rng whose every request takes 30 ms more (slow device), then S3 without No_Soft_Reset "
             "with reads in flight (slow quiesce)",
             (DeviceSpec("rng", pcie_port=True, faults=("delay=30",)),), sleep_script(gpu=False), _slow_checks),
    Scenario("fault-hang", "rng whose requests never complete after the 2nd (a wedged back-end)",
             (DeviceSpec("rng", faults=("hang-after=2",)),), FAULT_SCRIPT, _hang_checks),
    Scenario("fault-hang-s3", "rng whose requests never complete after the 2nd, then S3 with a reader blocked",
             (DeviceSpec("rng", pcie_port=True, faults=("hang-after=2",)),), sleep_script(gpu=False),
             _hang_sleep_checks),
    Scenario("fault-needs-reset", "rng that sets DEVICE_NEEDS_RESET after 2 completed requests",
             (DeviceSpec("rng", faults=("needs-reset-after=2",)),), FAULT_SCRIPT, _needs_reset_checks),
    Scenario("fault-gpu-error", "gpu that answers every RESOURCE_FLUSH with ERR_UNSPEC",
             (DeviceSpec("gpu", faults=("error=RESOURCE_FLUSH",)),), GPU_FAULT_SCRIPT, _gpu_error_checks),
)}


@dataclass
class ScenarioResult:
    """A scenario's run and its checks."""

    scenario: Scenario
    run: RunResult
    checks: list[Check]
    frames: Frames = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every check held."""
        return all(c.ok for c in self.checks)

    def failure_text(self, tail: int = 25) -> str:
        """The failed checks, then the last ``tail`` console lines and where the run's files are."""
        lines = [c.line() for c in self.checks if not c.ok]
        console = "\n".join(self.run.console[-tail:])
        return "\n".join(lines) + f"\n--- console tail ({self.run.directory}):\n{console}"


def _asleep_check(sc: Scenario, machine: UmlMachine, state: dict[str, object]) -> None:
    """Before each kernel access: once every function behind a port is in D3hot, schedule the scenario's host
    event (see :class:`Scenario`)."""
    event = sc.while_asleep
    if event is None or state.get("asleep"):
        return
    ported = [f for f in machine.functions if f.options.pcie_port]
    if not ported or any(f.power_state is not PowerState.D3HOT for f in ported):
        return
    state["asleep"] = machine.now
    devices = {f.name: f.device for f in machine.functions}
    machine.scheduler.schedule(sc.asleep_after, lambda: event(devices), label="while-asleep")


def run_scenario(assets: UmlAssets, scenario: Scenario | str, directory: Path, *, mode: Mode = Mode.TIME_TRAVEL,
                 seed: int = 0, log: Log = lambda _m: None, timeout: float | None = None) -> ScenarioResult:
    """Run ``scenario`` (a :data:`SCENARIOS` name, or any :class:`Scenario`: :mod:`~pyvirtio.uml.catalog` has
    them all) once in ``directory`` and check it; ``assets`` must be the kernel build of :attr:`Scenario.variant`
    (ValueError otherwise: a proposal's scenario on the stock kernel would check nothing)."""
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    if assets.variant != sc.variant:
        raise ValueError(f"scenario {sc.name} runs on the {sc.variant} kernel build, not {assets.variant}")
    plugs: list[Plug] = []
    engines: list[FaultEngine] = []
    for spec in sc.devices:
        dev, plan = spec.build(seed)
        plugs.append(spec.plug(dev))
        if plan.specs:
            engines.append(FaultEngine(plan, dev, lambda what, detail: log(f"fault {what}: {detail}")))
    for e in engines:
        e.arm()
    frames: Frames = {}
    state: dict[str, object] = {"frames": frames}  # a hook may capture frames of its own under other names

    def setup(machine: UmlMachine, bridge: Bridge) -> None:
        state["machine"] = machine
        if sc.while_asleep is not None:
            bridge.before_kick.append(lambda: _asleep_check(sc, machine, state))


    def on_line(line: str) -> None:
        machine = state.get("machine")
        if not isinstance(machine, UmlMachine):
            return
        if STEP in line:
            mark = line.split(STEP, 1)[1].split()[:1]
            if mark and mark[0] in FRAME_MARKS:
                gpu = next((f.device for f in machine.functions if isinstance(f.device, Gpu)), None)
                img = gpu.scanout_image(0) if gpu is not None else None
                frames[mark[0]] = None if img is None else img.copy()
        if sc.pme_after_suspend is not None and "PM: suspend entry" in line and not state.get("pme"):
            state["pme"] = True
            machine.scheduler.schedule(sc.pme_after_suspend, lambda: machine.pme("rng"), label="pme")
        for hook in sc.on_line:
            hook(line, machine, state)

    r = run(assets, plugs, sc.script, directory, name=sc.name, mode=mode, seed=seed,
            timeout=timeout if timeout is not None else sc.timeout, log=log, on_line=[on_line], setup=setup,
            step_hooks=[e.after_step for e in engines])
    try:
        checks = sc.checks(r, sc, frames)
    except Exception as e:  # a check that cannot even look is a failed check, never a crash
        checks = [Check("the checks could run", False, repr(e))]
    return ScenarioResult(sc, r, checks, frames)


__all__ = ["PROFILE_VARIANTS", "SCENARIOS", "STOCK_VARIANT", "Check", "DeviceSpec", "FaultyGpu", "Frames",
           "HostEvent", "LineHook", "Scenario", "ScenarioResult", "common_checks", "console_has", "entropy_served",
           "frame_check", "kernel_time", "mark_pos", "profile_plan", "run_scenario", "sleep_checks", "sleep_script",
           "status_writes", "step_rc", "step_time", "steps_seen"]

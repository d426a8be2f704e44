"""Run one sleep cell (S3, s2idle or S4 on pc or q35) on a real QEMU + Linux guest and fill a ``CellResult``.

Timings are wall clock: ``suspend_ms`` runs from the guest command to the moment the host sees the guest
asleep (QMP ``SUSPEND`` for S3; every device quiesced in the status trace for s2idle; QEMU exited for S4),
``resume_ms`` from the wake-up (``system_wakeup``; the first serial newline; the second QEMU's start) to the
guest's shell finishing the sleep command.

Contract: :func:`run_cell` always stops QEMU and removes its scratch files, and raises only
:class:`~pyvirtio.vm.errors.VmError` (one line, naming the log directory) when the VM could not be driven; what
the guest did is in the returned :class:`~pyvirtio.report.CellResult`. What a cycle measured is data on
:class:`CycleData` (and on :class:`CellRun`); the notes repeat it in prose for people and are never parsed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from pyvirtio.clock import MS, S
from pyvirtio.guest.kernel import reseed_interval
from pyvirtio.machine import MachineType
from pyvirtio.report import (
    REAL_VM_PROFILE,
    CellResult,
    DeviceOutcome,
    Outcome,
    Report,
    ResourceFate,
    SleepState,
    Source,
    placement,
)
from pyvirtio.spec.constants import Status
from pyvirtio.timeline import DEVICES as TIMELINE_DEVICES
from pyvirtio.timeline import EventKind, initial, render
from pyvirtio.trace import dedup
from pyvirtio.vm import image, statustrace
from pyvirtio.vm.disk import SWAP_DEV, create_disk
from pyvirtio.vm.errors import GuestTimeout, VmError
from pyvirtio.vm.probes import DeviceState, GuestShell, ProbeResult, device_state
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qemu import DEVICE_IDS, MACHINE_TYPES, BootFiles, InsmodError, QemuVm, gpu_device, rng_device
from pyvirtio.vm.serial import Pending
from pyvirtio.vm.stacks import DEFAULT_STACK, NSR_PROFILE
from pyvirtio.vm.timeline import real_events

#: The sleep states the real VM runs, in the report's order.
SLEEP_STATES = tuple(SleepState)
DEVICES = ("gpu", "blk", "rng", "input")
Progress = Callable[[str], None]
#: The q35 ICH9 LPC bridge's config space in the guest (PMBASE at 0x40, ACPI_CNTL at 0x44).
_LPC_CONFIG = "/sys/bus/pci/devices/0000:00:1f.0/config"
#: virtio-gpu's modern PCI id (virtio 1.4 §4.1.2.1: 0x1040 + device id 16).
_GPU_PCI_ID = "0x1050"
#: What our virtio-gpu module (guest/linux) logs: every line carries this tag; restore says how many objects it
#: re-created.
GPU_MODULE_TAG = "s4-replay:"
_RECREATED = re.compile(r"s4-replay: restore: re-created (\d+) objects")
#: QEMU trace events of a host resource being created (RESOURCE_CREATE_2D / _BLOB, virtio 1.4 §5.7.6.8).
_GPU_CREATE_EVENTS = "virtio_gpu_cmd_res_create_"


def _quiet(_: str) -> None:
    pass


@dataclass
class Timeouts:
    """Seconds. Generous for TCG on 2 shared cores; every wait polls and returns as soon as it can."""

    boot: float = 120.0
    command: float = 30.0
    suspend: float = 60.0
    resume: float = 120.0
    first_frame: float = 15.0  # frame drawn before sleep must show up (else the run is broken)
    new_frame: float = 4.0  # frame drawn after resume: how long to wait before calling it lost
    restore: float = 1.5  # how long the pre-sleep picture may take to come back after resume


@dataclass
class CycleData:
    """What one sleep cycle measured (``None``: not measured in this cycle or this sleep state)."""

    index: int
    slept: bool = False
    reached_sleep: bool | None = None  # S3: QEMU saw the guest asleep (QMP SUSPEND)
    suspend_stats: tuple[int, int] | None = None  # s2idle: /sys/power/suspend_stats (success, fail) after wake
    lpc_pm: str | None = None  # q35 S3 that never reached QEMU: ICH9 LPC config bytes 0x40-0x47 then
    suspend_ms: float | None = None
    resume_ms: float | None = None
    display_restored: bool | None = None
    new_frame: bool | None = None
    before: dict[str, DeviceState] = field(default_factory=dict)
    asleep: dict[str, DeviceState] = field(default_factory=dict)
    after: dict[str, DeviceState] = field(default_factory=dict)
    after_probe: dict[str, DeviceState] = field(default_factory=dict)
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    device_notes: dict[str, list[str]] = field(default_factory=dict)  # per device: its states and probes
    notes: list[str] = field(default_factory=list)  # about the cycle as a whole

    def note(self, device: str, text: str) -> None:
        """A note about one device (it goes to that device's notes in the report)."""
        self.device_notes.setdefault(device, []).append(text)


def cell_name(sleep: SleepState | str, machine_type: MachineType | str, stack: str = DEFAULT_STACK,
              nsr: bool = False, rng_port: bool = False, gpu_module: str | None = None) -> str:
    """The cell's directory name under ``out_dir``: ``S3-q35`` (default stack), ``S3-q35-qemu10.0-linux6.12-nsr``,
    ``...-nsr-rngport`` with virtio-rng behind its own root port, ``...-s4-replay`` with our virtio-gpu module."""
    name = f"{SleepState(sleep).value}-{MachineType(machine_type).value}"
    if stack != DEFAULT_STACK:
        name += f"-{stack}"
    return name + ("-nsr" if nsr else "") + ("-rngport" if rng_port else "") + (f"-{gpu_module}" if gpu_module else "")


def real_profile(nsr: bool, gpu_module: str | None = None) -> str:
    """The model profile a real cell corresponds to: ``baseline``, ``no-soft-reset``, ``s4-replay`` (our
    virtio-gpu module) or ``no-soft-reset+s4-replay`` (mechanisms in the model's canonical order)."""
    parts = ([NSR_PROFILE] if nsr else []) + ([gpu_module] if gpu_module else [])
    return "+".join(parts) or REAL_VM_PROFILE


def module_log(dmesg: str) -> list[str]:
    """The lines our virtio-gpu module wrote to the kernel log (tagged :data:`GPU_MODULE_TAG`), without their
    timestamps."""
    return [re.sub(r"^\[\s*[0-9.]+\]\s*", "", ln).strip() for ln in dmesg.splitlines() if GPU_MODULE_TAG in ln]


def objects_recreated(dmesg: str) -> list[int]:
    """How many objects each restore of our module re-created, in the order of the kernel log."""
    return [int(m.group(1)) for m in _RECREATED.finditer(dmesg)]


def parse_pm_capability(config: bytes) -> tuple[int, int, int] | None:
    """(offset, PMC, PMCSR) of the PCI Power Management capability in a config-space dump (PCI PM 1.2 §3.2),
    or None when the function has none. A malformed capability list (a loop, an offset out of range) is None."""
    if len(config) < 0x40 or not config[0x06] & 0x10:  # Status.Capabilities List
        return None
    ptr, seen = config[0x34] & 0xFC, set()
    while ptr >= 0x40 and ptr + 6 <= len(config) and ptr not in seen:
        seen.add(ptr)
        if config[ptr] == 0x01:
            return (ptr, int.from_bytes(config[ptr + 2:ptr + 4], "little"),
                    int.from_bytes(config[ptr + 4:ptr + 6], "little"))
        ptr = config[ptr + 1] & 0xFC
    return None


def describe_pmcsr(found: tuple[int, int, int] | None) -> str:
    """``PM cap 0x7c, PMC 0x0003, PMCSR 0x0008 (No_Soft_Reset)`` or ``no PM capability``."""
    if found is None:
        return "no PM capability"
    off, pmc, pmcsr = found
    return (f"PM cap {off:#04x}, PMC {pmc:#06x}, PMCSR {pmcsr:#06x} "
            f"({'No_Soft_Reset' if pmcsr & 0x8 else 'no No_Soft_Reset'}, D{pmcsr & 0x3})")


class CellRun:
    """One cell: boots the VM, probes, sleeps ``cycles`` times, probes again, collects trace and images."""

    def __init__(self, assets: GuestAssets, sleep: SleepState | str, machine_type: MachineType | str, *,
                 cycles: int = 1, out_dir: Path | None = None, timeouts: Timeouts | None = None,
                 progress: Progress = _quiet, nsr: bool = False, rng_port: bool = False,
                 restore_lpc: bool = False, gpu_module: str | None = None) -> None:
        try:
            self.sleep = SleepState(sleep)
        except ValueError:
            raise ValueError(f"sleep state {sleep!r} (want one of {', '.join(SLEEP_STATES)})") from None
        try:
            self.machine_type = MachineType(machine_type)
        except ValueError:
            raise ValueError(f"machine type {machine_type!r} (want one of {', '.join(MACHINE_TYPES)})") from None
        if cycles < 1:
            raise ValueError("cycles must be >= 1")
        self.assets, self.cycles, self.nsr, self.rng_port = assets, cycles, nsr, rng_port
        self.restore_lpc = restore_lpc and self.machine_type is MachineType.Q35
        gpu_device(assets, self.machine_type, nsr)  # a combination the stack cannot run: ValueError, before QEMU
        rng_device(assets, self.machine_type, nsr, rng_port)
        #: Our virtio-gpu module (guest/linux) in place of the stock one: the initramfs variant that carries it.
        self.gpu_module = gpu_module
        if gpu_module is not None:
            self.assets = replace(assets, initrd=assets.initrd_for(gpu_module))
        self.t = timeouts or Timeouts()
        self.progress = progress
        self.scratch = Path(tempfile.mkdtemp(prefix="pyvirtio-vm-"))
        name = cell_name(self.sleep, self.machine_type, assets.stack, nsr, rng_port, gpu_module)
        self.logs = (out_dir / name) if out_dir else self.scratch / "logs"
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.disk = self.scratch / "disk.img"
        self.boot = 0
        self.machine: QemuVm | None = None
        self.guest: GuestShell | None = None
        self.paths: dict[str, str] = {}
        self.trace_windows: list[tuple[Path, int | None, int | None]] = []  # (log, start marker, end marker)
        self.timeline_windows: list[tuple[list[statustrace.TraceRecord], dict[str, str]]] = []
        self._markers = 0
        self._window_start: int | None = None
        self.result = CellResult(source=Source.REAL_VM, profile=real_profile(nsr, gpu_module), sleep=self.sleep,
                                 machine_type=self.machine_type.value)
        self.images: dict[str, image.RGB] = {}
        self.lpc_pm_boot: str | None = None  # q35: ICH9 LPC config bytes 0x40-0x47 after the first boot
        self.cycle_data: list[CycleData] = []  # per-cycle measurements, for callers that want more than the report
        self.raw_status: dict[str, str] = {}  # per device: the annotated status trace of every window
        self.gpu_commands_after_restore: int | None = None  # virtio_gpu_cmd_* after the gpu's last DRIVER_OK
        self.gpu_creates_after_restore = 0  # of those, host resources created (re-created, or new)
        self.gpu_pm: dict[str, tuple[int, int, int] | None] = {}  # phase -> the gpu's PM capability as read
        ports = assets.stack_info.pcie_ports
        self.result.placement = {"gpu": placement(ports, nsr), "rng": placement(rng_port, nsr and rng_port)}
        if assets.stack != DEFAULT_STACK or nsr:
            where = "behind pcie-root-port" + (" with x-pcie-pm-no-soft-reset=true" if nsr else "")
            self.result.notes.append(f"stack {assets.stack}; gpu {where}"
                                     + (f"; rng {where}" if rng_port else "; rng on pcie.0"))
        if gpu_module is not None:
            self.result.notes.append(f"virtio-gpu: our {gpu_module} module (guest/linux), initramfs "
                                     f"{self.assets.initrd}")
        self.module_log: list[str] = []  # what our virtio-gpu module logged (dmesg at the end of the cell)
        self.objects_recreated: list[int] = []  # per restore of our module: objects re-created
        self.hwrng_stack: str | None = None  # the hwrng fill thread's kernel stack after resume, if rng failed
        self._uptime_at_suspend = 0.0

    # -- plumbing ---------------------------------------------------------------------------------------------

    @property
    def m(self) -> QemuVm:
        """The running QEMU (a VmError if there is none)."""
        if self.machine is None:
            raise VmError("no QEMU running")
        return self.machine

    @property
    def g(self) -> GuestShell:
        """The guest's shell (a VmError before the first boot reached it)."""
        if self.guest is None:
            raise VmError("guest not set up")
        return self.guest

    def _log_hint(self) -> str:
        return f" (logs in {self.logs})"

    def _start_machine(self, *, resume: bool = False) -> QemuVm:
        self.boot += 1
        files = BootFiles.for_boot(self.logs, self.scratch, self.boot)
        self.machine = QemuVm(self.assets, self.machine_type, self.disk, files, resume=resume, nsr=self.nsr,
                              rng_port=self.rng_port)
        self.progress(f"boot {self.boot}: starting QEMU ({self.machine_type.value}, TCG)")
        self.m.start()
        self._markers = 0
        return self.m

    def _discover(self) -> None:
        assert self.m.qmp is not None
        found = {v["path"] for v in self.m.qmp.execute("x-query-virtio")}
        self._markers += 1
        for name, dev_id in DEVICE_IDS.items():
            path = f"/machine/peripheral/{dev_id}/virtio-backend"
            if path not in found:
                raise VmError(f"QEMU has no virtio device at {path} (found: {', '.join(sorted(found))})")
            self.paths[name] = path

    def _mark(self) -> int:
        """Put a marker in the trace log (an ``x-query-virtio`` call); returns its ordinal in this boot."""
        assert self.m.qmp is not None
        self.m.qmp.execute("x-query-virtio")
        self._markers += 1
        return self._markers - 1

    def _states(self) -> dict[str, DeviceState]:
        assert self.m.qmp is not None
        return {name: device_state(self.m.qmp, path) for name, path in self.paths.items()}

    def _screendump(self, name: str) -> image.RGB:
        assert self.m.qmp is not None
        ppm = self.scratch / f"{name}.ppm"
        self.m.qmp.execute("screendump", {"filename": str(ppm), "device": DEVICE_IDS["gpu"]})
        rgb = image.read_ppm(ppm)
        ppm.unlink()
        return rgb

    def _wait_screen(self, want: image.RGB, timeout: float, name: str) -> tuple[bool, image.RGB]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._screendump(name)
            if image.same_image(got, want) or time.monotonic() >= deadline:
                return image.same_image(got, want), got
            time.sleep(0.1)

    def _keep_image(self, key: str, rgb: image.RGB) -> None:
        path = self.logs / f"{key}.png"
        image.save_png(rgb, path)
        self.result.images[key] = str(path)
        self.images[key] = rgb

    # -- phases -----------------------------------------------------------------------------------------------

    def _boot_first(self) -> None:
        create_disk(self.disk)
        self._start_machine()
        try:
            secs = self.m.wait_ready(self.t.boot)
        except InsmodError as e:
            raise VmError(self._insmod_failure(e)) from None
        self.progress(f"boot {self.boot}: guest shell after {secs:.1f} s")
        self.result.notes.append(f"boot to shell: {secs:.1f} s")
        self._discover()
        self.guest = GuestShell(self.m.console, self.assets.blk_pattern_md5, self.t.command)
        self.g.setup()
        geom = self.g.fb_geometry()
        fw, fh = self.assets.frame_size
        if not geom.startswith(f"{fw},{fh}"):
            raise VmError(f"guest framebuffer is {geom}, expected {fw},{fh}{self._log_hint()}")
        if self.sleep is SleepState.S4:
            self.g.sh(f"mkswap /dev/{SWAP_DEV} >/dev/null && swapon /dev/{SWAP_DEV} && "
                      "echo shutdown > /sys/power/disk")
        if self.machine_type is MachineType.Q35:
            self.lpc_pm_boot = self._lpc_pm()
        self._read_gpu_pm("boot")
        if self.sleep is SleepState.S2IDLE:
            # The console UART is the wake-up source; its wakeup flag is off by default.
            self.g.sh("echo enabled > /sys/class/tty/ttyS0/power/wakeup")

    def _insmod_failure(self, e: InsmodError) -> str:
        """A module did not load: what the guest's kernel said about it (dmesg, kept in the logs)."""
        shell = GuestShell(self.m.console, self.assets.blk_pattern_md5, self.t.command)
        try:
            dmesg = shell.sh("dmesg", 60)
        except VmError:
            return f"{e} (the guest's dmesg could not be read)"
        (self.logs / "dmesg.txt").write_text(dmesg + "\n")
        stem = e.module.rsplit(".", 1)[0]
        said = [ln.strip() for ln in dmesg.splitlines() if stem in ln or stem.replace("_", "-") in ln][-3:]
        said = said or [ln.strip() for ln in dmesg.splitlines() if ln.strip()][-3:]
        return (f"guest could not load {e.module}; its kernel said: {' | '.join(said)} "
                f"(dmesg: {self.logs / 'dmesg.txt'})")

    def _read_gpu_pm(self, phase: str) -> None:
        """The gpu's PM capability as the guest reads its config space (sysfs), kept per phase."""
        out = self.g.sh(f"for d in /sys/bus/pci/devices/*; do [ $(cat $d/device) = {_GPU_PCI_ID} ] && "
                        "od -An -tx1 -v -N 256 $d/config && break; done; true")
        try:
            config = bytes(int(x, 16) for x in out.split())
        except ValueError:
            config = b""
        self.gpu_pm[phase] = parse_pm_capability(config)

    def _lpc_pm(self) -> str:
        """ICH9 LPC config bytes 0x40-0x47 (PMBASE, ACPI_CNTL), as the guest reads them."""
        return self.g.sh(f"od -An -tx1 -j 64 -N 8 {_LPC_CONFIG}").strip()

    def _restore_lpc(self, cyc: CycleData) -> None:
        """The opt-in guest-side workaround for repeated S3 on q35: the wake-up reset cleared ICH9 LPC PMBASE
        (0x40-0x43) and ACPI_CNTL (0x44) and nothing restores them, so write back the bytes read at boot."""
        assert self.lpc_pm_boot is not None
        now = self._lpc_pm()
        data = "".join(f"\\{int(b, 16):03o}" for b in self.lpc_pm_boot.split()[:5])
        self.g.sh(f"printf '{data}' | dd of={_LPC_CONFIG} bs=1 seek=64 conv=notrunc 2>/dev/null")
        cyc.notes.append(f"workaround: ICH9 LPC 0x40-0x47 read {now} after the wake, PMBASE/ACPI_CNTL written back "
                         f"to {' '.join(self.lpc_pm_boot.split()[:5])}, now {self._lpc_pm()}")

    def _probe(self, cyc: CycleData, phase: str) -> dict[str, ProbeResult]:
        assert self.m.qmp is not None
        res = {"blk": self.g.blk_probe(self.disk), "rng": self.g.rng_probe(),
               "input": self.g.input_probe(self.m.qmp)}
        for name, r in res.items():
            cyc.note(name, f"{phase} {name} probe: {'ok' if r.ok else 'FAILED'}: {r.detail}")
        return res

    def _before(self, cyc: CycleData) -> None:
        self.progress(f"cycle {cyc.index}: drawing frame A, probing devices")
        frame_a = image.make_frame("a")
        self.g.draw("a")
        timeout = self.t.first_frame if cyc.index == 1 else self.t.restore
        shown, rgb = self._wait_screen(frame_a, timeout, "before")
        if cyc.index == 1 and not shown:
            self._keep_image("before", rgb)
            raise VmError(f"frame drawn before sleep never reached the screen{self._log_hint()}")
        self._keep_image("before" if cyc.index == 1 else f"before-{cyc.index}", rgb)
        if cyc.index > 1:
            cyc.before = self._states()
            return
        pre = self._states()
        probes = self._probe(cyc, "before")
        bad = [n for n, r in probes.items() if not r.ok]
        if bad:
            raise VmError(f"probe(s) {', '.join(bad)} failed before sleep: "
                          f"{'; '.join(probes[n].detail for n in bad)}{self._log_hint()}")
        cyc.before = self._states()
        for name in DEVICES:
            cyc.note(name, f"before {name}: {cyc.before[name].summary()}")
            if name != "gpu" and not cyc.before[name].queues[0].progressed_since(pre[name].queues[0]):
                raise VmError(f"{name} queue 0 made no progress during its probe before sleep{self._log_hint()}")

    def _sleep_s3(self, cyc: CycleData) -> Pending:
        assert self.m.qmp is not None
        n = self.m.qmp.event_count()
        pending = self.m.console.start("echo mem > /sys/power/state")
        deadline = time.monotonic() + self.t.suspend
        while True:
            try:
                ev = self.m.qmp.wait_event("SUSPEND", 0.1, n, alive=self.m.alive)
                break
            except GuestTimeout:
                pass
            with contextlib.suppress(GuestTimeout):
                res = self.m.console.wait(pending, 0)
                cyc.reached_sleep = False
                cyc.notes.append(f"aborted: 'echo mem' returned {res.rc} after "
                                 f"{(res.finished_at - pending.sent_at) * 1000:.0f} ms and QEMU never saw S3 "
                                 "(no QMP SUSPEND)")
                if self.lpc_pm_boot is not None:
                    cyc.lpc_pm = self._lpc_pm()
                    cyc.notes.append(f"ICH9 LPC PMBASE/ACPI_CNTL (config 0x40-0x47) now {cyc.lpc_pm}, "
                                     f"at boot {self.lpc_pm_boot}: the wake-up reset cleared them and nothing "
                                     "restored them, so the ACPI PM block (PM1 at PMBASE) is gone")
                cyc.slept = False
                return pending
            if time.monotonic() > deadline:
                raise GuestTimeout(f"no QMP SUSPEND within {self.t.suspend:.0f} s after 'echo mem'; last output: "
                                   f"{self.m.console.tail()}{self._log_hint()}")
        cyc.suspend_ms = (ev.at - pending.sent_at) * 1000
        cyc.reached_sleep = True
        status = self.m.qmp.execute("query-status")["status"]
        cyc.notes.append(f"asleep: QMP SUSPEND, run state {status}")
        cyc.asleep = self._states()
        before = self.images.get("before" if cyc.index == 1 else f"before-{cyc.index}")
        cyc.notes.append(f"screen while asleep equals before: "
                         f"{image.same_image(self._screendump('asleep'), before)}")
        t0 = time.monotonic()
        self.m.qmp.execute("system_wakeup")
        res = self.m.console.wait(pending, self.t.resume)
        cyc.resume_ms = (res.finished_at - t0) * 1000
        cyc.slept = res.rc == 0
        if res.rc != 0:
            cyc.notes.append(f"'echo mem' returned {res.rc}")
        return pending

    def _nsr_devices(self) -> tuple[str, ...]:
        """The devices whose function has No_Soft_Reset: Linux >= 6.8 leaves them alone (no status write)."""
        return (("gpu",) if self.nsr else ()) + (("rng",) if self.nsr and self.rng_port else ())

    def _s2idle_dwell(self, cyc: CycleData) -> float:
        """How long to leave the guest in s2idle (s). 0.3 s lets it finish the noirq phase and idle. With an rng
        left unfrozen by No_Soft_Reset, long enough for the hwrng fill thread's timer to expire inside the window
        (random.c's reseed interval at the guest's uptime, plus 2 s), so the cell measures what a real sleep of
        that length does, not a race."""
        if "rng" not in self._nsr_devices():
            return 0.3
        dwell = reseed_interval(int(self._uptime_at_suspend * S)) / S + 2.0
        cyc.notes.append(f"s2idle for {dwell:.0f} s: guest uptime {self._uptime_at_suspend:.0f} s at suspend, "
                         "so the hwrng fill thread's sleep ends inside the window")
        return dwell

    def _sleep_s2idle(self, cyc: CycleData) -> Pending:
        if "rng" in self._nsr_devices():
            self._uptime_at_suspend = float(self.g.sh("cut -d' ' -f1 /proc/uptime").strip() or 0)
        trace = self.m.files.trace_log
        start = trace.stat().st_size
        pending = self.m.console.start("echo freeze > /sys/power/state")
        mapping = statustrace.identify_devices(statustrace.parse_trace(trace.read_text()), DEVICES)
        deadline = time.monotonic() + self.t.suspend
        quiesced_at = None
        while time.monotonic() < deadline and quiesced_at is None:
            recs = statustrace.parse_trace(trace.read_text()[start:])
            seqs = statustrace.status_sequences(recs, mapping, with_initial=False)
            quiet = [n for n in DEVICES if n not in self._nsr_devices()]  # NSR: no status write
            if all(seqs.get(n) and not seqs[n][-1] & Status.DRIVER_OK for n in quiet):
                quiesced_at = time.monotonic()
                break
            with contextlib.suppress(GuestTimeout):
                res = self.m.console.wait(pending, 0.02)
                cyc.notes.append(f"aborted: 'echo freeze' returned {res.rc} before every device was suspended")
                cyc.slept = False
                return pending
        if quiesced_at is None:
            raise GuestTimeout(f"s2idle: devices not quiesced within {self.t.suspend:.0f} s{self._log_hint()}")
        cyc.suspend_ms = (quiesced_at - pending.sent_at) * 1000
        cyc.asleep = self._states()
        time.sleep(self._s2idle_dwell(cyc))
        t0 = time.monotonic()
        deadline = t0 + self.t.resume
        newlines = 0
        while True:
            self.m.console.send("\n")
            newlines += 1
            try:
                res = self.m.console.wait(pending, 1.0)
                break
            except GuestTimeout:
                if time.monotonic() > deadline:
                    raise
        cyc.resume_ms = (res.finished_at - t0) * 1000
        cyc.slept = res.rc == 0
        cyc.notes.append(f"woken by serial newline ({newlines} sent)")
        stats = self.g.sh("cat /sys/power/suspend_stats/success /sys/power/suspend_stats/fail").split()
        if len(stats) == 2 and all(x.isdigit() for x in stats):
            cyc.suspend_stats = (int(stats[0]), int(stats[1]))
        cyc.notes.append(f"suspend_stats success={stats[0]} fail={stats[1]}")
        if res.rc != 0:
            cyc.notes.append(f"'echo freeze' returned {res.rc}")
        return pending

    def _sleep_s4(self, cyc: CycleData) -> Pending:
        old = self.m
        pending = old.console.start("echo disk > /sys/power/state")
        deadline = time.monotonic() + self.t.suspend
        while old.alive() and not old.console.eof:
            if time.monotonic() > deadline:
                raise GuestTimeout(f"S4: QEMU still running {self.t.suspend:.0f} s after 'echo disk'; "
                                   f"last output: {old.console.tail()}{self._log_hint()}")
            try:
                res = old.console.wait(pending, 0.05)
            except GuestTimeout:
                continue
            except VmError:
                if old.console.eof:
                    break
                raise
            cyc.notes.append(f"'echo disk' returned {res.rc} without powering off")
            cyc.slept = False
            return pending
        old.wait_exit(self.t.suspend)
        exited = time.monotonic()
        cyc.suspend_ms = (exited - pending.sent_at) * 1000
        cyc.notes.append(f"asleep: QEMU exited with status {old.proc.returncode if old.proc else '?'}")
        self.trace_windows.append((old.files.trace_log, self._window_start, None))
        old.stop(graceful=False)
        new = self._start_machine(resume=True)
        started = new.started_at
        con = new.console
        deadline = time.monotonic() + self.t.resume
        while True:
            with contextlib.suppress(GuestTimeout):
                res = con.wait(pending, 0.2, start=0)
                break
            if new.booted_afresh():
                raise VmError(f"S4: the second boot did not resume the hibernated kernel; it booted afresh "
                              f"(last output: {con.tail()}){self._log_hint()}")
            if not new.alive():
                raise VmError(f"S4: QEMU exited during resume (last output: {con.tail()}){self._log_hint()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"S4: no resume within {self.t.resume:.0f} s (last output: {con.tail()})"
                                   f"{self._log_hint()}")
        cyc.resume_ms = (res.finished_at - started) * 1000
        cyc.slept = res.rc == 0
        self.g.console = con
        self._discover()
        self._window_start = None  # the whole second trace belongs to the window
        return pending

    def _after(self, cyc: CycleData) -> None:
        self.progress(f"cycle {cyc.index}: resumed; checking display, queues, probes")
        before_key = "before" if cyc.index == 1 else f"before-{cyc.index}"
        restored, rgb = self._wait_screen(self.images[before_key], self.t.restore, "after")
        cyc.display_restored = restored
        self._keep_image("after" if cyc.index == 1 else f"after-{cyc.index}", rgb)
        info = image.describe(rgb)
        if info.placeholder:
            cyc.notes.append("screen after resume: QEMU's 'Display output is not active.' placeholder")
        cyc.after = self._states()
        self._read_gpu_pm(f"after-{cyc.index}")
        frame_b = image.make_frame("b")
        self.g.draw("b")
        cyc.new_frame, rgb_b = self._wait_screen(frame_b, self.t.new_frame, "new")
        self._keep_image("new-frame" if cyc.index == 1 else f"new-frame-{cyc.index}", rgb_b)
        cyc.probes = self._probe(cyc, "after")
        cyc.after_probe = self._states()
        if not cyc.probes["rng"].ok:
            self._rng_evidence(cyc)
        for name in DEVICES:
            cyc.note(name, f"after {name}: {cyc.after[name].summary()}")

    def _rng_evidence(self, cyc: CycleData) -> None:
        """Why the rng read failed: its ring as QEMU sees it (a buffer the guest made available that the device
        never took means a lost notification) and the hwrng fill thread's kernel stack."""
        assert self.m.qmp is not None
        elem = self.m.qmp.execute("x-query-virtio-queue-element", {"path": self.paths["rng"], "queue": 0})
        q = cyc.after_probe["rng"].queues[0]
        cyc.note("rng", f"after: ring avail idx {elem['avail']['idx']} (guest), used idx {elem['used']['idx']}, "
                        f"device last_avail_idx {q.last_avail}")
        self.hwrng_stack = self.g.sh("for p in /proc/[0-9]*; do grep -q '^Name:.hwrng$' $p/status 2>/dev/null && "
                                     "grep State $p/status && cat $p/stack; done; true").strip()
        cyc.note("rng", "after: hwrng fill thread: " + " | ".join(self.hwrng_stack.splitlines()))

    #: How each sleep state is entered and left.
    _SLEEP: ClassVar[dict[SleepState, Callable[[CellRun, CycleData], Pending]]] = {
        SleepState.S3: _sleep_s3, SleepState.S2IDLE: _sleep_s2idle, SleepState.S4: _sleep_s4}

    # -- result -----------------------------------------------------------------------------------------------

    def _queues_alive(self, cyc: CycleData, name: str) -> bool:
        before, after, probed = cyc.before[name], cyc.after[name], cyc.after_probe[name]
        set_up = [q.index for q in before.queues if q.configured]
        configured = all(after.queues[i].configured and probed.queues[i].configured for i in set_up)
        progress = probed.queues[0].progressed_since(after.queues[0])
        return configured and progress

    def _finish(self, cycles: list[CycleData]) -> CellResult:
        r = self.result
        done = [c for c in cycles if c.slept]
        r.outcome = Outcome.OK if len(done) == len(cycles) else Outcome.ABORTED
        if len(cycles) > 1:
            r.notes.append(f"{len(done)} of {len(cycles)} cycles slept: " + "; ".join(
                f"#{c.index} suspend {c.suspend_ms or 0:.0f} ms resume {c.resume_ms or 0:.0f} ms" if c.slept
                else f"#{c.index} aborted" for c in cycles))
        seqs, raw, gpu_cmds_after, resets = self._sequences()
        self.raw_status, self.gpu_commands_after_restore = raw, gpu_cmds_after
        self._timeline(seqs)
        if done:
            r.suspend_ms = done[0].suspend_ms
            r.resume_ms = done[0].resume_ms
            r.display_restored = all(bool(c.display_restored) for c in done)
            r.new_frame_after_resume = all(bool(c.new_frame) for c in done)
            r.resources = ResourceFate.KEPT if not resets else (
                ResourceFate.RECREATED if self.gpu_creates_after_restore else ResourceFate.LOST)
        for name in DEVICES:
            alive = all(self._queues_alive(c, name) for c in done) if done else None
            if not done:
                functional = None
            elif name == "gpu":
                functional = r.new_frame_after_resume
            else:
                functional = all(c.probes[name].ok for c in done)
            notes = [f"cycle {c.index}: {n}" for c in cycles for n in c.device_notes.get(name, [])]
            notes.append(f"status trace (raw): {raw.get(name, '')}")
            if name == "gpu":
                notes.append(f"virtio_gpu_cmd_* in trace after the last restore: {gpu_cmds_after}, of which "
                             f"{self.gpu_creates_after_restore} created a resource")
                notes.extend(f"our module: {ln}" for ln in self.module_log)
                notes.extend(f"PCI PM as the guest reads it ({phase}): {describe_pmcsr(pm)}"
                             for phase, pm in self.gpu_pm.items())
            r.devices[name] = DeviceOutcome(name=name, status_sequence=seqs.get(name, []), queues_alive=alive,
                                            functional_after=functional, notes=notes)
        if done:
            r.queues_alive = all(bool(d.queues_alive) for d in r.devices.values())
        for c in cycles:
            r.notes.extend(f"cycle {c.index}: {n}" for n in c.notes)
        r.notes.append(f"logs: {self.logs}")
        return r

    def _timeline(self, seqs: dict[str, list[int]]) -> None:
        """The cell's timeline picture (``timeline.png`` in the logs), from every trace window."""
        start = {n: seqs[n][0] for n in TIMELINE_DEVICES if seqs.get(n)}
        events = initial(0, start) + real_events(self.timeline_windows, TIMELINE_DEVICES)
        # up to half a second after the last power-management event: the probes after resume are not drawn
        last = max((e.time_ns for e in events if e.kind in (EventKind.PM, EventKind.D_STATE)), default=0)
        events = [e for e in events if e.time_ns <= last + 500 * MS]
        where = f"{self.assets.stack}, gpu {self.result.placement.get('gpu', '?')}"
        self.result.images["timeline"] = render(
            events, self.logs / "timeline.png", devices=TIMELINE_DEVICES, clock="wall-clock time (QEMU trace)",
            gap_ns=200 * MS,
            title=f"{self.result.profile} / {self.sleep.value} on {self.machine_type.value} (real VM: {where})")

    def _sequences(self) -> tuple[dict[str, list[int]], dict[str, str], int, bool]:
        """Status sequences over every trace window (deduplicated and raw), gpu commands after the gpu's
        last DRIVER_OK, and whether the gpu was reset in the window."""
        seqs: dict[str, list[int]] = {n: [] for n in DEVICES}
        raw: dict[str, list[str]] = {n: [] for n in DEVICES}
        gpu_after = 0
        gpu_reset = False
        for k, (log, start_m, end_m) in enumerate(self.trace_windows):
            recs = statustrace.parse_trace(log.read_text(errors="replace"))
            mapping = statustrace.identify_devices(recs, DEVICES)
            missing = set(DEVICES) - set(mapping.values())
            if missing:
                self.result.notes.append(f"{log.name}: could not identify {', '.join(sorted(missing))} "
                                         "in the trace")
            marks = statustrace.marker_indices(recs)
            start = marks[start_m] if start_m is not None and start_m < len(marks) else 0
            end = marks[end_m] if end_m is not None and end_m < len(marks) else None
            self.timeline_windows.append((recs[start:end], mapping))
            part = statustrace.status_sequences(recs, mapping, start, end, with_initial=(k == 0))
            ann = statustrace.annotated_sequences(recs, mapping, start, end)
            for name, seq in part.items():
                seqs[name] = dedup(seqs[name] + seq)
                raw[name].append((f"[boot {k + 1}] " if len(self.trace_windows) > 1 else "") + ann.get(name, ""))
            gpu_ptrs = {p for p, n in mapping.items() if n == "gpu"}
            window = recs[start:end]
            if any(x.event == "virtio_set_status" and x.vdev in gpu_ptrs and x.value == 0 for x in window):
                gpu_reset = True
            if k == len(self.trace_windows) - 1:
                restored = self._last_gpu_restore(recs, mapping, start, end)
                gpu_after = len(statustrace.events_between(recs, "virtio_gpu_cmd_", restored + 1, end))
                self.gpu_creates_after_restore = len(statustrace.events_between(recs, _GPU_CREATE_EVENTS,
                                                                                restored + 1, end))
        return seqs, {n: " ".join(v) for n, v in raw.items()}, gpu_after, gpu_reset

    @staticmethod
    def _last_gpu_restore(recs: list[statustrace.TraceRecord], mapping: dict[str, str], start: int,
                          end: int | None) -> int:
        """Index of the gpu's last DRIVER_OK in the window (the restore), else ``start``."""
        gpu = {p for p, n in mapping.items() if n == "gpu"}
        idx = start
        for i in range(start, len(recs) if end is None else end):
            r = recs[i]
            if r.event == "virtio_set_status" and r.vdev in gpu and r.value is not None \
                    and r.value & Status.DRIVER_OK:
                idx = i
        return idx

    # -- driver -----------------------------------------------------------------------------------------------

    def run(self) -> CellResult:
        """Boot, measure, sleep ``cycles`` times, measure; always stops QEMU and removes scratch files."""
        t0 = time.monotonic()
        try:
            self._boot_first()
            cycles = self.cycle_data
            for k in range(1, self.cycles + 1):
                cyc = CycleData(k)
                cycles.append(cyc)
                self._before(cyc)
                if k == 1:
                    self._window_start = self._mark()
                self.progress(f"cycle {k}: {self.sleep.value}")
                self._SLEEP[self.sleep](self, cyc)
                if cyc.slept and self.restore_lpc and self.sleep is SleepState.S3:
                    self._restore_lpc(cyc)
                if cyc.slept:
                    self._after(cyc)
            end = self._mark()
            self.trace_windows.append((self.m.files.trace_log, self._window_start, end))
            with contextlib.suppress(VmError):
                dmesg = self.g.sh("dmesg", 60)
                (self.logs / "dmesg.txt").write_text(dmesg + "\n")
                self.module_log, self.objects_recreated = module_log(dmesg), objects_recreated(dmesg)
            self.m.stop()
            result = self._finish(cycles)
            result.notes.append(f"wall time {time.monotonic() - t0:.1f} s")
            return result
        except VmError as e:
            msg = str(e)
            if str(self.logs) not in msg:
                msg += self._log_hint()
            raise type(e)(msg) from None
        finally:
            if self.machine is not None:
                self.machine.stop(graceful=False)
            shutil.rmtree(self.scratch, ignore_errors=True)


def run_cell(assets: GuestAssets, sleep: SleepState | str, machine_type: MachineType | str, *, cycles: int = 1,
             out_dir: Path | None = None, timeouts: Timeouts | None = None,
             progress: Progress = _quiet, nsr: bool = False, rng_port: bool = False,
             restore_lpc: bool = False, gpu_module: str | None = None) -> CellResult:
    """Run one cell on the real VM and return its ``CellResult`` (source ``real-vm``, profile ``baseline``, or
    ``no-soft-reset`` with ``nsr``; ``rng_port`` puts virtio-rng behind its own root port too; ``restore_lpc``
    writes ICH9 LPC PMBASE/ACPI_CNTL back after each S3 wake on q35, so that repeated S3 reaches QEMU;
    ``gpu_module`` boots our virtio-gpu module instead of the stock one, profile ``s4-replay`` or
    ``no-soft-reset+s4-replay``).

    Raises :class:`VmError` (with the log directory in the message) if the VM could not be driven.
    """
    return CellRun(assets, sleep, machine_type, cycles=cycles, out_dir=out_dir, timeouts=timeouts,
                   progress=progress, nsr=nsr, rng_port=rng_port, restore_lpc=restore_lpc,
                   gpu_module=gpu_module).run()


def run_matrix(assets: GuestAssets, out_dir: Path, *, sleeps: tuple[SleepState, ...] = SLEEP_STATES,
               machines: tuple[str, ...] | None = None, cycles: int = 1, timeouts: Timeouts | None = None,
               progress: Progress = _quiet, nsr_variants: tuple[bool, ...] = (False,)) -> Report:
    """Every (sleep, machine, No_Soft_Reset) cell; a cell that fails is recorded with outcome ``error`` and its
    message. ``machines`` defaults to pc and q35, or q35 alone on a stack with pcie-root-ports."""
    if machines is None:
        machines = (MachineType.Q35.value,) if assets.stack_info.pcie_ports else MACHINE_TYPES
    report = Report(meta={"source": Source.REAL_VM.value, **assets.versions(), "cycles": cycles})
    for sleep in sleeps:
        for mt in machines:
            for nsr in nsr_variants:
                name = cell_name(sleep, mt, assets.stack, nsr)
                progress(f"{name}: start")

                def cell_progress(msg: str, name: str = name) -> None:
                    progress(f"{name}: {msg}")

                try:
                    cell = run_cell(assets, sleep, mt, cycles=cycles, out_dir=out_dir, timeouts=timeouts,
                                    progress=cell_progress, nsr=nsr)
                except VmError as e:
                    cell = CellResult(source=Source.REAL_VM, profile=NSR_PROFILE if nsr else REAL_VM_PROFILE,
                                      sleep=SleepState(sleep),
                                      machine_type=mt, outcome=Outcome.ERROR,
                                      notes=[f"stack {assets.stack}, no-soft-reset {nsr}", str(e)])
                report.cells.append(cell)
    return report

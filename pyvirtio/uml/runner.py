"""One UML run: plug pyvirtio devices, boot the kernel against the bridge, run a guest script, collect everything.

Contract. :func:`run` writes the guest script to ``<dir>/scenario.sh`` (the initramfs's ``/init`` runs it from
the host directory mounted with ``hostfs``), starts the UML kernel as a new process group with its console on a
pipe, and serves it (:class:`~pyvirtio.uml.bridge.Bridge`) until the guest prints its done marker, the kernel
exits, or the time-out passes. After the done marker the kernel is given :data:`EXIT_GRACE` seconds to exit and
is then killed with its process group: with a PCI driver bound, UML's exit path is known to panic and hang, and
the run still counts (``ended`` says how it ended). Every console line is kept; console lines are also offered
to ``on_line`` callbacks (a scenario reacts to the guest there). The result (:class:`RunResult`) holds the
register-level trace (every command the kernel sent to a slot and every event sent back), the machine's trace
(every access as the function saw it, status changes, interrupts, violations), the driver monitors' findings,
the kernel's warnings that matter (a ``virt-pci delay``: a read that timed out and returned all-ones) and the
timings. Nothing here leaves a process behind: the process group is killed on any way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyvirtio.atomicio import write_atomic, write_text_atomic
from pyvirtio.conformance.driver_monitor import Violation
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.uml.bridge import Bridge, BridgeStats, Mode
from pyvirtio.uml.carrier import WireRecord
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.vm.errors import VmError
from pyvirtio.vm.uml_guest import DONE_MARKER, INIT_MARKER, NOHOST_MARKER, RUN_ARG
from pyvirtio.vm.uml_kernel import UmlAssets

Log = Callable[[str], None]
#: Seconds the kernel gets to exit after the guest said it is done (it prints "reboot: Power down" first).
EXIT_GRACE = 2.0
POWER_DOWN = "reboot: Power down"
#: Kernel messages that mean something went wrong at register level or in the kernel.
WARNING_PATTERNS = ("um virt-pci delay", "WARNING:", "Kernel panic", "BUG:", "Oops", "timed out",
                    "time-travel:", "probe of", "failed with error")


@dataclass
class Plug:
    """A device to plug into the next slot, and how (behind a PCIe port: the PM capability; No_Soft_Reset; the
    2023 freeze_mode field behind feature bit ``freeze_mode_bit``, None: no field)."""

    device: VirtioDevice
    pcie_port: bool = False
    no_soft_reset: bool = False
    freeze_mode_bit: int | None = None


@dataclass
class RunResult:
    """Everything one run produced (see the module contract)."""

    name: str
    mode: Mode
    seed: int
    ended: str  # "done", "exited", "timeout", "killed after done", "killed after power-down" (the exit-path hang)
    guest_rc: int | None
    console: list[str]
    console_pos: list[int]  # per console line: how many machine-trace events there were when it was read
    wire: list[WireRecord]
    trace: list[TraceEvent]
    driver_violations: dict[str, list[Violation]]
    carrier_findings: list[dict[str, object]]
    stats: BridgeStats
    wall_seconds: float
    boot_seconds: float | None
    virtual_ns: int
    functions: list[VirtioPciFunction]
    machine: UmlMachine
    directory: Path
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def device_violations(self) -> list[TraceEvent]:
        """Violations the device models recorded (rules the kernel broke, seen from the device)."""
        return [e for e in self.trace if e.kind is Kind.VIOLATION]

    @property
    def read_timeouts(self) -> list[str]:
        """Kernel warnings that a config/BAR read timed out (it then returned all-ones)."""
        return [w for w in self.warnings if "virt-pci delay" in w]

    def function(self, name: str) -> VirtioPciFunction:
        """The plugged function called ``name``."""
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)


class _Console:
    """The kernel's console: lines kept, markers noticed, callbacks run."""

    def __init__(self, fd: int, path: Path, on_line: Sequence[Callable[[str], None]],
                 position: Callable[[], int]) -> None:
        self.fd = fd
        self.lines: list[str] = []
        self.positions: list[int] = []  # the machine trace's length when each line was read
        self.position = position
        self._partial = b""
        self._file = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.on_line = list(on_line)
        self.done_rc: int | None = None
        self.done = False
        self.powered_down = False
        self.eof = False
        self.init_at: float | None = None
        self.t0 = time.monotonic()
        os.set_blocking(fd, False)

    def read(self) -> None:
        """Read what is there."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                return
            self._file.write(chunk)
            self._file.flush()
            data = self._partial + chunk
            *whole, self._partial = data.split(b"\n")
            for raw in whole:
                self._line(raw.decode(errors="replace").rstrip("\r"))

    def _line(self, line: str) -> None:
        self.lines.append(line)
        self.positions.append(self.position())
        if INIT_MARKER in line and self.init_at is None:
            self.init_at = time.monotonic() - self.t0
        if POWER_DOWN in line:
            self.powered_down = True
        if line.startswith(DONE_MARKER):
            self.done = True
            with contextlib.suppress(ValueError, IndexError):
                self.done_rc = int(line.split("rc=", 1)[1].split()[0])
        for cb in self.on_line:
            cb(line)

    def close(self) -> None:
        """Flush the last partial line and close the log file."""
        if self._partial:
            self._line(self._partial.decode(errors="replace"))
            self._partial = b""
        self._file.close()


#: What the guest mounts with hostfs: hostfs opens host paths from the kernel's own process, whose working
#: directory is the run directory (hostfs prefixes ``/``, so a relative path would not do).
HOST_DIR = "/proc/self/cwd"
#: The UML instance name. Each run has a directory of its own (``uml_dir``), so one fixed name never collides.
UMID = "pv"


def kernel_command(assets: UmlAssets, bridge_args: list[str], *, mem: str = "256M",
                   extra: Sequence[str] = ()) -> list[str]:
    """The UML command line: the kernel binary and its arguments. The kernel runs in the run directory, and every
    run-specific path on its command line is relative to it (or :data:`HOST_DIR`), with a fixed umid: the command
    line is copied into the kernel's memory at boot, so a path of another length would move its early allocations
    (and so the DMA addresses in the register trace) from one run directory to the next."""
    return [str(assets.kernel), f"mem={mem}", f"initrd={assets.initrd}", "rdinit=/init", "con=null", "ssl=null",
            "con0=fd:0,fd:1", "no_console_suspend", "norandmaps", f"{RUN_ARG}={HOST_DIR}", f"umid={UMID}",
            "uml_dir=.", *bridge_args, *extra]


#: ``personality(2)`` flag: no address-space randomisation for the process (``setarch -R``).
ADDR_NO_RANDOMIZE = 0x0040000
_QUERY_PERSONALITY = 0xFFFFFFFF


def _no_aslr() -> None:
    """In the child before exec: turn off the host's address-space randomisation. UML sizes its physical memory
    from where the host put its heap ("exec-shield gap"), so with ASLR every run has another memory map and the
    kernel's DMA addresses differ from run to run."""
    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(_QUERY_PERSONALITY)
    if current != -1:
        libc.personality(current | ADDR_NO_RANDOMIZE)


#: How much lower the kernel's scheduling priority is than the bridge's in real time (``nice``): the kernel's
#: posted writes fill its command queue when the bridge cannot drain it (a dropped write is a ``WARNING`` in
#: ``virt-pci.c``), and a read is all-ones after 40 ms; on a busy machine the bridge must win the CPU.
REALTIME_KERNEL_NICE = 10


def _realtime_child() -> None:
    """In the child before exec, real-time mode: no address-space randomisation, a lower priority."""
    _no_aslr()
    os.nice(REALTIME_KERNEL_NICE)


def _resume_gc(paused: bool) -> None:
    """Undo the real-time run's garbage-collector pause."""
    if paused:
        gc.unfreeze()
        gc.enable()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run(assets: UmlAssets, plugs: Sequence[Plug], script: str, directory: Path, *, name: str = "run",
        mode: Mode = Mode.TIME_TRAVEL, seed: int = 0, timeout: float = 120.0, log: Log = lambda _m: None,
        on_line: Sequence[Callable[[str], None]] = (), extra_args: Sequence[str] = (),
        setup: Callable[[UmlMachine, Bridge], None] | None = None,
        step_hooks: Sequence[Callable[[], None]] = ()) -> RunResult:
    """Boot the UML kernel with ``plugs`` in slots 0.. and ``script`` as the guest's scenario (see the module
    contract). ``setup`` runs once everything is plugged, before the kernel starts."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(directory / "pci0.sock")) > 100:
        raise VmError(f"run directory {directory} is too long for a socket path")
    write_text_atomic(directory / "scenario.sh", script)
    machine = UmlMachine(seed=seed)
    bridge = Bridge(machine, directory, mode=mode, log=log, step_hooks=list(step_hooks))
    functions: list[VirtioPciFunction] = []
    for p in plugs:
        fn = machine.plug(p.device, pcie_port=p.pcie_port, no_soft_reset=p.no_soft_reset,
                          freeze_mode_bit=p.freeze_mode_bit)
        bridge.add(fn)
        functions.append(fn)
    if setup is not None:
        setup(machine, bridge)
    argv = kernel_command(assets, bridge.kernel_args(), extra=extra_args)
    write_atomic(directory / "cmdline.txt", b" ".join(os.fsencode(a) for a in argv) + b"\n")  # paths may not be UTF-8
    env = {**os.environ, "TMPDIR": "."}  # relative, like the command line (see kernel_command)
    t0 = time.monotonic()
    paused_gc = mode is Mode.REALTIME and gc.isenabled()
    if paused_gc:  # a full collection over a large heap (earlier runs' traces) can outlast the kernel's 40 ms read
        gc.collect()
        gc.freeze()
        gc.disable()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=directory, env=env, start_new_session=True,
                                preexec_fn=_no_aslr if mode is Mode.TIME_TRAVEL else _realtime_child)
    except OSError as e:
        bridge.close()
        _resume_gc(paused_gc)
        raise VmError(f"cannot start the UML kernel {assets.kernel}: {e.strerror or e}") from None
    assert proc.stdout is not None
    console = _Console(proc.stdout.fileno(), directory / "console.log", on_line,
                       lambda: len(machine.trace.events))
    bridge.add_reader(console.fd, console.read)
    bridge.before_kick.append(console.read)  # what the kernel printed before it kicked comes first
    ended = "timeout"
    try:
        ok = bridge.run(lambda: console.done or console.eof or proc.poll() is not None, timeout=timeout,
                        extra=console.read)
        if ok:
            ended = "done" if console.done else "exited"
        if console.done:
            grace_ok = bridge.run(lambda: console.eof or proc.poll() is not None or console.powered_down,
                                  timeout=EXIT_GRACE, extra=console.read)
            if console.powered_down:  # the exit path's panic text, briefly, then the known hang is cut short
                bridge.run(lambda: console.eof or proc.poll() is not None, timeout=0.3, extra=console.read)
            if not grace_ok or console.powered_down:
                ended = "killed after power-down" if console.powered_down else "killed after done"
    finally:
        _kill_group(proc)
        console.read()
        console.close()
        bridge.remove_reader(console.fd)
        with contextlib.suppress(OSError):
            proc.stdout.close()
        bridge.close()
        _resume_gc(paused_gc)
    wall = time.monotonic() - t0
    notes: list[str] = []
    if any(NOHOST_MARKER in ln for ln in console.lines):
        notes.append("the guest could not mount the run directory (hostfs)")
    warnings = [ln for ln in console.lines if any(p in ln for p in WARNING_PATTERNS)]
    findings: list[dict[str, object]] = []
    for s in bridge.slots:
        findings += [{"slot": s.index, **f.to_dict()} for f in s.monitor.record.findings]
    return RunResult(name=name, mode=mode, seed=seed, ended=ended, guest_rc=console.done_rc,
                     console=console.lines, console_pos=console.positions, wire=list(bridge.wire),
                     trace=list(machine.trace.events),
                     driver_violations={s.fn.name: list(s.watched.violations) for s in bridge.slots},
                     carrier_findings=findings, stats=bridge.stats, wall_seconds=wall, boot_seconds=console.init_at,
                     virtual_ns=machine.now, functions=functions, machine=machine, directory=directory,
                     warnings=warnings, notes=notes)


__all__ = ["EXIT_GRACE", "HOST_DIR", "UMID", "Plug", "RunResult", "kernel_command", "run"]

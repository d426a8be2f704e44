"""One QEMU process (:class:`QemuVm`): its command line, serial console, QMP connection, trace log, clean stop.

Contract: every QEMU runs in its own process group with its own QMP socket and log files (:class:`BootFiles`),
so two VMs never collide; :meth:`QemuVm.stop` always leaves no process behind (QMP ``quit``, then SIGKILL to
the group) and is safe to call twice. Errors are one-line :class:`~pyvirtio.vm.errors.VmError` messages that
name the log files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyvirtio.machine import MachineType
from pyvirtio.vm.disk import SWAP_DEV
from pyvirtio.vm.errors import GuestTimeout, VmError
from pyvirtio.vm.initramfs import INIT_INSMOD_FAILED, INIT_READY, INIT_RESUME_FAILED, RESUME_ARG
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qmp import Qmp
from pyvirtio.vm.serial import SerialConsole, open_log, pump

#: The machine types the real VM runs: the model's (:class:`pyvirtio.machine.MachineType`), by value.
MACHINE_TYPES = tuple(m.value for m in MachineType)
#: Per machine type: the property that keeps S3 enabled in the ACPI tables.
S3_GLOBALS = {MachineType.PC: "PIIX4_PM.disable_s3=0", MachineType.Q35: "ICH9-LPC.disable_s3=0"}
#: QOM ids the harness gives its devices, by report name.
DEVICE_IDS = {"gpu": "gpu0", "blk": "blk0", "rng": "rng0", "input": "kbd0"}
TRACE_EVENTS = ("virtio_set_status", "virtio_gpu_cmd_*", "virtio_blk_req_complete", "virtio_rng_pushed",
                "system_wakeup_request", "guest_cpu_reset", "qmp_enter_x_query_virtio")
#: Trace events on a stack with pcie-root-ports (QEMU 10): no ``guest_cpu_reset`` there; ``resettable_phase_hold_exec``
#: names each device's pointer with its type, ``pci_pm_transition`` shows D-state changes.
TRACE_EVENTS_PCIE = ("virtio_set_status", "virtio_gpu_cmd_*", "virtio_blk_req_complete", "virtio_rng_pushed",
                     "system_wakeup_request", "cpu_reset", "qmp_enter_x_query_virtio", "resettable_phase_hold_exec",
                     "pci_pm_transition", "pci_update_mappings_del", "pci_update_mappings_add")
#: The pcie-root-port the gpu sits behind on a stack with ports (bus 1 in the guest).
GPU_PORT = "rp0"
#: The pcie-root-port virtio-rng sits behind when asked to (``rng_port``; bus 2 in the guest).
RNG_PORT = "rp1"
MEMORY_MB = 512


class InsmodError(VmError):
    """``/init`` could not load a kernel module (:attr:`module`); the guest's shell is up anyway."""

    def __init__(self, message: str, module: str) -> None:
        super().__init__(message)
        self.module = module


@dataclass(frozen=True)
class BootFiles:
    """Per-boot paths inside a run: logs in ``logs``, sockets in ``scratch`` (short path)."""

    serial_log: Path
    trace_log: Path
    stderr_log: Path
    qmp_socket: Path

    @classmethod
    def for_boot(cls, logs: Path, scratch: Path, boot: int) -> BootFiles:
        """The files of boot number ``boot`` (1, 2, ... within one cell)."""
        return cls(logs / f"serial-{boot}.log", logs / f"trace-{boot}.log", logs / f"qemu-{boot}.stderr",
                   scratch / f"qmp-{boot}.sock")


def gpu_device(assets: GuestAssets, mt: MachineType, nsr: bool) -> list[str]:
    """The gpu's ``-device`` arguments: on pcie.0 (first stack), or behind a pcie-root-port (q35 only) with
    ``x-pcie-pm-no-soft-reset`` when ``nsr`` (stacks with ports). ``nsr`` elsewhere is a ``ValueError``."""
    fw, fh = assets.frame_size
    gpu = f"virtio-gpu-pci,id={DEVICE_IDS['gpu']},xres={fw},yres={fh}"
    if not assets.stack_info.pcie_ports:
        if nsr:
            raise ValueError(f"stack {assets.stack} has no x-pcie-pm-no-soft-reset (QEMU >= 9.1 needed)")
        return ["-device", gpu]
    if mt is not MachineType.Q35:
        raise ValueError(f"stack {assets.stack} runs q35 only (No_Soft_Reset needs a PCIe root port)")
    return ["-device", f"pcie-root-port,id={GPU_PORT},bus=pcie.0,chassis=1,addr=0x2",
            "-device", f"{gpu},bus={GPU_PORT}" + (",x-pcie-pm-no-soft-reset=true" if nsr else "")]


def rng_device(assets: GuestAssets, mt: MachineType, nsr: bool, rng_port: bool) -> list[str]:
    """virtio-rng's ``-device`` arguments: on the root bus, or (``rng_port``, stacks with ports, q35 only) behind
    its own pcie-root-port, with ``x-pcie-pm-no-soft-reset`` when ``nsr`` as for the gpu. ``rng_port`` where the
    stack or machine has no ports is a ``ValueError``."""
    rng = f"virtio-rng-pci,id={DEVICE_IDS['rng']},rng=rngsrc0"
    if not rng_port:
        return ["-device", rng]
    if not assets.stack_info.pcie_ports or mt is not MachineType.Q35:
        raise ValueError(f"virtio-rng behind a root port needs a stack with pcie-root-ports and q35 "
                         f"(stack {assets.stack}, machine {mt.value})")
    return ["-device", f"pcie-root-port,id={RNG_PORT},bus=pcie.0,chassis=2,addr=0x3",
            "-device", f"{rng},bus={RNG_PORT}" + (",x-pcie-pm-no-soft-reset=true" if nsr else "")]


def qemu_argv(assets: GuestAssets, machine_type: MachineType | str, disk: Path, files: BootFiles, *,
              resume: bool = False, nsr: bool = False, rng_port: bool = False,
              extra: Sequence[str] = ()) -> list[str]:
    """The QEMU command line: TCG, S3 enabled, the four virtio devices with ids, serial on stdio, QMP, trace.

    ``extra`` arguments go at the end (more devices and objects: a vhost-user device and the shared memory
    backend it needs). A machine type that is not a :class:`MachineType` value is a ``ValueError`` (so is a
    stack/machine/NSR combination the stack cannot run, see :func:`gpu_device`).
    """
    mt = MachineType(machine_type)
    append = "console=ttyS0 quiet panic=-1" + (f" {RESUME_ARG}={SWAP_DEV}" if resume else "")
    argv = [
        str(assets.qemu), *assets.qemu_args, "-machine", f"{mt.value},accel=tcg", "-m", str(MEMORY_MB), "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
        "-global", S3_GLOBALS[mt],
        "-kernel", str(assets.kernel), "-initrd", str(assets.initrd), "-append", append,
        "-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
        "-qmp", f"unix:{files.qmp_socket},server=on,wait=off",
        *gpu_device(assets, mt, nsr),
        "-drive", f"file={disk},if=none,id=disk0,format=raw,cache=writeback",
        "-device", f"virtio-blk-pci,id={DEVICE_IDS['blk']},drive=disk0",
        "-object", "rng-random,id=rngsrc0,filename=/dev/urandom",
        *rng_device(assets, mt, nsr, rng_port),
        "-device", f"virtio-keyboard-pci,id={DEVICE_IDS['input']}",
        "-D", str(files.trace_log), "-msg", "timestamp=on",  # trace lines get QEMU 7.2's pid@sec.usec: on 10.0
    ]
    for ev in TRACE_EVENTS_PCIE if assets.stack_info.pcie_ports else TRACE_EVENTS:
        argv += ["-trace", ev]
    return argv + list(extra)


class QemuVm:
    """A QEMU process (its own process group) with serial console and QMP; :meth:`start` runs it."""

    def __init__(self, assets: GuestAssets, machine_type: MachineType | str, disk: Path, files: BootFiles, *,
                 resume: bool = False, nsr: bool = False, rng_port: bool = False,
                 extra: Sequence[str] = ()) -> None:
        self.assets = assets
        self.machine_type = MachineType(machine_type)
        self.files = files
        self.argv = qemu_argv(assets, machine_type, disk, files, resume=resume, nsr=nsr, rng_port=rng_port,
                              extra=extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self._serial_log: BinaryIO | None = None
        self.console = SerialConsole(self._write, describe=self._where)
        self.started_at = 0.0

    def _where(self) -> str:
        f = self.files
        return f" (logs: {f.serial_log}, {f.stderr_log}, {f.trace_log})"

    def _write(self, data: bytes) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise VmError("QEMU is not running")
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise VmError(f"QEMU exited; cannot type on its serial console{self._where()}") from None

    def alive(self) -> bool:
        """QEMU was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, qmp_timeout: float = 30.0) -> None:
        """Start QEMU and connect QMP (stale sockets are removed first)."""
        with contextlib.suppress(FileNotFoundError):
            self.files.qmp_socket.unlink()
        self.files.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self._serial_log = open_log(self.files.serial_log)
        self.console.set_log(self._serial_log)
        (self.files.serial_log.parent / (self.files.serial_log.stem + ".cmdline")).write_text(
            " ".join(self.argv) + "\n")
        with open(self.files.stderr_log, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         start_new_session=True, env=self.assets.env())
        self.started_at = time.monotonic()
        assert self.proc.stdout is not None
        pump(self.proc.stdout, self.console)  # type: ignore[arg-type]
        self.qmp = Qmp(f"pyvirtio-vm-{os.getpid()}")
        try:
            self.qmp.connect(self.files.qmp_socket, qmp_timeout, self.alive)
        except VmError as e:
            raise VmError(f"{e}; QEMU said: {self.stderr_tail()}{self._where()}") from None

    def stderr_tail(self) -> str:
        """QEMU's last three non-empty stderr lines, joined with `` | `` (empty if there is no log)."""
        try:
            lines = [ln for ln in self.files.stderr_log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def wait_ready(self, timeout: float) -> float:
        """Wait for ``/init``'s ready line; returns seconds since start. Fails if a module did not load."""
        self.console.expect(INIT_READY.encode(), timeout, what="the guest's shell (boot)")
        text = self.console.text(0)
        if INIT_INSMOD_FAILED in text:
            bad = [ln for ln in text.splitlines() if INIT_INSMOD_FAILED in ln]
            module = bad[0].split(INIT_INSMOD_FAILED, 1)[1].strip()
            raise InsmodError(f"guest could not load a module: {bad[0].strip()}{self._where()}", module)
        return time.monotonic() - self.started_at

    def booted_afresh(self) -> bool:
        """Whether ``/init`` reached its own shell (after an S4 resume attempt: the resume failed)."""
        text = self.console.text(0)
        return INIT_READY in text or INIT_RESUME_FAILED in text

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself; returns its exit status."""
        if self.proc is None:
            return 0
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise GuestTimeout(f"QEMU did not exit within {timeout:.0f} s; last output: "
                               f"{self.console.tail()}{self._where()}") from None

    def stop(self, graceful: bool = True) -> None:
        """Quit QEMU (QMP ``quit`` if asked, then SIGKILL to the process group); close everything."""
        if self.proc is not None and self.proc.poll() is None and graceful and self.qmp is not None:
            self.qmp.quit(timeout=5.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10.0)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self._serial_log is not None:
            self.console.set_log(None)
            self._serial_log.close()
            self._serial_log = None
        with contextlib.suppress(FileNotFoundError):
            self.files.qmp_socket.unlink()

"""A real VM with a device served by an external vhost-user back-end process (``pyvirtio serve``).

Contract:

* :class:`BackendProcess` runs a back-end command (:func:`serve_command` builds ``pyvirtio serve``'s) in its
  own process group, waits for its socket, and always leaves no process behind (:meth:`BackendProcess.stop`);
* :class:`ServedVm` boots the harness's QEMU (:class:`~pyvirtio.vm.qemu.QemuVm`) with guest RAM on a shared
  memfd (vhost-user needs it) and ``vhost-user-rng-pci`` at PCI slot :data:`SERVED_SLOT` connected to the socket,
  unbinds every other virtio-rng in the guest so ``/dev/hwrng`` is the served one (:meth:`ServedVm.use_served_rng`,
  and :meth:`ServedVm.use_builtin_rng` for a comparison), reads it (bytes over the serial console, or a
  checksum for large reads), and takes the guest through S3 and s2idle;
* :class:`ServedGpuVm` does the same with pyvirtio's gpu in place of QEMU's built-in one (q35, behind the stack's
  root port), optionally booting the variant initramfs carrying one of our virtio-gpu modules (``gpu_module``,
  e.g. ``s4-replay``), and hibernates it (:meth:`ServedGpuVm.enable_s4`, :meth:`ServedGpuVm.s4`): swap on the blk
  disk, ``echo disk`` with ``/sys/power/disk`` = shutdown, QEMU exits, a second QEMU boots with ``resume=`` and
  connects to the same back-end (which keeps listening across the restart); a hibernation the guest aborts
  leaves the first QEMU running and says why;
* the module imports nothing of the back-end: the two meet only through the socket and the report file.

Errors are one-line :class:`~pyvirtio.vm.errors.VmError` s naming the log directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyvirtio
from pyvirtio.host.rng import EntropySource
from pyvirtio.machine import MachineType
from pyvirtio.vm import image
from pyvirtio.vm.disk import SWAP_DEV, create_disk
from pyvirtio.vm.errors import GuestTimeout, VmError
from pyvirtio.vm.probes import GuestShell
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qemu import DEVICE_IDS, MEMORY_MB, BootFiles, QemuVm

#: PCI slot of the served device on the root bus (after the harness's own devices in every machine type).
SERVED_SLOT = 0x10
#: The guest's sysfs directory of the served device's PCI function.
SERVED_PCI = f"0000:00:{SERVED_SLOT:02x}.0"
_RNG_DRIVER = "/sys/bus/virtio/drivers/virtio_rng"
_HWRNG = "/sys/class/misc/hw_random"
_RNG_PARAMS = "/sys/module/rng_core/parameters"


def serve_command(device: str, socket_path: Path, *, seed: int = 0, report: Path | None = None,
                  faults: Sequence[str] = (), once: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """``pyvirtio serve <device> ...`` as an argv for this Python and this checkout (``extra``: the device's own
    options, e.g. ``--dump-scanout PATH`` for the gpu)."""
    argv = [sys.executable, "-c", "from pyvirtio.cli import run; run()", "serve", device, "--socket",
            str(socket_path), "--seed", str(seed)]
    if once:
        argv.append("--once")
    if report is not None:
        argv += ["--report", str(report)]
    for f in faults:
        argv += ["--fault", f]
    return argv + list(extra)


def vhost_user_args(socket_path: Path, device: str = "vhost-user-rng-pci", dev_id: str = "vurng0",
                    memory_mb: int = MEMORY_MB) -> list[str]:
    """QEMU arguments: guest RAM on a shared memfd, the socket chardev, the vhost-user device at its slot."""
    return ["-object", f"memory-backend-memfd,id=vumem,size={memory_mb}M,share=on", "-numa", "node,memdev=vumem",
            "-chardev", f"socket,id=vuchr0,path={socket_path}",
            "-device", f"{device},chardev=vuchr0,id={dev_id},addr={SERVED_SLOT:#x}"]


class BackendProcess:
    """A vhost-user back-end process: started, its socket awaited, stopped for sure."""

    def __init__(self, argv: list[str], socket_path: Path, logs: Path) -> None:
        self.argv = argv
        self.socket_path = socket_path
        self.stdout_log = logs / "backend.stdout"
        self.stderr_log = logs / "backend.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until its socket exists (it is created atomically)."""
        root = str(Path(pyvirtio.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with open(self.stdout_log, "wb") as out, open(self.stderr_log, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                raise VmError(f"the back-end exited ({self.proc.returncode}) before creating its socket: "
                              f"{self.stderr()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"the back-end did not create {self.socket_path} within {timeout:.0f} s")
            time.sleep(0.02)

    def stderr(self) -> str:
        """The back-end's last stderr lines."""
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.stderr_log.read_text(errors="replace").splitlines() if ln.strip()]
            return " | ".join(lines[-3:])
        return ""

    def stdout(self) -> str:
        """Everything the back-end printed on stdout (the summaries)."""
        with contextlib.suppress(OSError):
            return self.stdout_log.read_text(errors="replace")
        return ""

    def wait(self, timeout: float) -> int | None:
        """Wait for it to exit by itself; its exit status, or None if it is still running."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def request_dump(self, dump: Path, timeout: float = 30.0) -> dict[str, Any]:
        """Ask a ``pyvirtio serve gpu --dump-scanout`` back-end for a dump (SIGUSR1) and wait for it; the JSON
        sidecar (the PNG is at ``dump``)."""
        sidecar = Path(f"{dump}.json")
        before = _file_id(sidecar)
        if self.proc is None or self.proc.poll() is not None:
            raise VmError(f"the back-end is not running: {self.stderr()}")
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            if _file_id(sidecar) != before:  # written atomically: a new file each time
                info: dict[str, Any] = json.loads(sidecar.read_text())
                return info
            if time.monotonic() > deadline:
                raise GuestTimeout(f"the back-end wrote no scanout dump within {timeout:.0f} s: {self.stderr()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL to the group if it lingers; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10.0)
        return self.proc.returncode


@dataclass(frozen=True)
class Sleep:
    """One sleep/wake cycle as the guest saw it."""

    state: str
    ok: bool
    detail: str


class ServedVm:
    """The harness's VM plus a vhost-user device on a shared-memory guest (see the module contract)."""

    def __init__(self, assets: GuestAssets, machine_type: MachineType | str, socket_path: Path, logs: Path, *,
                 device: str = "vhost-user-rng-pci", command_timeout: float = 60.0) -> None:
        self.assets = assets
        self.machine_type = MachineType(machine_type)
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.disk = logs / "disk.img"
        files = BootFiles.for_boot(logs, socket_path.parent, 1)
        self.vm = QemuVm(assets, self.machine_type, self.disk, files, extra=vhost_user_args(socket_path, device))
        self.timeout = command_timeout
        self.guest: GuestShell | None = None
        self.boot_s = 0.0

    @property
    def g(self) -> GuestShell:
        """The guest's shell (after :meth:`start`)."""
        if self.guest is None:
            raise VmError("the served VM is not started")
        return self.guest

    def start(self, boot_timeout: float = 120.0) -> None:
        """Boot to the guest's shell; enable the serial wake-up source for s2idle."""
        create_disk(self.disk)
        self.vm.start()
        self.boot_s = self.vm.wait_ready(boot_timeout)
        self.guest = GuestShell(self.vm.console, self.assets.blk_pattern_md5, self.timeout)
        self.g.sh("echo enabled > /sys/class/tty/ttyS0/power/wakeup")

    def stop(self) -> None:
        """Quit QEMU (the back-end sees the disconnect)."""
        self.vm.stop()

    # -- the rng ----------------------------------------------------------------------------------------------

    def _rng_devices(self) -> list[tuple[str, bool]]:
        out = self.g.sh("for d in /sys/bus/virtio/devices/virtio*; do [ $(cat $d/device) = 0x0004 ] && "
                        "echo ${d##*/} $(readlink -f $d); done; true")
        found = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                found.append((parts[0], f"/{SERVED_PCI}/" in parts[1]))
        return found

    def _only(self, served: bool) -> str:
        devs = self._rng_devices()
        if not any(s == served for _, s in devs):
            raise VmError(f"no {'served' if served else 'built-in'} virtio-rng in the guest (found {devs})")
        for name, s in devs:
            bound = f"{_RNG_DRIVER}/{name}"
            if s == served:
                self.g.sh(f"[ -e {bound} ] || echo {name} > {_RNG_DRIVER}/bind")
            else:
                self.g.sh(f"[ ! -e {bound} ] || echo {name} > {_RNG_DRIVER}/unbind")
        # the hwrng kthread would take bytes of the stream for the kernel's pool: quality 0 stops it, also for an
        # rng registered again after a resume (default_quality)
        self.g.sh(f"echo 0 > {_RNG_PARAMS}/default_quality; [ ! -w {_HWRNG}/rng_quality ] || "
                  f"echo 0 > {_HWRNG}/rng_quality")
        current = self.g.sh(f"cat {_HWRNG}/rng_current").strip()
        if not current.startswith("virtio_rng"):
            raise VmError(f"/dev/hwrng is {current!r}, not a virtio-rng")
        return current

    def use_served_rng(self) -> str:
        """Make the served device the only virtio-rng bound (``/dev/hwrng`` reads it); its hwrng name."""
        return self._only(True)

    def use_builtin_rng(self) -> str:
        """Make QEMU's built-in virtio-rng-pci the only one bound; its hwrng name."""
        return self._only(False)

    def read_hwrng(self, n: int, timeout: float | None = None) -> bytes:
        """``n`` bytes read from /dev/hwrng by the guest (dd, 64-byte blocks), carried as hex over serial."""
        blocks = (n + 63) // 64
        out = self.g.sh(f"dd if=/dev/hwrng bs=64 count={blocks} 2>/dev/null | od -An -tx1 -v | tr -d ' \\n'",
                        timeout or self.timeout)
        data = bytes.fromhex("".join(out.split()))
        return data[:n]

    def dd_hwrng(self, total: int, bs: int = 4096, timeout: float | None = None) -> tuple[float, str, bytes]:
        """``dd`` ``total`` bytes from /dev/hwrng into the guest's RAM: (seconds as the host saw them, md5 of the
        bytes, their first 64 bytes)."""
        count = total // bs
        t0 = time.monotonic()
        self.g.sh(f"dd if=/dev/hwrng of=/tmp/hwrng.bin bs={bs} count={count} 2>/dev/null", timeout or self.timeout)
        secs = time.monotonic() - t0
        out = self.g.sh("md5sum /tmp/hwrng.bin; head -c 64 /tmp/hwrng.bin | od -An -tx1 -v | tr -d ' \\n'; echo; "
                        "wc -c < /tmp/hwrng.bin; rm /tmp/hwrng.bin")
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if len(lines) < 3 or not lines[2].isdigit() or int(lines[2]) != count * bs:
            raise VmError(f"dd of {total} bytes from /dev/hwrng read {lines[2:3]} bytes")
        return secs, lines[0].split()[0], bytes.fromhex(lines[1])

    def round_trip(self) -> float:
        """Seconds one empty guest command takes (the serial console's own cost)."""
        t0 = time.monotonic()
        self.g.sh("true")
        return time.monotonic() - t0

    # -- sleep ------------------------------------------------------------------------------------------------

    def s3(self, timeout: float = 60.0) -> Sleep:
        """``echo mem``, wait for QMP SUSPEND, ``system_wakeup``, wait for the shell."""
        qmp = self.vm.qmp
        assert qmp is not None
        n = qmp.event_count()
        pending = self.vm.console.start("echo mem > /sys/power/state")
        try:
            qmp.wait_event("SUSPEND", timeout, n, alive=self.vm.alive)
        except GuestTimeout:
            res = self.vm.console.wait(pending, 1.0)
            return Sleep("S3", False, f"no QMP SUSPEND; 'echo mem' returned {res.rc}")
        time.sleep(0.2)
        qmp.execute("system_wakeup")
        res = self.vm.console.wait(pending, timeout)
        return Sleep("S3", res.rc == 0, f"suspended and woken; 'echo mem' returned {res.rc}")

    def s2idle(self, timeout: float = 60.0, settle: float = 1.5) -> Sleep:
        """``echo freeze``, let the guest reach s2idle, wake it with serial newlines; checked with suspend_stats."""
        before = self.g.sh("cat /sys/power/suspend_stats/success").strip()
        pending = self.vm.console.start("echo freeze > /sys/power/state")
        time.sleep(settle)
        deadline = time.monotonic() + timeout
        while True:
            self.vm.console.send("\n")
            try:
                res = self.vm.console.wait(pending, 1.0)
                break
            except GuestTimeout:
                if time.monotonic() > deadline:
                    raise
        after = self.g.sh("cat /sys/power/suspend_stats/success").strip()
        ok = res.rc == 0 and after != before
        return Sleep("s2idle", ok, f"'echo freeze' returned {res.rc}; suspend_stats success {before} -> {after}")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def served_gpu_argv(argv: Sequence[str], socket_path: Path, memory_mb: int = MEMORY_MB) -> list[str]:
    """The harness's QEMU command line with its built-in ``virtio-gpu-pci`` replaced by ``vhost-user-gpu-pci``
    on the same bus, with the same id and properties (No_Soft_Reset included), connected to ``socket_path``, and
    guest RAM on a shared memfd. ValueError if the command line has no built-in gpu."""
    out = list(argv)
    idx = [i for i, a in enumerate(out) if a.startswith("virtio-gpu-pci,")]
    if len(idx) != 1 or idx[0] == 0 or out[idx[0] - 1] != "-device":
        raise ValueError("the QEMU command line has no single '-device virtio-gpu-pci,...'")
    out[idx[0]] = "vhost-user-gpu-pci,chardev=vuchr0," + out[idx[0]][len("virtio-gpu-pci,"):]
    return [*out, "-object", f"memory-backend-memfd,id=vumem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=vumem", "-chardev", f"socket,id=vuchr0,path={socket_path}"]


class ServedGpuVm(ServedVm):
    """The harness's q35 VM with pyvirtio's gpu served in place of QEMU's built-in one: ``vhost-user-gpu-pci``
    behind the stack's pcie-root-port (with ``x-pcie-pm-no-soft-reset`` when ``nsr``), the fbcon console unbound
    so only the test draws, ``/dev/fb0`` checked to be the served gpu's. ``builtin`` keeps QEMU's own
    ``virtio-gpu-pci`` instead (the benchmark's baseline), with the same guest and commands; ``vnc``: a VNC
    server on that UNIX socket too; ``gpu_module``: boot the initramfs carrying that virtio-gpu module of ours
    (:meth:`~pyvirtio.vm.provisioning.GuestAssets.initrd_for`) instead of the stock driver."""

    def __init__(self, assets: GuestAssets, socket_path: Path, logs: Path, *, nsr: bool = False,
                 builtin: bool = False, vnc: Path | None = None, command_timeout: float = 60.0,
                 gpu_module: str | None = None) -> None:
        if not assets.stack_info.pcie_ports:
            raise ValueError(f"stack {assets.stack} has no vhost-user-gpu under TCG (QEMU 10 needed)")
        if gpu_module is not None:
            assets = replace(assets, initrd=assets.initrd_for(gpu_module))
        self.assets = assets
        self.gpu_module = gpu_module
        self.machine_type = MachineType.Q35
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.disk = logs / "disk.img"
        self.nsr = nsr
        self.socket_path = socket_path
        self.vnc = vnc
        self.builtin = builtin
        self.scratch = socket_path.parent
        self.boots = 1
        self.vm = self._machine(resume=False)
        self.timeout = command_timeout
        self.guest: GuestShell | None = None
        self.boot_s = 0.0

    def _machine(self, *, resume: bool) -> QemuVm:
        """QEMU for boot number :attr:`boots` (the second one resumes a hibernated guest)."""
        files = BootFiles.for_boot(self.logs, self.scratch, self.boots)
        vm = QemuVm(self.assets, self.machine_type, self.disk, files, nsr=self.nsr, resume=resume)
        if not self.builtin:
            vm.argv = served_gpu_argv(vm.argv, self.socket_path)
        if self.vnc is not None:  # QEMU's VNC server shows the cursor it holds (screendump does not)
            vm.argv += ["-vnc", f"unix:{self.vnc}"]
        return vm

    def start(self, boot_timeout: float = 120.0) -> None:
        """Boot to the guest's shell; unbind fbcon; check /dev/fb0 is a virtio-gpu of the expected size."""
        super().start(boot_timeout)
        self.g.setup()
        driver = self.g.sh("basename $(readlink -f /sys/class/graphics/fb0/device/driver) 2>/dev/null; "
                           "cat /sys/class/graphics/fb0/name; true").split()
        fw, fh = self.assets.frame_size
        geom = self.g.fb_geometry()
        if "virtio_gpu" not in " ".join(driver) and "virtio_gpudrmfb" not in " ".join(driver):
            raise VmError(f"/dev/fb0 is not a virtio-gpu framebuffer ({driver}) (logs in {self.logs})")
        if not geom.startswith(f"{fw},{fh}"):
            raise VmError(f"/dev/fb0 is {geom}, expected {fw},{fh} (logs in {self.logs})")

    def enable_s4(self) -> None:
        """Make ``echo disk`` possible: swap on the blk disk's swap partition, hibernation powers off."""
        self.g.sh(f"mkswap /dev/{SWAP_DEV} >/dev/null && swapon /dev/{SWAP_DEV} && echo shutdown > /sys/power/disk")

    def s4(self, suspend_timeout: float = 180.0, resume_timeout: float = 180.0) -> Sleep:
        """Hibernate: ``echo disk``; if QEMU exits (the image is on swap), boot a second QEMU with ``resume=``
        (same disk, same back-end socket) and wait for the restored kernel's shell to finish the command. If the
        command returns instead (the guest aborted the hibernation), QEMU is still running and the Sleep says
        what ``echo disk`` printed and returned. Errors (no exit, no resume, a fresh boot) are VmErrors."""
        old = self.vm
        pending = old.console.start("echo disk > /sys/power/state 2>&1")
        deadline = time.monotonic() + suspend_timeout
        while old.alive() and not old.console.eof:
            try:
                res = old.console.wait(pending, 0.1)
            except GuestTimeout:
                if time.monotonic() > deadline:
                    raise GuestTimeout(f"S4: QEMU still running {suspend_timeout:.0f} s after 'echo disk' "
                                       f"(logs in {self.logs})") from None
                continue
            except VmError:
                if old.console.eof:
                    break
                raise
            said = " | ".join(ln.strip() for ln in res.output.splitlines() if ln.strip())
            return Sleep("S4", False, f"'echo disk' returned {res.rc} without powering off: {said}")
        old.wait_exit(suspend_timeout)
        old.stop(graceful=False)
        self.boots += 1
        self.vm = new = self._machine(resume=True)
        new.start()
        deadline = time.monotonic() + resume_timeout
        while True:
            with contextlib.suppress(GuestTimeout):
                res = new.console.wait(pending, 0.2, start=0)
                break
            if new.booted_afresh():
                raise VmError(f"S4: the second boot did not resume the hibernated kernel (logs in {self.logs})")
            if not new.alive():
                raise VmError(f"S4: QEMU exited during resume: {new.stderr_tail()} (logs in {self.logs})")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"S4: no resume within {resume_timeout:.0f} s (logs in {self.logs})")
        self.g.console = new.console
        return Sleep("S4", res.rc == 0, f"hibernated, QEMU exited, resumed by boot {self.boots}; "
                                        f"'echo disk' returned {res.rc}")

    def draw(self, frame: str) -> None:
        """Write the known frame ``a`` or ``b`` into /dev/fb0."""
        self.g.draw(frame)

    def screendump(self, name: str = "screen") -> image.RGB:
        """QMP ``screendump`` of the gpu's console, as (H, W, 3) RGB."""
        qmp = self.vm.qmp
        assert qmp is not None
        ppm = self.logs / f"{name}.ppm"
        qmp.execute("screendump", {"filename": str(ppm), "device": DEVICE_IDS["gpu"]})
        rgb = image.read_ppm(ppm)
        ppm.unlink()
        return rgb

    def wait_screen(self, want: image.RGB, timeout: float, name: str = "screen") -> tuple[bool, image.RGB]:
        """Poll ``screendump`` until it equals ``want`` or ``timeout`` s pass: (equal, last screen)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.screendump(name)
            if image.same_image(got, want) or time.monotonic() >= deadline:
                return image.same_image(got, want), got
            time.sleep(0.1)

    def edid(self) -> bytes:
        """The EDID the guest's DRM connector read (sysfs), as bytes (empty: none)."""
        out = self.g.sh("for e in /sys/class/drm/card*-Virtual-1/edid; do od -An -tx1 -v $e; break; done; true")
        return bytes.fromhex("".join(out.split()))

    def put_file(self, path: str, data: bytes, mode: str = "755", chunk: int = 96) -> None:
        """Create ``path`` in the guest with ``data``, typed over the serial console as ``printf`` arguments
        (printable bytes as they are, the rest as octal escapes; short lines): for small files only."""
        def esc(b: int) -> str:
            return chr(b) if 0x20 <= b < 0x7F and chr(b) not in "'\\%" else f"\\{b:03o}"

        self.g.sh(f": > {path}")
        for i in range(0, len(data), chunk):
            self.g.sh(f"printf '{''.join(esc(b) for b in data[i:i + chunk])}' >> {path}")
        self.g.sh(f"chmod {mode} {path}")
        size = self.g.sh(f"wc -c < {path}").strip()
        if size != str(len(data)):
            raise VmError(f"{path}: the guest has {size} bytes, not {len(data)}")

    def fb_loop(self, frames: int, timeout: float = 600.0) -> float:
        """Write ``frames`` whole frames into /dev/fb0 (alternating ``a`` and ``b``, unpacked in guest RAM
        first, one ``dd`` per frame); the seconds the loop took as the host saw it (the shell's round trip
        subtracted)."""
        self.g.sh("zcat /data/frame-a.gz > /tmp/fa; zcat /data/frame-b.gz > /tmp/fb")
        rt = self.round_trip()
        t0 = time.monotonic()
        self.g.sh(f"i=0; while [ $i -lt {frames} ]; do dd if=/tmp/f$([ $((i % 2)) = 0 ] && echo a || echo b) "
                  f"of=/dev/fb0 bs=4096000 2>/dev/null; i=$((i + 1)); done", timeout)
        return max(1e-6, time.monotonic() - t0 - rt)


def entropy_stream(seed: int, n: int) -> bytes:
    """The first ``n`` bytes the served rng model produces with ``seed`` (read in pieces: fast for megabytes)."""
    src = EntropySource(seed)
    return b"".join(src.read(min(4096, n - i)) for i in range(0, n, 4096))


def find_in_stream(stream: bytes, data: bytes) -> int:
    """Offset of ``data`` in ``stream``, or -1 (the guest's bytes must be a slice of the back-end's stream)."""
    return stream.find(data) if data else -1


@dataclass(frozen=True)
class Alignment:
    """Where a guest read lies in the back-end's stream: its first byte's offset, and the stretches other readers
    took in between (the guest kernel's own hwrng thread reads the same device: ``(stream offset, bytes)``)."""

    start: int
    gaps: tuple[tuple[int, int], ...]

    @property
    def skipped(self) -> int:
        """Bytes of the stream in between that the reader did not get."""
        return sum(n for _, n in self.gaps)


def align(stream: bytes, data: bytes, block: int = 64, window: int = 1 << 16) -> Alignment | None:
    """Match ``data`` to ``stream`` ``block`` bytes at a time, in order (the hwrng core hands out whole 64-byte
    buffers): every block must be the stream's bytes at its offset, each after the previous one and at most
    ``window`` bytes further. None if some block is not there."""
    if not data:
        return None
    first = stream.find(data[:block])
    if first < 0:
        return None
    pos, gaps = first, []
    for i in range(0, len(data), block):
        piece = data[i:i + block]
        if stream[pos:pos + len(piece)] != piece:
            nxt = stream.find(piece, pos, pos + window + len(piece))
            if nxt < 0:
                return None
            gaps.append((pos, nxt - pos))
            pos = nxt
        pos += len(piece)
    return Alignment(first, tuple(gaps))


def md5(data: bytes) -> str:
    """Hex MD5 (what the guest's md5sum prints)."""
    return hashlib.md5(data).hexdigest()


__all__ = ["SERVED_PCI", "SERVED_SLOT", "Alignment", "BackendProcess", "ServedGpuVm", "ServedVm", "Sleep", "align",
           "entropy_stream", "find_in_stream", "md5", "serve_command", "served_gpu_argv", "vhost_user_args"]

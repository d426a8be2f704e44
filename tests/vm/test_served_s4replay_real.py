"""Our virtio-gpu S4-replay module (guest/linux) driving pyvirtio's gpu served over vhost-user: QEMU 10.0's
``vhost-user-gpu-pci`` (q35, behind the stack's root port) connected to ``pyvirtio serve gpu``, Linux 6.12 booted
with the initramfs carrying our module. Slow; never skipped: provisioning (with the module build) is part of the
test. Two VMs, each run once for the whole module (side by side).

What they pin down:

* real hibernation with the served gpu: ``echo disk`` (swap on the blk disk, ``/sys/power/disk`` = shutdown),
  QEMU exits, a second QEMU resumes the image and connects to the same back-end, which kept listening (one
  connection per QEMU; the first one's end reset the model). On the second connection the restored kernel's
  ``.restore`` re-creates its objects on pyvirtio's device — RESOURCE_CREATE_2D + RESOURCE_ATTACH_BACKING for
  each, all answered OK — before the first display command (SET_SCANOUT), as many as the guest's dmesg says
  (``s4-replay: restore: re-created N objects``); the screen after restore equals the one before hibernation
  and pyvirtio's own ``scanout_image``; a frame drawn after resume reaches it; the conformance monitor reports
  no violation and no protocol error on either connection;
* the time-out path: ``--fault hang-on-sigusr2`` and SIGUSR2 just before ``echo disk`` wedge the back-end, so
  the commands the freeze queues (the modeset's suspend) never complete: the freeze's drain gives up after
  ``freeze_timeout_ms`` (2000 ms), the guest logs ``s4-replay: freeze aborted: ... (-110)``, the PM core aborts
  the hibernation (``virtio_pci_freeze returns -110``) and ``echo disk`` fails (exit 1), QEMU keeps running,
  the shell answers and the blk disk works; the report shows the fault firing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyvirtio.errors import PyvirtioError
from pyvirtio.vm import image
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.served import BackendProcess, ServedGpuVm, serve_command
from pyvirtio.vm.stacks import QEMU10_LINUX612

pytestmark = pytest.mark.realvm

STACK = QEMU10_LINUX612.name
MODULE = "s4-replay"
PROBED = "s4-replay: freeze/restore with object replay after hibernation"
RECREATED = re.compile(r"s4-replay: restore: re-created (\d+) objects \((\d+) 2D, (\d+) blob\) before the modeset")
ABORTED = "s4-replay: freeze aborted: virtqueues not drained within 2000 ms (-110)"
#: Commands that show something: the first of them after the restore's ring start must come after the objects.
DISPLAY_COMMANDS = {"SET_SCANOUT", "SET_SCANOUT_BLOB", "TRANSFER_TO_HOST_2D", "RESOURCE_FLUSH"}
#: What may come before it: the objects, and the display queries a restore may make.
RESTORE_COMMANDS = {"RESOURCE_CREATE_2D", "RESOURCE_ATTACH_BACKING", "GET_DISPLAY_INFO", "GET_EDID"}


@dataclass
class S4Run:
    """One VM with the served gpu and our module: what it saw (filled by :func:`run_s4` / :func:`run_timeout`)."""

    name: str
    dir: Path
    seconds: float = 0.0
    boot_s: float = 0.0
    s4_s: float = 0.0  # from 'echo disk' to its end (the second boot's shell, or the error)
    error: str | None = None
    slept: bool | None = None
    s4_detail: str = ""
    shown: dict[str, bool] = field(default_factory=dict)
    equal_model: dict[str, bool] = field(default_factory=dict)
    screens: dict[str, image.RGB] = field(default_factory=dict)
    dmesg: str = ""
    qemu_alive: bool = False
    power: list[str] = field(default_factory=list)
    shell: str = ""
    blk: str = ""
    blk_ok: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    exit_status: int | None = None

    def where(self) -> str:
        return f"logs in {self.dir}"

    def ok(self) -> S4Run:
        assert self.error is None, f"{self.name}: {self.error} ({self.where()})"
        return self

    def conns(self) -> list[dict[str, Any]]:
        conns: list[dict[str, Any]] = self.report.get("connections", [])
        return conns


def _screen(r: S4Run, vm: ServedGpuVm, be: BackendProcess, phase: str, want: image.RGB, dump: Path,
            timeout: float) -> None:
    shown, rgb = vm.wait_screen(want, timeout, phase)
    r.shown[phase], r.screens[phase] = shown, rgb
    image.save_png(rgb, r.dir / f"screen-{phase}.png")
    info = be.request_dump(dump)
    model = image.read_ppm(dump) if info.get("png") else None
    r.equal_model[phase] = model is not None and image.same_image(model, rgb)
    if model is not None:
        shutil.copy(dump, r.dir / f"model-{phase}.png")


def _wait_connections(report: Path, n: int, timeout: float = 15.0) -> None:
    """Wait until the back-end's report has ``n`` ended connections (it is rewritten at each end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(json.loads(report.read_text())["connections"]) >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)


def run_s4(r: S4Run, assets: GuestAssets) -> S4Run:
    """Boot, draw frame A, hibernate, resume on a second QEMU (same back-end), check the screen, draw B."""
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="pvs4-", dir="/tmp"))  # short: AF_UNIX paths
    sock, dump, report = scratch / "vu.sock", r.dir / "model.png", r.dir / "report.json"
    be = BackendProcess(serve_command("gpu", sock, report=report, once=False, extra=["--dump-scanout", str(dump)]),
                        sock, r.dir)
    vm = ServedGpuVm(assets, sock, r.dir / "logs", gpu_module=MODULE)
    try:
        be.start()
        vm.start()
        r.boot_s = vm.boot_s
        vm.enable_s4()
        vm.draw("a")
        _screen(r, vm, be, "before", image.make_frame("a"), dump, 15)
        t1 = time.monotonic()
        res = vm.s4()
        r.s4_s = time.monotonic() - t1
        r.slept, r.s4_detail = res.ok, res.detail
        _screen(r, vm, be, "restored", r.screens["before"], dump, 20)
        r.dmesg = vm.g.sh("dmesg | grep 's4-replay:'; true")
        vm.draw("b")
        _screen(r, vm, be, "after", image.make_frame("b"), dump, 15)
    except (PyvirtioError, OSError, AssertionError, ValueError) as e:
        r.error = f"{type(e).__name__}: {e}"
    finally:
        vm.stop()
        _wait_connections(report, vm.boots)
        r.exit_status = be.stop()
        r.seconds = time.monotonic() - t0
        shutil.rmtree(scratch, ignore_errors=True)
    if report.exists():
        r.report = json.loads(report.read_text())
    return r


def run_timeout(r: S4Run, assets: GuestAssets) -> S4Run:
    """Boot, draw frame A, wedge the back-end (SIGUSR2), ``echo disk``: the freeze must abort; then probe."""
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="pvs4t-", dir="/tmp"))
    sock, report = scratch / "vu.sock", r.dir / "report.json"
    be = BackendProcess(serve_command("gpu", sock, report=report, faults=("hang-on-sigusr2",)), sock, r.dir)
    vm = ServedGpuVm(assets, sock, r.dir / "logs", gpu_module=MODULE)
    try:
        be.start()
        vm.start()
        r.boot_s = vm.boot_s
        vm.enable_s4()
        vm.draw("a")
        r.shown["before"], _ = vm.wait_screen(image.make_frame("a"), 15, "before")
        assert be.proc is not None
        os.kill(be.proc.pid, signal.SIGUSR2)
        time.sleep(0.3)
        t1 = time.monotonic()
        res = vm.s4(suspend_timeout=90)
        r.s4_s = time.monotonic() - t1
        r.slept, r.s4_detail = res.ok, res.detail
        r.qemu_alive = vm.vm.alive()
        r.dmesg = vm.g.sh("dmesg | grep 's4-replay:'; true")
        r.power = vm.g.sh("cat /sys/power/state /sys/power/disk").splitlines()
        r.shell = vm.g.sh("echo alive; cat /proc/uptime")
        probe = vm.g.blk_probe(vm.disk)
        r.blk_ok, r.blk = probe.ok, probe.detail
    except (PyvirtioError, OSError, AssertionError, ValueError) as e:
        r.error = f"{type(e).__name__}: {e}"
    finally:
        vm.stop()
        r.exit_status = be.wait(30)
        be.stop()
        r.seconds = time.monotonic() - t0
        shutil.rmtree(scratch, ignore_errors=True)
    if report.exists():
        r.report = json.loads(report.read_text())
    return r


@pytest.fixture(scope="module")
def assets(stack2_assets: GuestAssets) -> GuestAssets:
    assert MODULE in dict(stack2_assets.gpu_modules), stack2_assets.gpu_modules
    return stack2_assets


@pytest.fixture(scope="module")
def runs(assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, S4Run]:
    base = tmp_path_factory.mktemp("served-s4replay")
    todo = [(S4Run("s4", base / "s4"), run_s4), (S4Run("timeout", base / "timeout"), run_timeout)]
    for r, _ in todo:
        r.dir.mkdir()
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # one TCG QEMU per core
        done = list(pool.map(lambda job: job[1](job[0], assets), todo))
    wall = time.monotonic() - t0
    (base / "timings.json").write_text(json.dumps({"wall_s": round(wall, 1), **{
        r.name: {"seconds": round(r.seconds, 1), "boot_s": round(r.boot_s, 1), "s4_s": round(r.s4_s, 1)}
        for r in done}}))
    print(f"\nserved gpu + s4-replay real VMs: {wall:.1f} s wall; "
          + ", ".join(f"{r.name} {r.seconds:.1f} s (boot {r.boot_s:.1f} s, echo disk {r.s4_s:.1f} s)" for r in done))
    return {r.name: r for r in done}


def _display(conn: dict[str, Any]) -> dict[str, Any]:
    display: dict[str, Any] = conn["frontend"]["gpu_display"]
    return display


def _after_last_start(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control commands after the last start of the control ring (the restored kernel's ``.restore``)."""
    starts = [i for i, c in enumerate(commands) if c["what"] == "queue_started" and c.get("queue") == 0]
    assert starts, commands
    return commands[starts[-1] + 1:]


def _count(cmds: list[dict[str, Any]], what: str) -> int:
    return sum(int(c["n"]) for c in cmds if c["what"] == what)


# -- the tests ------------------------------------------------------------------------------------------------


def test_served_gpu_hibernates_and_the_restore_recreates_the_objects_on_pyvirtios_device(
        runs: dict[str, S4Run]) -> None:
    """Real S4 with our module and pyvirtio's gpu: QEMU exits, a second QEMU resumes on a new connection to the
    same back-end; there the restored kernel re-creates every object (CREATE_2D + ATTACH_BACKING each, answered
    OK) before the first display command, which is SET_SCANOUT; as many as its dmesg says."""
    r = runs["s4"].ok()
    assert r.slept, r.s4_detail
    assert PROBED in r.dmesg, r.dmesg
    m = RECREATED.search(r.dmesg)
    assert m is not None, r.dmesg
    n, n2d, nblob = (int(x) for x in m.groups())
    assert n == n2d >= 1 and nblob == 0, m.group(0)
    conns = r.conns()
    assert len(conns) == 2, f"{len(conns)} connections ({r.where()})"
    tail = _after_last_start(_display(conns[1])["commands"])
    first = next(i for i, c in enumerate(tail) if c["what"] in DISPLAY_COMMANDS)
    before = [c for c in tail[:first] if c["what"] != "queue_started"]
    assert {c["what"] for c in before} <= RESTORE_COMMANDS, before
    assert _count(before, "RESOURCE_CREATE_2D") == _count(before, "RESOURCE_ATTACH_BACKING") == n, before
    assert all(c["resp"] == "OK_NODATA" for c in before if c["what"].startswith("RESOURCE_")), before
    assert tail[first]["what"] == "SET_SCANOUT", tail[first:first + 3]


def test_the_screen_after_restore_is_the_one_before_and_pyvirtios(runs: dict[str, S4Run]) -> None:
    """The screendump after the second boot's restore equals the one before hibernation (frame A) pixel for
    pixel, and pyvirtio's scanout_image; frame B drawn after resume reaches the screen, equal to the model's."""
    r = runs["s4"].ok()
    assert r.shown["before"] and r.equal_model["before"], r.where()
    assert image.same_image(r.screens["before"], image.make_frame("a"))
    assert r.shown["restored"], f"the screen after restore differs from the one before ({r.where()})"
    assert r.equal_model["restored"], f"screendump after restore differs from the model's ({r.where()})"
    assert r.shown["after"] and r.equal_model["after"], r.where()


def test_the_first_connection_saw_the_hibernation_freeze_and_thaw(runs: dict[str, S4Run]) -> None:
    """Connection 1 (the hibernating QEMU): the freeze unreferenced the objects (RESOURCE_UNREF, as many as the
    dmesg says) before the device reset (both rings stopped); the thaw after the snapshot (hibernation flag still
    set) re-created them before its SET_SCANOUT; the power-off (``/sys/power/disk`` = shutdown: no second freeze,
    the device's shutdown) stopped the rings once more and QEMU exited."""
    r = runs["s4"].ok()
    m = re.search(r"s4-replay: freeze: (\d+) objects unreferenced on the host \(hibernation\)", r.dmesg)
    assert m is not None, r.dmesg
    n = int(m.group(1))
    whats = [c["what"] for c in _display(r.conns()[0])["commands"]]
    i = whats.index("RESOURCE_UNREF")
    cmds = _display(r.conns()[0])["commands"]
    assert _count(cmds, "RESOURCE_UNREF") == n >= 1, whats
    assert whats[i + 1:i + 7] == ["queue_stopped", "queue_stopped", "queue_started", "queue_started",
                                  "RESOURCE_CREATE_2D", "RESOURCE_ATTACH_BACKING"], whats[i:]
    assert whats.index("SET_SCANOUT", i) > i + 6 and whats[-2:] == ["queue_stopped", "queue_stopped"], whats[i:]


def test_monitor_reports_no_violation_for_the_restore_sequence(runs: dict[str, S4Run]) -> None:
    """The conformance monitor on both connections of the hibernation (and on the time-out run): no violation,
    no protocol error. The first connection's end reset the model, so the restore's resource ids are new to it."""
    for r in runs.values():
        assert r.report, f"{r.name}: no report ({r.where()})"
        for conn in r.conns():
            assert conn["violations_total"] == 0, (r.name, conn["index"], conn["violations"])
            assert conn["protocol_errors"] == [], (r.name, conn["index"], conn["protocol_errors"])


def test_a_hung_host_aborts_the_freeze_with_etimedout_and_the_guest_stays_usable(runs: dict[str, S4Run]) -> None:
    """--fault hang-on-sigusr2, SIGUSR2, echo disk: the freeze's drain times out after freeze_timeout_ms, the
    hibernation is aborted with -ETIMEDOUT (our dmesg line; the PM core's "virtio_pci_freeze returns -110"; echo
    disk exits 1), QEMU is still
    running, /sys/power still offers disk (shutdown mode), the shell answers, the blk disk writes and reads."""
    r = runs["timeout"].ok()
    assert r.shown["before"], r.where()
    assert r.slept is False, r.s4_detail
    assert "'echo disk' returned 1 without powering off" in r.s4_detail, r.s4_detail
    assert "pci_pm_freeze(): virtio_pci_freeze returns -110" in r.s4_detail, r.s4_detail  # the PM core's word
    assert ABORTED in r.dmesg, r.dmesg
    assert "restore: re-created" not in r.dmesg and "objects unreferenced" not in r.dmesg, r.dmesg
    assert r.s4_s >= 2.0, r.s4_s  # the drain waited its time-out
    assert r.qemu_alive
    assert "disk" in r.power[0].split() and "[shutdown]" in r.power[1], r.power
    assert r.shell.startswith("alive"), r.shell
    assert r.blk_ok, r.blk


def test_the_report_shows_the_hang_fault_firing(runs: dict[str, S4Run]) -> None:
    """The back-end's report: the fault armed, then fired on SIGUSR2; the back-end exited cleanly (--once)."""
    r = runs["timeout"].ok()
    (conn,) = r.conns()
    faults = conn["faults"]
    assert [f["what"] for f in faults] == ["armed", "hang-on-sigusr2"], faults
    assert "SIGUSR2" in faults[1]["text"]
    assert r.exit_status == 0, r.where()

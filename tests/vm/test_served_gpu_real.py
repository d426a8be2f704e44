"""pyvirtio's Gpu served to a real guest: QEMU 10.0's ``vhost-user-gpu-pci`` (q35, behind the stack's
pcie-root-port) connected to ``pyvirtio serve gpu``, driven by the real Linux 6.12 virtio-gpu driver. Slow; never
skipped: provisioning is part of the test. Four VMs, each run once for the whole module (two at a time).

What they pin down:

* Linux binds to pyvirtio's gpu; a frame written to /dev/fb0 reaches QMP ``screendump`` through the display
  socket and equals, pixel for pixel, pyvirtio's own ``scanout_image`` (dumped by the back-end on SIGUSR1);
* a hardware cursor set by a guest DRM client (``drm_cursor.c``, legacy cursor ioctls) is the model's cursor
  (position, hot spot, image) and is what the back-end sent to QEMU (CURSOR_UPDATE); ``screendump`` has no
  cursor, and QEMU refuses a VNC display with vhost-user-gpu under TCG ("requires display DMABUF support"), so
  QEMU's own copy of the cursor cannot be read back;
* the EDID the guest reads is pyvirtio's (not the one QEMU offers on the display socket);
* with No_Soft_Reset, S3 then s2idle: no message crosses either sleep, the control ring runs on, frames drawn
  after each resume reach the screen and equal the model's image;
* without it (S3, s2idle): the black screen ("Display output is not active.") is reproduced with pyvirtio's
  device in the loop, and the model's prediction for the cell (``cli.compare.model_for``, stack qemu10.0-linux6.12,
  profile baseline / no-soft-reset) matches what the served device saw. Compared exactly: (1) the predicted gpu
  status sequence, normalised and projected onto DRIVER_OK (``0f 0b 00 01 03 0b 0f`` -> set, cleared, set), against
  the sequence of DRIVER_OK edges the back-end saw (QEMU sends ``GPU_SET_SOCKET`` exactly when the guest sets
  DRIVER_OK and closes the display socket exactly when it clears it); (2) the predicted ``queues_alive`` against
  whether the control ring the back-end served was still the one started at boot (never stopped) and executed
  commands after the resume;
* ``--fault error=RESOURCE_FLUSH``: every flush is answered ERR_UNSPEC, nothing reaches the screen, the driver
  logs the error and carries on;
* the monitor's report of each run: no violation, no protocol error.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pyvirtio.cli.compare import model_for
from pyvirtio.errors import PyvirtioError
from pyvirtio.fidelity import normalise
from pyvirtio.host.gpu import edid
from pyvirtio.vm import image
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.served import BackendProcess, ServedGpuVm, serve_command
from pyvirtio.vm.stacks import QEMU10_LINUX612

pytestmark = pytest.mark.realvm

STACK = QEMU10_LINUX612.name
DRIVER_OK = 0x04
#: fbcon's character cell (8x16 font): where its text cursor is drawn at the top left of a fresh console
FBCON_CELL = (16, 8)
CURSOR_SRC = Path(__file__).with_name("drm_cursor.c")
CURSOR_POS, CURSOR_HOT = (300, 200), (6, 10)  # as drm_cursor.c sets them
#: The runs: name -> (No_Soft_Reset, sleep states in order, faults).
RUNS: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {
    "nsr": (True, ("S3", "s2idle"), ()),
    "S3": (False, ("S3",), ()),
    "s2idle": (False, ("s2idle",), ()),
    "error-flush": (False, (), ("error=RESOURCE_FLUSH",)),
}


def cursor_argb() -> bytes:
    """The 64x64 a8r8g8b8 image drm_cursor.c draws (little-endian bytes B, G, R, A)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.uint32)
    a = np.where((x < 8) & (y < 8), 0, 0xFF).astype(np.uint32)
    px = (a << 24) | ((x * 4) << 16) | ((y * 4) << 8) | ((x + y) * 2)
    return px.astype("<u4").tobytes()


@dataclass
class GpuRun:
    """One VM with the served gpu: what it saw (filled by :func:`run`)."""

    name: str
    nsr: bool
    sleeps: tuple[str, ...]
    faults: tuple[str, ...]
    dir: Path
    seconds: float = 0.0
    boot_s: float = 0.0
    error: str | None = None
    shown: dict[str, bool] = field(default_factory=dict)  # phase -> the frame drawn reached the screen
    equal_model: dict[str, bool] = field(default_factory=dict)  # phase -> screendump == model scanout_image
    screens: dict[str, image.RGB] = field(default_factory=dict)
    models: dict[str, image.RGB] = field(default_factory=dict)  # phase -> the model's scanout_image then
    slept: dict[str, bool] = field(default_factory=dict)
    guest_edid: bytes = b""
    cursor: dict[str, Any] = field(default_factory=dict)
    dmesg: str = ""
    timeline: dict[str, Any] = field(default_factory=dict)  # the display record at the last dump
    report: dict[str, Any] = field(default_factory=dict)
    exit_status: int | None = None

    @property
    def conn(self) -> dict[str, Any]:
        conns: list[dict[str, Any]] = self.report.get("connections", [])
        assert len(conns) == 1, f"{self.name}: {len(conns)} connections ({self.where()})"
        return conns[0]

    def where(self) -> str:
        return f"logs in {self.dir}"

    def ok(self) -> GpuRun:
        assert self.error is None, f"{self.name}: {self.error} ({self.where()})"
        return self


def _frame_phase(run: GpuRun, vm: ServedGpuVm, be: BackendProcess, phase: str, frame: str, timeout: float,
                 dump: Path) -> None:
    vm.draw(frame)
    shown, rgb = vm.wait_screen(image.make_frame(frame), timeout, phase)
    run.shown[phase] = shown
    run.screens[phase] = rgb
    image.save_png(rgb, run.dir / f"screen-{phase}.png")
    info = be.request_dump(dump)
    run.timeline = info["display"]
    model = image.read_ppm(dump) if info.get("png") else None
    run.equal_model[phase] = model is not None and image.same_image(model, rgb)
    if model is not None:
        run.models[phase] = model
        shutil.copy(dump, run.dir / f"model-{phase}.png")


def _cursor_phase(run: GpuRun, vm: ServedGpuVm, be: BackendProcess, binary: Path, dump: Path) -> None:
    vm.put_file("/tmp/drm_cursor", binary.read_bytes())
    before = vm.screendump("cursor-before")
    vm.g.sh("/tmp/drm_cursor > /tmp/cursor.out 2>&1 & echo $! > /tmp/cursor.pid")
    out = ""
    for _ in range(100):  # it prints one line once the cursor is set (or why not)
        out = vm.g.sh("cat /tmp/cursor.out")
        if out.strip():
            break
        time.sleep(0.2)
    time.sleep(0.3)
    info = be.request_dump(dump)
    shutil.copy(f"{dump}.cursor0.png", run.dir / "model-cursor.png")
    run.cursor = {"model": info["scanouts"][0]["cursor"], "sent": info["display"]["cursor"], "guest": out,
                  "screendump_unchanged": image.same_image(before, vm.screendump("cursor-after"))}
    vm.g.sh("kill $(cat /tmp/cursor.pid); sleep 0.5")  # the program ends; fbdev takes the display back


def run(run: GpuRun, assets: GuestAssets, binary: Path) -> GpuRun:
    """Boot, draw, (cursor, EDID), sleep, draw again; collect the back-end's dumps and report."""
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="pvg-", dir="/tmp"))  # short: AF_UNIX paths; QMP's socket goes here too
    sock = scratch / "vu.sock"
    dump = run.dir / "model.png"
    report = run.dir / "report.json"
    be = BackendProcess(serve_command("gpu", sock, report=report, faults=run.faults,
                                      extra=["--dump-scanout", str(dump)]), sock, run.dir)
    vm = ServedGpuVm(assets, sock, run.dir / "logs", nsr=run.nsr)
    try:
        be.start()
        vm.start()
        run.boot_s = vm.boot_s
        if run.faults:
            _frame_phase(run, vm, be, "boot", "a", 4, dump)
            run.dmesg = vm.g.sh("dmesg | grep -i virtio_gpu | tail -5; dmesg | grep -c 'response 0x1200'; true")
        else:
            _frame_phase(run, vm, be, "boot", "a", 15, dump)
            run.guest_edid = vm.edid()
            if run.nsr:
                _cursor_phase(run, vm, be, binary, dump)
            frames = iter("baba")
            for sleep in run.sleeps:
                res = vm.s3() if sleep == "S3" else vm.s2idle()
                run.slept[sleep] = res.ok
                _frame_phase(run, vm, be, f"after-{sleep}", next(frames), 8 if run.nsr else 4, dump)
    except (PyvirtioError, OSError, AssertionError, ValueError) as e:
        run.error = f"{type(e).__name__}: {e}"
    finally:
        vm.stop()
        run.exit_status = be.wait(30)
        be.stop()
        run.seconds = time.monotonic() - t0
        shutil.rmtree(scratch, ignore_errors=True)
    if report.exists():
        run.report = json.loads(report.read_text())
    return run


@pytest.fixture(scope="module")
def assets(stack2_assets: GuestAssets) -> GuestAssets:
    return stack2_assets


@pytest.fixture(scope="module")
def cursor_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drm-cursor") / "drm_cursor"
    cp = subprocess.run(["gcc", "-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie",
                         "-no-pie", "-s", "-Wl,-n", "-Wl,--build-id=none", "-o", str(out), str(CURSOR_SRC)],
                        capture_output=True, text=True, check=False)
    if cp.returncode != 0:
        pytest.fail(f"cannot build {CURSOR_SRC.name} for the guest: {cp.stderr.strip()[-300:]}", pytrace=False)
    return out


@pytest.fixture(scope="module")
def runs(assets: GuestAssets, cursor_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GpuRun]:
    base = tmp_path_factory.mktemp("served-gpu")
    todo = [GpuRun(name, nsr, sleeps, faults, base / name) for name, (nsr, sleeps, faults) in RUNS.items()]
    for r in todo:
        r.dir.mkdir()
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # one TCG QEMU per core
        done = list(pool.map(lambda r: run(r, assets, cursor_binary), todo))
    wall = time.monotonic() - t0
    (base / "timings.json").write_text(json.dumps({"wall_s": round(wall, 1), **{
        r.name: {"seconds": round(r.seconds, 1), "boot_s": round(r.boot_s, 1)} for r in done}}))
    print(f"\nserved gpu real VMs: {wall:.1f} s wall for {len(done)} VMs "
          + ", ".join(f"{r.name} {r.seconds:.1f} s" for r in done))
    return {r.name: r for r in done}


def _events(r: GpuRun) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = r.timeline.get("events", [])
    return events


def served_driver_ok(r: GpuRun) -> list[int]:
    """The DRIVER_OK edges the back-end saw, as 1 (GPU_SET_SOCKET) and 0 (the front-end closed the display
    socket), up to the last dump (before the VM was stopped)."""
    out: list[int] = []
    for e in _events(r):
        if e["what"] == "driver-ok":
            out.append(1)
        elif e["what"] == "display-closed" and "front-end closed" in e["why"]:
            out.append(0)
    return out


def predicted_driver_ok(seq: list[int]) -> list[int]:
    """The model's status sequence, normalised, projected onto DRIVER_OK, repeats collapsed."""
    bits = [1 if s & DRIVER_OK else 0 for s in normalise(seq)]
    return [b for i, b in enumerate(bits) if i == 0 or b != bits[i - 1]]


def control_ring_alive(r: GpuRun) -> bool:
    """The control ring served at the last dump is the one started at boot (started once, never stopped) and it
    carried commands after the resume (the frame drawn then was flushed: the scanout's flush count grew)."""
    ev = [e for e in _events(r) if e.get("queue") == 0 and e["what"] in ("queue_started", "queue_stopped")]
    once = [e["what"] for e in ev] == ["queue_started"]
    ready = any(q["queue"] == 0 and q["ready"] for q in r.timeline.get("now", {}).get("queues", []))
    return once and ready


# -- the tests ------------------------------------------------------------------------------------------------


def test_linux_drives_pyvirtios_gpu_and_the_screen_is_its_scanout(runs: dict[str, GpuRun]) -> None:
    """virtio 1.4 §5.7: the 6.12 driver binds; frame A written to /dev/fb0 reaches screendump and equals
    pyvirtio's scanout_image pixel for pixel (every run but the fault run)."""
    for name in ("nsr", "S3", "s2idle"):
        r = runs[name].ok()
        assert r.shown["boot"], f"{name}: frame A never reached the screen ({r.where()})"
        assert r.equal_model["boot"], f"{name}: screendump differs from the model's scanout_image ({r.where()})"
        assert image.same_image(r.screens["boot"], image.make_frame("a"))


def test_the_edid_the_guest_reads_is_pyvirtios(runs: dict[str, GpuRun]) -> None:
    """§5.7.6.8 GET_EDID: the guest's connector EDID is pyvirtio's for QEMU's 1280x800 mode, not QEMU's."""
    r = runs["nsr"].ok()
    assert r.guest_edid == edid.generate(1280, 800, serial=0), r.guest_edid.hex()
    qemu_edid = bytes.fromhex(r.conn["frontend"]["gpu_display"]["frontend_edid"]["0"]["hex"])
    assert qemu_edid[:8] == edid.EDID_HEADER and qemu_edid[:128] != r.guest_edid


def test_the_guest_cursor_is_pyvirtios_and_goes_to_qemu(runs: dict[str, GpuRun]) -> None:
    """§5.7.6.10: the cursor a DRM client sets is the model's (position, hot spot, image) and the back-end sent
    exactly that shape to QEMU (CURSOR_UPDATE) and the position (CURSOR_POS); screendump has no cursor."""
    r = runs["nsr"].ok()
    c = r.cursor
    assert "cursor ok" in c["guest"], c["guest"]
    want_md5 = hashlib.md5(cursor_argb()).hexdigest()
    m = c["model"]
    assert m["visible"] and (m["x"], m["y"]) == CURSOR_POS and (m["hot_x"], m["hot_y"]) == CURSOR_HOT, m
    assert m["argb_md5"] == want_md5
    sent = c["sent"]
    assert (sent["x"], sent["y"]) == CURSOR_POS and sent["shape"]["argb_md5"] == want_md5, sent
    assert (sent["shape"]["hot_x"], sent["shape"]["hot_y"]) == CURSOR_HOT
    assert c["screendump_unchanged"]


def test_no_soft_reset_s3_and_s2idle_survive_as_predicted(runs: dict[str, GpuRun]) -> None:
    """PCI PM No_Soft_Reset: across S3 then s2idle no message reaches the back-end, the control ring runs on,
    frames drawn after each resume reach the screen and equal the model's; the model predicts exactly that
    (status 0f only -> DRIVER_OK set once; queues alive)."""
    r = runs["nsr"].ok()
    assert r.slept == {"S3": True, "s2idle": True}, r.slept
    for phase in ("after-S3", "after-s2idle"):
        assert r.shown[phase] and r.equal_model[phase], (phase, r.where())
    for sleep in ("S3", "s2idle"):
        gpu = model_for((STACK, "no-soft-reset", sleep, "q35", False)).devices["gpu"]
        assert predicted_driver_ok(gpu.status_sequence) == served_driver_ok(r) == [1]
        assert gpu.queues_alive is True and control_ring_alive(r)


@pytest.mark.parametrize("sleep", ["S3", "s2idle"])
def test_without_no_soft_reset_the_black_screen_is_reproduced_as_predicted(runs: dict[str, GpuRun],
                                                                           sleep: str) -> None:
    """Without No_Soft_Reset the 6.12 driver (no freeze/restore) loses the gpu: the guest resets it at resume
    (QEMU stops both rings, closes the display socket; pyvirtio's gpu is reset), sets DRIVER_OK again without
    re-creating its queues (a new GPU_SET_SOCKET, no ring start): the screen is QEMU's "Display output is not
    active." and the frame drawn after resume never shows. The model's prediction for the cell matches: status
    ``0f 0b 00 01 03 0b 0f`` (DRIVER_OK set, cleared, set) and queues dead."""
    r = runs[sleep].ok()
    assert r.slept == {sleep: True}, r.slept
    phase = f"after-{sleep}"
    assert not r.shown[phase], f"a frame drawn after {sleep} reached the screen ({r.where()})"
    assert image.describe(r.screens[phase]).placeholder, r.where()
    gpu = model_for((STACK, "baseline", sleep, "q35", False)).devices["gpu"]
    assert predicted_driver_ok(gpu.status_sequence) == served_driver_ok(r) == [1, 0, 1]
    assert gpu.queues_alive is False and not control_ring_alive(r)
    stops = [e for e in _events(r) if e["what"] == "queue_stopped"]
    assert sorted(e["queue"] for e in stops) == [0, 1], stops
    assert r.conn["device_status_sequence"][:5] == ["0x01", "0x03", "0x0b", "0x0f", "0x00"]


def test_error_fault_real_driver(runs: dict[str, GpuRun]) -> None:
    """--fault error=RESOURCE_FLUSH: every flush is answered ERR_UNSPEC and presents nothing. Frame A reaches
    pyvirtio's gpu (TRANSFER_TO_HOST_2D succeeds: its scanout_image, the host copy as it is now, shows it) but the
    display only ever got what SET_SCANOUT showed (fbdev's black buffer, with fbcon's grey text cursor in the first
    8x16 character cell when fbcon drew it before the last SET_SCANOUT's repaint: seen once in CI): a flush is
    what sends pixels over the display socket. Linux logs each error response (rate-limited) and keeps going."""
    r = runs["error-flush"].ok()
    screen = r.screens["boot"]
    lit = np.argwhere(screen.any(axis=2))
    assert not r.shown["boot"] and image.describe(screen).grey_only, r.where()
    assert all(y < FBCON_CELL[0] and x < FBCON_CELL[1] for y, x in lit), (lit[:8].tolist(), r.where())
    assert image.same_image(r.models["boot"], image.make_frame("a")), r.where()
    assert "response 0x1200 (command 0x104)" in r.dmesg, r.dmesg
    conn = r.conn
    assert conn["device_stats"]["injected_errors"] > 0
    assert [f["what"] for f in conn["faults"]] == ["armed", "error"]
    assert all(s["flushes"] == 0 for s in r.timeline["now"]["scanouts"])
    # the only pixels sent: the repaints of SET_SCANOUT (fbdev's black buffer), none for a flush
    assert conn["frontend"]["gpu_display"]["messages"]["UPDATE"] <= conn["device_stats"]["commands"]["SET_SCANOUT"]


def test_monitor_reports_no_violation_of_the_real_driver(runs: dict[str, GpuRun]) -> None:
    """The conformance monitor's report of every run: the real 6.12 virtio-gpu driver committed no violation,
    QEMU no protocol error; the back-end exited cleanly (--once)."""
    for r in runs.values():
        assert r.report, f"{r.name}: no report ({r.where()})"
        conn = r.conn
        assert conn["violations_total"] == 0, (r.name, conn["violations"])
        assert conn["protocol_errors"] == [], (r.name, conn["protocol_errors"])
        assert r.exit_status == 0, (r.name, r.where())


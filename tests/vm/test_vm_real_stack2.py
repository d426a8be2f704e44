"""Real QEMU 10.0 + Debian Linux 6.12 (stack ``qemu10.0-linux6.12``) on q35, the gpu behind a pcie-root-port.
Slow; never skipped: provisioning is part of the test (if it fails, these fail). Every cell runs once (a module
fixture, two at a time) and serves both the assertions here and ``vm compare --real``.

What they pin down: with ``x-pcie-pm-no-soft-reset=true`` the guest reads PMCSR.No_Soft_Reset (PCI PM 1.2
§3.2.4) and Linux 6.12 skips the gpu's freeze/restore across S3 and s2idle: no status write at all, the control
ring and the display survive, a frame drawn after resume reaches the screen. Without it the bug of the first
stack remains (ring gone, placeholder screen). S4 does not take the No_Soft_Reset path: broken either way. With
virtio-rng behind its own port with No_Soft_Reset, s2idle loses the rng (the hwrng fill thread's notification is
sent while the function is in D3hot) and S3 does not; the model predicts both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.report import CellResult, Outcome, ResourceFate
from pyvirtio.vm import image
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.scenario import CellRun
from pyvirtio.vm.stacks import QEMU10_LINUX612
from vm.realcells import run_two_at_a_time, write_report

pytestmark = pytest.mark.realvm

OK, DRIVER, FEAT_OK, ACK = 0x0F, 0x03, 0x0B, 0x01
#: blk/rng: reset by their freeze (collapsed), re-initialised by restore.
REINIT = [OK, 0, ACK, DRIVER, FEAT_OK, OK]
#: gpu/input without NSR: DRIVER_OK dropped with bus mastering, then reset and re-initialised.
REINIT_BME = [OK, FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK]
STACK = QEMU10_LINUX612.name
#: (sleep, gpu No_Soft_Reset, rng behind its own port with it): every cell the tests below look at.
CELLS = [(s, nsr, False) for s in ("S3", "s2idle", "S4") for nsr in (False, True)] + [
    ("s2idle", True, True), ("S3", True, True)]

Runs = dict[tuple[str, bool, bool], CellRun]


@pytest.fixture(scope="module")
def assets(stack2_assets: GuestAssets) -> GuestAssets:
    return stack2_assets


@pytest.fixture(scope="module")
def runs(assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    out = tmp_path_factory.mktemp("stack2")
    runs: Runs = {key: CellRun(assets, key[0], "q35", out_dir=out, nsr=key[1], rng_port=key[2]) for key in CELLS}
    run_two_at_a_time(runs.values())
    return runs


@pytest.fixture(scope="module")
def report(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(runs.values(), tmp_path_factory.mktemp("stack2-report") / "report.json", stack=STACK)


def _ok(run: CellRun) -> CellResult:
    assert run.result.outcome is Outcome.OK, run.result.notes
    return run.result


def _others_fine(cell: CellResult) -> None:
    for name in ("blk", "rng", "input"):
        d = cell.devices[name]
        assert d.queues_alive is True and d.functional_after is True, (name, d.notes)
    assert cell.devices["blk"].status_sequence == REINIT
    assert cell.devices["rng"].status_sequence == REINIT
    assert cell.devices["input"].status_sequence == REINIT_BME


def _nsr_survives(run: CellRun) -> None:
    """The gpu keeps everything: PMCSR.No_Soft_Reset read by the guest, no status write, display, ring."""
    cell = _ok(run)
    assert run.assets.versions()["qemu"].startswith("10.0")
    assert run.gpu_pm["boot"] is not None and run.gpu_pm["boot"][2] & 0x8  # No_Soft_Reset as the guest reads it
    gpu = cell.devices["gpu"]
    assert gpu.status_sequence == [OK], "no status write for the gpu across the sleep"
    assert gpu.queues_alive is True and gpu.functional_after is True
    assert cell.display_restored is True and cell.new_frame_after_resume is True
    assert cell.resources is ResourceFate.KEPT
    cyc = run.cycle_data[0]
    assert cyc.after["gpu"].queues[0].desc == cyc.before["gpu"].queues[0].desc != 0
    assert image.same_image(image.read_ppm(cell.images["new-frame"]), image.make_frame("b"))


def test_s3_no_soft_reset_keeps_the_gpu(runs: Runs) -> None:
    """PCI PM 1.2 §3.2.4 No_Soft_Reset: a D3hot->D0 transition keeps the function's state; 6.12 relies on it."""
    run = runs[("S3", True, False)]
    _nsr_survives(run)
    _others_fine(run.result)
    assert run.cycle_data[0].reached_sleep is True
    assert "[wake]" in run.raw_status["blk"]  # QEMU still resets the rest of the machine at wake


def test_s3_without_no_soft_reset_loses_the_gpu(runs: Runs) -> None:
    run = runs[("S3", False, False)]
    cell = _ok(run)
    assert run.gpu_pm["boot"] is not None and not run.gpu_pm["boot"][2] & 0x8
    gpu = cell.devices["gpu"]
    assert gpu.status_sequence == REINIT_BME
    assert gpu.queues_alive is False and gpu.functional_after is False
    assert run.cycle_data[0].after["gpu"].queues[0].desc == 0  # the ring is gone
    assert cell.display_restored is False and cell.new_frame_after_resume is False
    assert cell.resources is ResourceFate.LOST
    assert image.describe(image.read_ppm(cell.images["after"])).placeholder
    _others_fine(cell)


def test_s2idle_no_soft_reset_keeps_the_gpu(runs: Runs) -> None:
    run = runs[("s2idle", True, False)]
    _nsr_survives(run)
    _others_fine(run.result)
    assert run.cycle_data[0].suspend_stats == (1, 0)


def test_s4_no_soft_reset_does_not_help(runs: Runs) -> None:
    """Hibernation (freeze/thaw/poweroff/restore) does not take the No_Soft_Reset path: the gpu is lost."""
    for nsr in (False, True):
        run = runs[("S4", nsr, False)]
        cell = _ok(run)
        gpu = cell.devices["gpu"]
        assert gpu.functional_after is False and cell.display_restored is False
        assert gpu.status_sequence[-7:] == REINIT_BME
        assert cell.devices["blk"].functional_after is True and cell.devices["rng"].functional_after is True
        assert (run.logs / "trace-2.log").is_file()


def test_s2idle_loses_an_rng_left_unfrozen_by_no_soft_reset(runs: Runs) -> None:
    """The README's s2idle finding, with its evidence: the guest made a buffer available (avail idx one past
    used) that QEMU never saw, and the hwrng fill thread sleeps in virtio_read (holding reading_mutex)."""
    run = runs[("s2idle", True, True)]
    cell = _ok(run)
    assert cell.placement == {"gpu": "root-port, No_Soft_Reset", "rng": "root-port, No_Soft_Reset"}
    rng = cell.devices["rng"]
    assert rng.status_sequence == [OK] and rng.queues_alive is False and rng.functional_after is False
    ring = next(n for n in rng.notes if "ring avail idx" in n)
    avail, used = int(ring.split("avail idx ")[1].split()[0]), int(ring.split("used idx ")[1].split(",")[0])
    assert avail == used + 1
    assert run.hwrng_stack is not None and "virtio_read" in run.hwrng_stack and "hwrng_fillfn" in run.hwrng_stack
    assert cell.devices["gpu"].queues_alive is True and cell.display_restored is True


def test_s3_keeps_an_rng_behind_no_soft_reset(runs: Runs) -> None:
    """S3 stops every CPU before the platform sleeps: no kernel thread runs while the rng is in D3hot."""
    cell = _ok(runs[("S3", True, True)])
    assert cell.devices["rng"].status_sequence == [OK] and cell.devices["rng"].functional_after is True


def test_every_cell_has_a_timeline(runs: Runs) -> None:
    for run in runs.values():
        assert Path(run.result.images["timeline"]).is_file()


def _compare(report: Path, out: Path, sleeps: tuple[str, ...], *extra: str) -> list[dict[str, Any]]:
    args = ["vm", "compare", "--stack", STACK, "--machine", "q35", "--real", str(report), "--out", str(out)]
    for s in sleeps:
        args += ["--sleep", s]
    r = CliRunner().invoke(main, [*args, *extra])
    assert r.exit_code == 0, r.output
    summary: list[dict[str, Any]] = json.loads((out / "compare.json").read_text())
    for cell in summary:
        assert Path(cell["timelines"]).is_file()
    return summary


def test_vm_compare_second_stack(report: Path, tmp_path: Path) -> None:
    """``vm compare --stack qemu10.0-linux6.12`` for S3, s2idle and S4: baseline beside the real cells without
    NSR, no-soft-reset beside the ones with it; every check agrees (placement too: the model is configured like
    the real VM, virtio-rng on pcie.0). With NSR the gpu sees no status write across S3 or s2idle."""
    summary = _compare(report, tmp_path, ("S3", "s2idle", "S4"))
    assert [(c["profile"], c["sleep"]) for c in summary] == [
        (p, s) for p in ("baseline", "no-soft-reset") for s in ("S3", "s2idle", "S4")]
    for cell in summary:
        checks = {c["what"]: c for c in cell["checks"]}
        if cell["profile"] == "no-soft-reset" and cell["sleep"] != "S4":
            assert checks["gpu status sequence"]["real"] == checks["gpu status sequence"]["model"] == "0f"
            assert checks["rng status sequence"]["real"] == "0f 00 01 03 0b 0f"


def test_vm_compare_rng_behind_its_port(report: Path, tmp_path: Path) -> None:
    """The model predicts the lost rng after s2idle, and that S3 keeps it."""
    summary = _compare(report, tmp_path, ("S3", "s2idle"), "--rng-behind-port")
    alive = {c["sleep"]: {k["what"]: k for k in c["checks"]}["rng queues alive"] for c in summary}
    assert alive["s2idle"]["real"] == alive["s2idle"]["model"] == "no"
    assert alive["S3"]["real"] == alive["S3"]["model"] == "yes"


def test_repeated_s3_with_the_lpc_workaround(assets: GuestAssets, tmp_path: Path) -> None:
    """Three S3 cycles on q35 reach QEMU 10 with ``--restore-lpc`` (without it the second is 'aborted')."""
    run = CellRun(assets, "S3", "q35", cycles=3, out_dir=tmp_path, restore_lpc=True)
    cell = run.run()
    assert cell.outcome is Outcome.OK, cell.notes
    assert [c.reached_sleep for c in run.cycle_data] == [True, True, True]
    assert sum("PMBASE/ACPI_CNTL written back" in n for n in cell.notes) == 3
    assert cell.devices["gpu"].status_sequence == [OK] + REINIT_BME[1:] * 3

"""Our virtio-gpu module (guest/linux's patch, built by provisioning for the second stack's Linux 6.12) on real
QEMU 10.0, q35, the gpu behind a pcie-root-port: profiles ``s4-replay`` (no No_Soft_Reset) and
``no-soft-reset+s4-replay``, through S3, s2idle and S4. Slow; never skipped: provisioning (with the module build)
is part of the test. Every cell runs once (a module fixture, two at a time) and serves both the assertions here
and ``vm compare --s4-replay --real``.

What they pin down: after real hibernation the second boot's restore re-creates the objects (the guest's dmesg
says how many) before the modeset, the screen equals the one before hibernation pixel for pixel, and a frame drawn
after resume reaches it. Without No_Soft_Reset, S3 and s2idle take the freeze/restore path (Linux 6.12's
``virtio_pci_suspend``): the queues come back, but nothing is re-created outside hibernation, and the host lost
its resources at the freeze's reset: the display is lost, as the model predicts. With No_Soft_Reset S3 and
s2idle skip freeze/restore and keep everything. A module that does not load is reported with the guest's dmesg.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.fidelity import model_cell
from pyvirtio.report import CellResult, Outcome, ResourceFate
from pyvirtio.vm import image
from pyvirtio.vm.errors import VmError
from pyvirtio.vm.initramfs import replace_files
from pyvirtio.vm.kmod import INITRAMFS_MODULE, MODULE_FILE
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.scenario import CellRun
from pyvirtio.vm.stacks import QEMU10_LINUX612
from vm.realcells import run_two_at_a_time, write_report

pytestmark = pytest.mark.realvm

OK = 0x0F
#: freeze resets (0), restore re-initialises: what our module does on every freeze/restore pair.
FREEZE_RESTORE = [OK, 0, 0x01, 0x03, 0x0B, OK]
STACK = QEMU10_LINUX612.name
MODULE = "s4-replay"
#: (sleep, gpu No_Soft_Reset): every cell, all with our module.
CELLS = [(s, nsr) for s in ("S4", "S3", "s2idle") for nsr in (False, True)]
PROBED = "s4-replay: freeze/restore with object replay after hibernation"

Runs = dict[tuple[str, bool], CellRun]


@pytest.fixture(scope="module")
def assets(stack2_assets: GuestAssets) -> GuestAssets:
    assert MODULE in dict(stack2_assets.gpu_modules), stack2_assets.gpu_modules
    return stack2_assets


@pytest.fixture(scope="module")
def runs(assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    out = tmp_path_factory.mktemp("s4replay")
    runs: Runs = {key: CellRun(assets, key[0], "q35", out_dir=out, nsr=key[1], gpu_module=MODULE) for key in CELLS}
    run_two_at_a_time(runs.values())  # the S4 cells (longest) first
    return runs


@pytest.fixture(scope="module")
def report(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(runs.values(), tmp_path_factory.mktemp("s4replay-report") / "report.json", stack=STACK)


def _ok(run: CellRun) -> CellResult:
    assert run.result.outcome is Outcome.OK, run.result.notes
    return run.result


def _ours(run: CellRun) -> None:
    """The guest ran our module (it said so at probe time), not the stock one."""
    assert any(PROBED in ln for ln in run.module_log), run.module_log
    assert run.assets.initrd == dict(run.assets.gpu_modules)[MODULE]
    assert any(f"our {MODULE} module" in n for n in run.result.notes)


@pytest.mark.parametrize("nsr", [False, True])
def test_s4_replay_restores_the_display_pixel_exact(runs: Runs, nsr: bool) -> None:
    """Real hibernation: the image kernel's restore re-creates every object before the modeset; the screen after
    the second boot's restore is the one before hibernation, and a new frame reaches it."""
    run = runs[("S4", nsr)]
    cell = _ok(run)
    _ours(run)
    assert cell.profile == ("no-soft-reset+s4-replay" if nsr else "s4-replay")
    assert cell.display_restored is True
    assert image.same_image(image.read_ppm(cell.images["after"]), image.read_ppm(cell.images["before"]))
    assert cell.new_frame_after_resume is True
    assert image.same_image(image.read_ppm(cell.images["new-frame"]), image.make_frame("b"))
    assert cell.resources is ResourceFate.RECREATED
    gpu = cell.devices["gpu"]
    assert gpu.queues_alive is True and gpu.functional_after is True
    # The kernel log of the image kernel: the freeze before the snapshot unreferenced the objects on the host,
    # the restore after the second boot re-created as many.
    unref = [int(m.group(1)) for ln in run.module_log
             if (m := re.search(r"freeze: (\d+) objects unreferenced on the host", ln))]
    assert unref and run.objects_recreated and run.objects_recreated[-1] == unref[-1] >= 1, run.module_log
    assert run.gpu_creates_after_restore >= run.objects_recreated[-1]
    assert (run.logs / "trace-2.log").is_file() and run.raw_status["gpu"]
    for name in ("blk", "rng", "input"):
        assert cell.devices[name].functional_after is True, (name, cell.devices[name].notes)


def test_s3_and_s2idle_without_no_soft_reset_take_freeze_restore(runs: Runs) -> None:
    """No No_Soft_Reset: 6.12's virtio_pci_suspend calls the driver's .freeze/.restore. The queues come back
    (unlike the stock module: ring address 0), nothing is re-created outside hibernation and the host lost its
    resources at the freeze's reset: display lost, as the model predicts for s4-replay alone."""
    for sleep in ("S3", "s2idle"):
        run = runs[(sleep, False)]
        cell = _ok(run)
        _ours(run)
        assert cell.profile == "s4-replay"
        gpu = cell.devices["gpu"]
        assert gpu.status_sequence == FREEZE_RESTORE
        assert gpu.queues_alive is True
        assert run.cycle_data[0].after["gpu"].queues[0].desc != 0  # the ring was re-created
        assert any("freeze: virtqueues drained" in ln for ln in run.module_log), run.module_log
        assert any("restore: not hibernating, no object re-created" in ln for ln in run.module_log)
        assert run.objects_recreated == []
        assert cell.display_restored is False and cell.new_frame_after_resume is False
        assert cell.resources is ResourceFate.LOST


def test_s3_and_s2idle_with_no_soft_reset_keep_everything(runs: Runs) -> None:
    """With No_Soft_Reset 6.12 skips the driver's freeze/restore for S3 and s2idle: no status write at all."""
    for sleep in ("S3", "s2idle"):
        run = runs[(sleep, True)]
        cell = _ok(run)
        _ours(run)
        assert cell.profile == "no-soft-reset+s4-replay"
        assert cell.devices["gpu"].status_sequence == [OK]
        assert not any("freeze:" in ln for ln in run.module_log)
        assert cell.display_restored is True and cell.new_frame_after_resume is True
        assert cell.resources is ResourceFate.KEPT


def test_the_model_predicts_every_cell(runs: Runs) -> None:
    """The model configured like each real VM (gpu behind a root port, with NSR where the real one had it)
    predicts the display, the new frame and the fate of the resources of every cell."""
    for (sleep, _nsr), run in runs.items():
        real = run.result
        model = model_cell(sleep, "q35", real.profile, rng_behind_port=False, gpu_behind_port=True)
        assert (model.display_restored, model.new_frame_after_resume, model.resources) == (
            real.display_restored, real.new_frame_after_resume, real.resources), (sleep, real.profile)


def test_every_cell_has_a_timeline(runs: Runs) -> None:
    for run in runs.values():
        assert Path(run.result.images["timeline"]).is_file()


def test_vm_compare_s4_replay(report: Path, tmp_path: Path) -> None:
    """``vm compare --s4-replay`` on the second stack, S3, s2idle and S4: every check agrees (placement too)."""
    args = ["vm", "compare", "--stack", STACK, "--machine", "q35", "--s4-replay", "--real", str(report),
            "--out", str(tmp_path), "--sleep", "S3", "--sleep", "s2idle", "--sleep", "S4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    summary: list[dict[str, Any]] = json.loads((tmp_path / "compare.json").read_text())
    assert [(c["profile"], c["sleep"]) for c in summary] == [
        (p, s) for p in ("s4-replay", "no-soft-reset+s4-replay") for s in ("S3", "s2idle", "S4")]
    for cell in summary:
        checks = {c["what"]: c for c in cell["checks"]}
        assert checks["placement"]["real"].startswith("gpu root-port")
        if cell["sleep"] == "S4":
            assert checks["display restored"]["real"] == checks["display restored"]["model"] == "yes"


def test_a_module_that_does_not_load_is_reported_with_dmesg(assets: GuestAssets, tmp_path: Path) -> None:
    """A module the kernel refuses (its vermagic changed) stops the cell with the guest's own words, no hang."""
    built = dict(assets.gpu_modules)[MODULE].parent / MODULE_FILE
    ko = built.read_bytes()
    assert b" mod_unload " in ko
    broken = tmp_path / "initrd-broken.img"
    broken.write_bytes(replace_files(assets.initrd.read_bytes(), {INITRAMFS_MODULE: ko.replace(b" mod_unload ",
                                                                                               b" mod_UNload ")}))
    bad = replace(assets, gpu_modules=((MODULE, broken),))
    run = CellRun(bad, "S3", "q35", out_dir=tmp_path / "out", gpu_module=MODULE)
    with pytest.raises(VmError) as e:
        run.run()
    msg = str(e.value)
    assert "could not load virtio_gpu.ko" in msg and "version magic" in msg and "\n" not in msg
    assert (run.logs / "dmesg.txt").is_file()

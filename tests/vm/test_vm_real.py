"""Real QEMU 7.2 + Debian 6.1 guest under TCG. Slow; never skipped: if provisioning fails, these fail.

What they pin down (the virtio-gpu sleep bug on this stack): after S3, s2idle and S4 the gpu reports DRIVER_OK
but its control ring is gone (``vring-desc`` 0), the screen is QEMU's "Display output is not active."
placeholder and a frame drawn afterwards never arrives; blk, rng and input keep working.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli.vm import vm
from pyvirtio.report import REAL_VM_PROFILE, CellResult, Outcome, Report, ResourceFate, SleepState, Source
from pyvirtio.vm import image
from pyvirtio.vm.errors import GuestTimeout
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qmp import Qmp
from pyvirtio.vm.scenario import CellRun, Timeouts

pytestmark = pytest.mark.realvm

OK, DRIVER, FEAT_OK, ACK = 0x0F, 0x03, 0x0B, 0x01
#: Status bytes each device presented from just before the sleep to after resume (S3 and s2idle alike):
#: gpu/input lose DRIVER_OK when the guest disables bus mastering, blk/rng are reset by their freeze; then the
#: guest's restore resets (0) and re-initialises every device.
EXPECTED_S3 = {"gpu": [OK, FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK], "input": [OK, FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK],
               "blk": [OK, 0, ACK, DRIVER, FEAT_OK, OK], "rng": [OK, 0, ACK, DRIVER, FEAT_OK, OK]}


Runs = dict[tuple[str, str], CellRun]


def _shared(runs: Runs, sleep: str, machine: str) -> tuple[CellRun, CellResult]:
    run = runs[(sleep, machine)]
    return run, run.result


def _run(assets: GuestAssets, sleep: str, machine: str, tmp_path: Path, cycles: int = 1) -> tuple[CellRun, CellResult]:
    run = CellRun(assets, sleep, machine, cycles=cycles, out_dir=tmp_path)
    return run, run.run()


def assert_gpu_bug_and_others_fine(run: CellRun, cell: CellResult) -> None:
    """The shared expectations for one slept cycle."""
    assert cell.source is Source.REAL_VM and cell.profile == REAL_VM_PROFILE == "baseline"
    assert cell.display_restored is False
    assert cell.new_frame_after_resume is False
    assert cell.resources is ResourceFate.LOST
    assert cell.queues_alive is False
    gpu = cell.devices["gpu"]
    assert gpu.queues_alive is False and gpu.functional_after is False
    for c in run.cycle_data:
        if not c.slept:
            continue
        after = c.after["gpu"]
        assert after.status == OK, "QEMU reports DRIVER_OK after resume ..."
        assert after.queues[0].desc == 0, "... but the gpu control ring is gone"
        if c.index == 1:
            assert c.before["gpu"].queues[0].desc != 0  # later cycles start with the ring already gone
        for name in ("blk", "rng", "input"):
            assert c.probes[name].ok, c.probes[name].detail
            assert c.after[name].queues[0].desc != 0
    for name in ("blk", "rng", "input"):
        d = cell.devices[name]
        assert d.queues_alive is True and d.functional_after is True, (name, d.notes)
    assert run.gpu_commands_after_restore == 0
    assert any(n.startswith("virtio_gpu_cmd_* in trace after the last restore: 0,") for n in gpu.notes)  # for people
    before = image.read_ppm(cell.images["before"])
    after = image.read_ppm(cell.images["after"])
    assert image.same_image(before, image.make_frame("a"))
    assert image.describe(after).placeholder
    assert image.describe(image.read_ppm(cell.images["new-frame"])).placeholder
    assert cell.suspend_ms is not None and cell.suspend_ms > 0
    assert cell.resume_ms is not None and cell.resume_ms > 0


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_s3(baseline_runs: Runs, machine: str) -> None:
    run, cell = _shared(baseline_runs, "S3", machine)
    assert cell.outcome is Outcome.OK, cell.notes
    assert_gpu_bug_and_others_fine(run, cell)
    assert {k: d.status_sequence for k, d in cell.devices.items()} == EXPECTED_S3
    assert "[wake]" in run.raw_status["gpu"]  # QEMU's wake-up reset is in the raw trace
    assert run.cycle_data[0].reached_sleep is True
    assert run.cycle_data[0].asleep["blk"].status == 0 and run.cycle_data[0].asleep["gpu"].status == FEAT_OK


def test_s2idle_q35(baseline_runs: Runs) -> None:
    run, cell = _shared(baseline_runs, "s2idle", "q35")
    assert cell.outcome is Outcome.OK, cell.notes
    assert_gpu_bug_and_others_fine(run, cell)
    assert {k: d.status_sequence for k, d in cell.devices.items()} == EXPECTED_S3
    assert "[wake]" not in run.raw_status["gpu"]  # no machine reset: the guest's restore resets
    assert run.cycle_data[0].suspend_stats == (1, 0)


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_s4(baseline_runs: Runs, machine: str) -> None:
    run, cell = _shared(baseline_runs, "S4", machine)
    assert cell.outcome is Outcome.OK, cell.notes
    assert_gpu_bug_and_others_fine(run, cell)
    gpu = cell.devices["gpu"].status_sequence
    # hibernation freeze, thaw to write the image, power-off reset ... then boot 2 probes and the image's restore
    assert gpu[:8] == [OK, FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK, 0]
    assert gpu[-7:] == [OK, FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK]
    assert cell.devices["blk"].status_sequence[-5:] == [0, ACK, DRIVER, FEAT_OK, OK]
    assert (run.logs / "trace-2.log").is_file()


def test_repeated_s3_pc(assets: GuestAssets, tmp_path: Path) -> None:
    run, cell = _run(assets, "S3", "pc", tmp_path, cycles=3)
    assert cell.outcome is Outcome.OK, cell.notes
    assert [c.slept for c in run.cycle_data] == [True, True, True]
    assert_gpu_bug_and_others_fine(run, cell)
    assert cell.devices["blk"].status_sequence == [OK] + [0, ACK, DRIVER, FEAT_OK, OK] * 3
    assert cell.devices["gpu"].status_sequence == [OK] + [FEAT_OK, 0, ACK, DRIVER, FEAT_OK, OK] * 3
    assert [c.reached_sleep for c in run.cycle_data] == [True, True, True]


def test_repeated_s3_q35_second_cycle_never_reaches_qemu(assets: GuestAssets, tmp_path: Path) -> None:
    """On q35 the second 'echo mem' returns 0 at once and QEMU never sees S3 (no QMP SUSPEND): after the first
    wake-up the ICH9 ACPI PM I/O block is disabled, so SLP_EN goes nowhere and WAK_STS reads back as set."""
    run, cell = _run(assets, "S3", "q35", tmp_path, cycles=2)
    assert [c.slept for c in run.cycle_data] == [True, False]
    assert cell.outcome is Outcome.ABORTED
    assert [c.reached_sleep for c in run.cycle_data] == [True, False]  # QEMU never saw the second S3
    # Why: QEMU's wake-up reset cleared the ICH9 LPC PMBASE/ACPI_CNTL and nothing restored them.
    now, boot = run.cycle_data[1].lpc_pm, run.lpc_pm_boot
    assert now is not None and boot is not None
    assert now.split()[4] == "00" and boot.split()[4] == "80"  # ACPI_CNTL: ACPI decode enable lost
    assert_gpu_bug_and_others_fine(run, cell)


def test_cli_run_writes_report_and_pngs(assets: GuestAssets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(vm, ["run", "--sleep", "S3", "--machine", "q35", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "gpu" in res.output and "0x0f 0x0b 0x00 0x01 0x03 0x0b 0x0f" in res.output
    report = Report.read(out / "report.json")
    cell = report.cells[0]
    assert cell.source == "real-vm" and cell.sleep == "S3" and cell.machine_type == "q35"
    assert report.meta["qemu"].startswith("7.2")
    for key in ("before", "after", "new-frame"):
        assert Path(cell.images[key]).is_file()
    assert json.loads((out / "report.json").read_text())["format"] == "pyvirtio-pm-report"


def test_guest_that_never_wakes_times_out_and_qemu_is_stopped(assets: GuestAssets, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_execute = Qmp.execute

    def no_wakeup(self: Qmp, cmd: str, args: dict[str, object] | None = None, timeout: float = 30.0) -> object:
        if cmd == "system_wakeup":
            return {}
        return real_execute(self, cmd, args, timeout)

    monkeypatch.setattr(Qmp, "execute", no_wakeup)
    run = CellRun(assets, "S3", "pc", out_dir=tmp_path, timeouts=Timeouts(resume=3.0))
    with pytest.raises(GuestTimeout) as e:
        run.run()
    msg = str(e.value)
    assert "echo mem" in msg and str(tmp_path / "S3-pc") in msg and "\n" not in msg
    assert (tmp_path / "S3-pc" / "serial-1.log").stat().st_size > 0
    assert run.machine is not None and run.machine.proc is not None and run.machine.proc.poll() is not None
    assert not run.scratch.exists()
    left = subprocess.run(["pgrep", "-f", str(run.machine.files.qmp_socket)], capture_output=True, check=False)
    assert left.stdout == b""


def test_two_runs_at_once_do_not_collide(assets: GuestAssets, tmp_path: Path) -> None:
    """Two cells in parallel: own scratch dirs, sockets, disks and QEMU processes; both measure the bug."""
    runs = [CellRun(assets, "S3", "pc", out_dir=tmp_path / "a"),
            CellRun(assets, "s2idle", "pc", out_dir=tmp_path / "b")]
    assert runs[0].scratch != runs[1].scratch
    with ThreadPoolExecutor(2) as pool:
        cells = list(pool.map(lambda r: r.run(), runs))
    for run, cell in zip(runs, cells, strict=True):
        assert cell.outcome is Outcome.OK, cell.notes
        assert_gpu_bug_and_others_fine(run, cell)


def test_repeated_s3_q35_with_the_lpc_workaround(assets: GuestAssets, tmp_path: Path) -> None:
    """The opt-in guest-side workaround (``vm run --restore-lpc``): PMBASE/ACPI_CNTL written back after each wake,
    so every cycle reaches QEMU; each cycle's notes say what was read and written."""
    run = CellRun(assets, "S3", "q35", cycles=3, out_dir=tmp_path, restore_lpc=True)
    cell = run.run()
    assert cell.outcome is Outcome.OK, cell.notes
    assert [c.reached_sleep for c in run.cycle_data] == [True, True, True]
    assert sum("PMBASE/ACPI_CNTL written back" in n for n in cell.notes) == 3
    assert cell.devices["rng"].status_sequence == [OK] + [0, ACK, DRIVER, FEAT_OK, OK] * 3


def test_a_qemu_that_crashes_is_reported_by_its_cell_and_the_run_goes_on(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU killed right before the S3 cell's sleep: ``vm compare`` reports that cell as an error naming its logs
    (kept), compares the next cell as usual, and exits 1 (a result: the cell differs), never with a traceback."""
    from pyvirtio.cli import main

    real_sleep = CellRun._sleep_s3

    def crash_then_sleep(self: CellRun, cyc: object) -> object:
        assert self.machine is not None and self.machine.proc is not None
        self.machine.proc.kill()
        self.machine.proc.wait()
        return real_sleep(self, cyc)  # type: ignore[arg-type]

    monkeypatch.setitem(CellRun._SLEEP, SleepState.S3, crash_then_sleep)
    r = CliRunner().invoke(main, ["vm", "compare", "--sleep", "S3", "--sleep", "s2idle", "--machine", "q35",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert "difference S3/q35 outcome: model 'ok', real 'error'" in r.output
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert [c["sleep"] for c in summary] == ["S3", "s2idle"]
    assert all(c["ok"] for c in summary[1]["checks"])  # the next cell ran as usual
    logs = tmp_path / "real-S3-q35" / "S3-q35"
    assert (logs / "serial-1.log").stat().st_size > 0
    report = json.loads((tmp_path / "report.json").read_text())
    error = next(c for c in report["cells"] if c["source"] == "real-vm" and c["sleep"] == "S3")
    assert error["outcome"] == "error" and str(logs) in error["notes"][0]

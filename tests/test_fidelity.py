"""Model-vs-reality comparison logic (the real-VM runs are in tests/vm)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.fidelity import compare, differences, model_cell, normalise
from pyvirtio.report import CellResult, DeviceOutcome, Report


def test_normalise_drops_power_on_zeros_and_repeats() -> None:
    assert normalise([0, 0, 1, 3, 3, 0x0B, 0x0F, 0x0F, 0, 1]) == [1, 3, 0x0B, 0x0F, 0, 1]


def test_model_predicts_the_documented_real_s3_sequence() -> None:
    """shared/real-vm/NOTES.md: at suspend the gpu drops DRIVER_OK (0x0B) and rng is reset (0); the wake resets
    every device; the restore writes 0, 01, 03, 0B, 0F. Display lost, gpu ring dead, rng alive."""
    c = model_cell("S3", "pc")
    assert normalise(c.devices["gpu"].status_sequence) == [0xF, 0xB, 0, 1, 3, 0xB, 0xF]
    assert normalise(c.devices["rng"].status_sequence) == [0xF, 0, 1, 3, 0xB, 0xF]
    assert c.display_restored is False and c.devices["gpu"].queues_alive is False
    assert c.devices["rng"].queues_alive is True


def _real_like(cell: CellResult) -> CellResult:
    devices = {k: DeviceOutcome(v.name, [0, *v.status_sequence], v.queues_alive, v.functional_after)
               for k, v in cell.devices.items()}
    return CellResult(source="real-vm", profile="baseline", sleep=cell.sleep, machine_type=cell.machine_type,
                      outcome=cell.outcome, display_restored=cell.display_restored,
                      new_frame_after_resume=cell.new_frame_after_resume, devices=devices,
                      placement=dict(cell.placement))


def test_model_predicts_the_measured_real_s4_sequence() -> None:
    """Measured on this machine (QEMU 7.2 + Debian 6.1): freeze, thaw to write the image, power-off through
    device_shutdown (reset), then the second boot: probe, the boot kernel's freeze, the image's restore."""
    c = model_cell("S4", "q35")
    assert normalise(c.devices["gpu"].status_sequence) == [
        0xF, 0xB, 0, 1, 3, 0xB, 0xF, 0, 1, 3, 0xB, 0xF, 0xB, 0, 1, 3, 0xB, 0xF]
    assert normalise(c.devices["rng"].status_sequence) == [
        0xF, 0, 1, 3, 0xB, 0xF, 0, 1, 3, 0xB, 0xF, 0, 1, 3, 0xB, 0xF]


def test_compare_flags_each_difference() -> None:
    m = model_cell("S3", "q35")
    r = _real_like(m)
    assert differences(compare(m, r)) == []
    r.devices["rng"].status_sequence.append(0x40)
    r.display_restored = True
    diffs = {d.what for d in differences(compare(m, r))}
    assert diffs == {"rng status sequence", "display restored"}


def test_compare_checks_the_model_is_configured_like_the_real_vm() -> None:
    """Where each device sits is a check of its own: a model configured unlike the real VM is a difference."""
    m = model_cell("S3", "q35")
    r = _real_like(m)
    r.placement["gpu"] = "root-port"
    assert [d.what for d in differences(compare(m, r))] == ["placement"]
    m2 = model_cell("S3", "q35", gpu_behind_port=True)
    assert m2.placement == {"gpu": "root-port", "rng": "pcie.0"}
    assert differences(compare(m2, r)) == []


def test_vm_compare_cli_with_a_report(tmp_path: Path) -> None:
    cells = [_real_like(model_cell(s, "pc")) for s in ("S3", "S4")]
    good = tmp_path / "real.json"
    Report(cells=cells).write(good)
    r = CliRunner().invoke(main, ["vm", "compare", "--machine", "pc", "--real", str(good), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "agree on every check" in r.output
    cells[1].devices["gpu"].queues_alive = True
    bad = tmp_path / "bad.json"
    Report(cells=cells).write(bad)
    r = CliRunner().invoke(main, ["vm", "compare", "--machine", "pc", "--real", str(bad), "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert "difference S4/pc gpu queues alive" in r.output


def test_vm_compare_missing_cell_is_a_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "real.json"
    Report(cells=[]).write(p)
    r = CliRunner().invoke(main, ["vm", "compare", "--real", str(p), "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr == f"pyvirtio: error: {p} has no real-vm cell for S3/pc, S3/q35, S4/pc, S4/q35\n"

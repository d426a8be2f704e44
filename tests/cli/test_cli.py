"""The ``pyvirtio`` command: ``info``, and what every command shares (error policy, choices)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main, run
from pyvirtio.cli.common import MACHINE_CHOICE, SLEEP_CHOICE
from pyvirtio.cli.info import build_machine
from pyvirtio.errors import InvalidStateError
from pyvirtio.guest.transport import PciTransport
from pyvirtio.machine import MachineType
from pyvirtio.report import SleepState


def test_info_prints_layout() -> None:
    r = CliRunner().invoke(main, ["info", "--device", "rng", "--no-soft-reset"])
    assert r.exit_code == 0, r.output
    for needle in ("1af4:1044", "COMMON_CFG", "NOTIFY_CFG", "notify_off_multiplier 4", "MSI-X",
                   "Power Management", "PMCSR 0x0008", "VIRTIO_F_SUSPEND", "No_Soft_Reset"):
        assert needle in r.output


def test_info_bad_option_is_one_line_error() -> None:
    r = CliRunner().invoke(main, ["info", "--machine", "isapc"])
    assert r.exit_code == 2 and "Invalid value" in r.output


def test_info_renders_the_transport_walk() -> None:
    """The capability table is the guest transport's own walk (virtio 1.4 §4.1.4), in list order: one row per
    capability at the offset the transport found it; no PM capability on a root-bus function."""
    r = CliRunner().invoke(main, ["info", "--machine", "pc", "--device", "test"])
    assert r.exit_code == 0, r.output
    m = build_machine("pc", ("test",), False, False)
    caps = PciTransport(m.functions[0], m).capabilities
    rows = [line.split()[0] for line in r.output.splitlines() if line.strip().startswith("0x")]
    assert rows == [f"{c.pos:#04x}" for c in caps]
    assert "Power Management" not in r.output and "PM none" in r.output
# -- one CLI: error policy, choices ---------------------------------------------------------------------------------


def test_pyvirtio_error_is_one_line_on_stderr_and_status_2(tmp_path: Path) -> None:
    """Any PyvirtioError while a command runs: exactly ``pyvirtio: error: ...`` on stderr, exit status 2, for
    every command group (pm's workload check, vm compare reading a report that is not one)."""
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for args in (["pm", "run", "--profile", "baseline", "--sleep", "S3", "--resources", "100",
                  "--resource-size", "256M", "--out", str(tmp_path)],
                 ["vm", "compare", "--real", str(bad), "--out", str(tmp_path)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, r.output
        assert r.stdout == ""
        assert r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, r.stderr


def test_multi_line_messages_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pm_cli = importlib.import_module("pyvirtio.cli.pm")  # the module; pyvirtio.cli.pm is the command group

    def boom(*_: object, **__: object) -> None:
        raise InvalidStateError("first\nsecond")

    monkeypatch.setattr(pm_cli, "run_cell", boom)
    r = CliRunner().invoke(main, ["pm", "run", "--profile", "baseline", "--sleep", "S3", "--resources", "0"])
    assert (r.exit_code, r.stderr) == (2, "pyvirtio: error: first second\n")


def test_console_script_obeys_the_policy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    """``pyvirtio`` itself (run()), not only click's test runner."""
    monkeypatch.setattr(sys, "argv", ["pyvirtio", "vm", "compare", "--real", str(tmp_path / "x.json"),
                                      "--out", str(tmp_path)])
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2
    want = f"pyvirtio: error: report {tmp_path / 'x.json'} is not JSON: Expecting value at line 1\n"
    assert capsys.readouterr().err == want


def test_choices_come_from_the_one_definition() -> None:
    """--sleep and --machine accept exactly the SleepState and MachineType values, everywhere."""
    assert list(SLEEP_CHOICE.choices) == ["S3", "s2idle", "S4"] == [s.value for s in SleepState]
    assert list(MACHINE_CHOICE.choices) == [m.value for m in MachineType]
    for args in (["pm", "run", "--profile", "baseline", "--sleep", "S2IDLE"],
                 ["vm", "run", "--sleep", "s3", "--out", "x"],
                 ["vm", "compare", "--machine", "isapc"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "Invalid value" in r.output, (args, r.output)


def test_vm_compare_takes_every_choice_from_the_enums(tmp_path: Path) -> None:
    """s2idle on q35, from a report: the sleep state survives the round trip through --sleep and the report."""
    from pyvirtio.fidelity import model_cell
    from pyvirtio.report import Report, Source

    cell = model_cell("s2idle", "q35")
    cell.source = Source.REAL_VM
    p = tmp_path / "real.json"
    Report(cells=[cell]).write(p)
    r = CliRunner().invoke(main, ["vm", "compare", "--sleep", "s2idle", "--machine", "q35", "--real", str(p),
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "s2idle on q35" in r.stdout

"""The ``pyvirtio info`` command."""

from __future__ import annotations

from click.testing import CliRunner

from pyvirtio.cli import main


def test_info_prints_layout() -> None:
    r = CliRunner().invoke(main, ["info", "--device", "rng", "--no-soft-reset"])
    assert r.exit_code == 0, r.output
    for needle in ("1af4:1044", "COMMON_CFG", "NOTIFY_CFG", "notify_off_multiplier 4", "MSI-X",
                   "Power Management", "PMCSR 0x0008", "VIRTIO_F_SUSPEND", "No_Soft_Reset"):
        assert needle in r.output


def test_info_bad_option_is_one_line_error() -> None:
    r = CliRunner().invoke(main, ["info", "--machine", "isapc"])
    assert r.exit_code == 2 and "Invalid value" in r.output

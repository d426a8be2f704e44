"""The ``pyvirtio info`` command."""

from __future__ import annotations

from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.cli.info import build_machine
from pyvirtio.guest.transport import PciTransport


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

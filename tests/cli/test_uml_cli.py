"""``pyvirtio uml`` and ``vm provision --stack uml-linux6.12``: bad input is one line and exit status 2."""

from __future__ import annotations

from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.uml.scenarios import SCENARIOS


def test_scenarios_are_listed() -> None:
    r = CliRunner().invoke(main, ["uml", "scenarios"])
    assert r.exit_code == 0
    assert all(name in r.output for name in SCENARIOS)


def test_bad_input_is_one_line() -> None:
    for args in (["uml", "run", "--scenario", "nope", "--out", "/tmp/x"],
                 ["uml", "run", "--scenario", "boot", "--mode", "warp", "--out", "/tmp/x"],
                 ["uml", "run", "--scenario", "boot"],
                 ["uml", "determinism", "--scenario", "boot", "--seed", "-1", "--out", "/tmp/x"],
                 ["vm", "provision", "--stack", "uml-linux9"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error" in lines[0].lower(), (args, r.output)

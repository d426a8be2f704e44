"""``pyvirtio spec``: the coverage table per section, ``--missing``, ``--side``, ``--json``; a report, exit 0."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.spec.normative import (
    Contradiction,
    SectionCoverage,
    Side,
    coverage_by_section,
    load_inventory,
)

#: the module (``pyvirtio.cli.spec`` as an attribute is the click command the package attaches)
spec_cli = importlib.import_module("pyvirtio.cli.spec")


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["spec", *args])
    return r.exit_code, r.stdout, r.stderr


def test_table_lists_every_section_with_percentages_and_totals() -> None:
    """One row per section (clause, short title, applicable/all, implemented %, tested %), the totals in the
    footer, the known contradictions, and exit status 0 whatever the numbers."""
    code, out, _ = run()
    assert code == 0
    inv = load_inventory()
    rows = coverage_by_section(inv)
    for r in rows:
        line = next(ln for ln in out.splitlines() if ln.count("│") > 2 and ln.split("│")[1].strip() == r.clause)
        assert f"{r.applicable}/{r.statements}" in line
        if r.applicable:
            assert f"{100 * r.implemented / r.applicable:.0f}%" in line
        else:
            assert "n/a" in line
    total = SectionCoverage.total(rows)
    assert f"{total.applicable}/{total.statements}" in out and "total" in out
    assert inv.spec.revision in out and inv.spec.commit[:7] in out
    assert "Known contradictions: none" in out or "Known contradictions:" in out


def test_missing_lists_each_applicable_statement_lacking_code_or_test() -> None:
    code, out, _ = run("--missing")
    assert code == 0
    missing = [s for s in load_inventory() if s.missing]
    assert f"{len(missing)} applicable statements lack code or a test" in out
    for s in missing:
        assert s.id in out
    assert not any(s.id in out.split() for s in load_inventory() if not s.applies)


def test_side_filters_statements() -> None:
    code, out, _ = run("--side", "driver", "--missing")
    assert code == 0
    assert "dev:" not in out
    code, out, _ = run("--side", "device")
    assert code == 0 and "device statements" in out
    code, _, err = run("--side", "both")
    assert code == 2 and "Invalid value" in err


def test_json_is_written_atomically_and_matches_the_table(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "spec.json"
    code, _, _ = run("--json", str(target), "--side", "driver")
    assert code == 0
    data = json.loads(target.read_text(encoding="utf-8"))
    inv = load_inventory().only(Side.DRIVER)
    assert data["side"] == "driver"
    assert data["total"]["statements"] == len(inv)
    assert data["total"]["applicable"] == sum(1 for s in inv if s.applies)
    assert [m["id"] for m in data["missing"]] == [s.id for s in inv if s.missing]
    assert data["contradictions"] == []
    assert not list(target.parent.glob(".*.tmp"))


def test_unwritable_json_is_one_line_error(tmp_path: Path) -> None:
    """A --json path that cannot be written: one line ``pyvirtio: error: ...`` and status 2, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run("--json", str(blocker / "sub" / "x.json"))
    assert code == 2 and out == ""
    assert err.startswith("pyvirtio: error: --json ") and err.count("\n") == 1


def test_contradictions_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known contradiction (a ``[[contradiction]]`` of the inventory) is listed with the code and the note;
    markup in it is printed, not interpreted."""
    inv = load_inventory()
    fake = type(inv)(inv.spec, inv.statements, inv.by_id,
                     (Contradiction("dev:status#1", "pyvirtio.host.device:VirtioDevice", "uses [red]buffers[/red]"),))
    monkeypatch.setattr(spec_cli, "load_inventory", lambda: fake)
    code, out, _ = run()
    assert code == 0
    assert "Known contradictions: 1" in out and "dev:status#1" in out and "[red]buffers[/red]" in out


def test_help_says_it_is_a_report() -> None:
    r = CliRunner().invoke(main, ["spec", "--help"])
    assert r.exit_code == 0 and "exit status is 0" in " ".join(r.output.split())
